"""TrialConfig: the ``trial:`` section of a sweep file as typed, validated dataclasses.

Defaults are the RepNAS paper's values (DESIGN.md section 3). ``TrialConfig.from_dict``
rejects wrong types, out-of-range values and unknown keys with a ``ConfigError`` whose
path is the YAML key (``trial.search.budget``). Checks that need the built model (budget
larger than the candidate count) happen in ``trainables.run.build``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_origin, get_type_hints

from searchspace import BRANCH_TYPES, IDENTITY, QUANT_AWARE_FORMS, is_external

from ..errors import ConfigError
from .datasets import DATASETS, dataset_info
from .hosts import check_factory_name, check_model_name, check_options
from .presets import check_preset, layer_trial, with_preset
from .running import (
    EXPORT_FORMATS,
    CheckpointConfig,
    ExportConfig,
    Int8Config,
    RuntimeConfig,
)
from .schema import (
    apply_overrides,
    at_least,
    between,
    did_you_mean,
    dump_dataclass,
    join_path,
    load_dataclass,
    rule,
)

__all__ = [
    "TrialConfig",
    "check_trial_key",
    "ModelConfig",
    "DataConfig",
    "SearchConfig",
    "OptimConfig",
    "RuntimeConfig",
    "ExportConfig",
    "Int8Config",
    "CheckpointConfig",
    "ConfigError",
    "apply_overrides",
    "BASELINES",
    "DATASETS",
    "EXPORT_FORMATS",
]


BASELINES: dict[str, tuple[tuple[str, ...], bool]] = {
    "plain": (("kxk",), False),
    "repvgg": (("1x1", "kxk"), True),
    "acnet": (("kxk", "1xk", "kx1"), False),
    "dbb": (("1x1", "1x1_avg", "kxk", "1x1_kxk"), False),
    "all": (tuple(BRANCH_TYPES), True),
}
"""Fixed-architecture baselines: method -> (branch types, identity where shapes allow)."""

_Dataset = Literal[DATASETS]  # type: ignore[valid-type]  # the registry's names


@dataclass(frozen=True)
class ModelConfig:
    """Host network, its build options, training form and starting weights.

    ``name``: a host of ``searchspace.list_models()``, ``torchvision.<builder>`` (any
    torchvision classification builder) or ``timm.<name>`` (any model of ``timm.list_models()``,
    timm installed), converted: every eligible KxK conv -> BN pair becomes an ODBB.
    ``factory``: instead of ``name``, a user's builder ``package.module:function``, converted
    the same way. ``options``: the builder's keyword arguments, whatever their names (those
    filled from the data, ``num_classes``, ``in_chans``/``in_channels``, and downloads are refused). ``weights``: a local
    ``state_dict`` of the original (unconverted) model to start from, loaded
    function-preserving (never downloaded). ``reparam``: ``offline`` trains every branch as
    its own convs and BNs (DBB, RepNAS); ``online`` composes each block's one KxK kernel from
    its branches at every step and runs one conv and one BN (OREPA). ``offline_qa`` and
    ``online_qa``: the same with the quantization-aware arrangement (QARepVGG: no normalisation
    on the identity and 1x1 branches, one BN after the branch sum; ``searchspace.qa``). All fuse
    into the same kind of deploy network.
    """

    name: str = "repvgg_tiny"
    options: dict[str, Any] = field(default_factory=dict)
    reparam: Literal["offline", "online", "offline_qa", "online_qa"] = "offline"
    factory: str | None = None
    weights: str | None = None
    new_branch_start: float = field(default=0.0, metadata=rule(between(0.0, float("inf"), high_open=True)))
    """With ``weights``: where every new branch (all but ``kxk``, the identity included) starts,
    its output BN's weight (offline) or its scale (online); 0 preserves the trained model exactly,
    above 0 the new branches add to it, and their convs learn, from the first step (RefConv /
    NetBooster style)."""

    @property
    def host(self) -> str:
        """The name ``searchspace.build_model`` gets: ``factory`` when set, else ``name``."""
        return self.factory or self.name

    def validate(self, path: str) -> None:
        if self.factory is not None:
            if self.name != ModelConfig.name:
                raise ConfigError(join_path(path, "factory"), f"set model.name ({self.name!r}) or model.factory, "
                                                              f"not both")
            check_factory_name(self.factory, join_path(path, "factory"))
        else:
            check_model_name(self.name, join_path(path, "name"))
            # a factory's own parameters show once it is imported (trainables.run.build's model check)
            check_options(self.host, self.options, join_path(path, "options"))
        if self.weights is not None:
            wpath = join_path(path, "weights")
            if not is_external(self.host):
                raise ConfigError(wpath, f"loads a state_dict of a torchvision.<builder>, timm.<name> or "
                                         f"model.factory model; {self.name!r} is this project's own host")
            if self.reparam in QUANT_AWARE_FORMS:
                raise ConfigError(join_path(path, "reparam"), f"{self.reparam} cannot start from model.weights "
                                                              f"(its identity branch has no parameter to start at 0); "
                                                              f"use offline or online with weights")
            if not Path(self.weights).expanduser().is_file():
                raise ConfigError(wpath, f"weights file {self.weights} not found (a state_dict saved with torch.save)")
        elif self.new_branch_start:
            raise ConfigError(join_path(path, "new_branch_start"), "sets where the new branches of a model loaded from "
                                                                   "model.weights start; without weights every branch "
                                                                   "starts fresh: set model.weights, or 0.0")


@dataclass(frozen=True)
class DataConfig:
    """Dataset, split and loader settings.

    ``image_size``: resize every image to this side (null: native; an image folder's: its
    first training image's size). ``channels``: repeat single-channel images over this many
    channels (null: native), e.g. 3 for a torchvision host on (Fashion-)MNIST or digits; an
    image folder's images are read as 1 (grayscale) or 3 (RGB, the default) channels.
    ``split_seed``: the seed of the train/val split (null: the trial's seed); fixed, every seed
    trains and validates on the same images (fine-tuning from weights trained on that split's
    training part never validates on their images). Image folders only (``trainables.run.imagefolder``):
    ``resize`` policy, ``normalize`` (``computed`` from the training images, ``imagenet``'s, or
    ``given`` as ``mean``/``std``).
    """

    dataset: _Dataset = "digits"
    root: str | None = None
    download: bool = False
    val_fraction: float = field(default=0.2, metadata=rule(between(0.0, 1.0, low_open=True, high_open=True)))
    batch_size: int = field(default=64, metadata=rule(at_least(1)))
    eval_batch_size: int = field(default=256, metadata=rule(at_least(1)))
    num_workers: int | Literal["auto"] = field(default=0, metadata=rule(lambda v: None if v == "auto" else at_least(0)(v)))
    """Loader processes per loader; ``auto``: from the trial's CPUs, the device and whether items
    need per-item work (``trainables.run.data.auto_num_workers``)."""
    image_size: int | None = field(default=None, metadata=rule(at_least(1)))
    augment: bool = False
    limit_train: int | None = field(default=None, metadata=rule(at_least(1)))
    channels: int | None = field(default=None, metadata=rule(at_least(1)))
    split_seed: int | None = field(default=None, metadata=rule(at_least(0)))
    resize: Literal["crop", "stretch", "imagenet"] = "crop"
    """Image folders: to ``image_size``, shorter side then centre crop (crop), both sides
    (stretch), or shorter side to 256/224 of it then centre crop (imagenet)."""
    normalize: Literal["computed", "imagenet", "given"] = "computed"
    """Image folders: per-channel mean/std computed from (up to 2,000 of) the training images,
    ImageNet's, or ``mean``/``std``."""
    mean: list[float] | None = None
    std: list[float] | None = None

    def validate(self, path: str) -> None:
        if self.dataset == "imagefolder":
            self._validate_folder(path)
            return
        for key, default in (("resize", "crop"), ("normalize", "computed"), ("mean", None), ("std", None)):
            if getattr(self, key) != default:
                raise ConfigError(join_path(path, key), f"applies to dataset: imagefolder; {self.dataset} is "
                                                        f"normalised with its published statistics")
        native = dataset_info(self.dataset).channels
        if self.channels is not None and self.channels != native and native != 1:
            raise ConfigError(join_path(path, "channels"), f"{self.dataset} has {native} channels; only "
                                                           f"single-channel images can be repeated (null keeps {native})")

    def _validate_folder(self, path: str) -> None:
        if not self.root:
            raise ConfigError(join_path(path, "root"), "imagefolder needs a root folder holding train/ "
                                                       "(and val/, test/ when you have them)")
        if self.channels not in (None, 1, 3):
            raise ConfigError(join_path(path, "channels"), f"image folders are read as 1 (grayscale) or 3 (RGB) "
                                                           f"channels, got {self.channels}")
        given = self.normalize == "given"
        for key in ("mean", "std"):
            value = getattr(self, key)
            if given and (value is None or len(value) != self.in_channels):
                raise ConfigError(join_path(path, key), f"normalize: given needs {self.in_channels} value(s), "
                                                        f"one per channel; got {value}")
            if not given and value is not None:
                raise ConfigError(join_path(path, key), f"is used with normalize: given (normalize is {self.normalize})")
        if given and min(self.std) <= 0:  # type: ignore[type-var]
            raise ConfigError(join_path(path, "std"), f"expected values > 0, got {self.std}")

    @property
    def in_channels(self) -> int:
        """Channels of the images the model gets."""
        return self.channels or dataset_info(self.dataset).channels


_check_arch_lr_value = between(0.0, 10.0, low_open=True)


def _arch_lr_check(value: Any) -> str | None:
    """``auto`` or a number in (0, 10]."""
    return None if value == "auto" else _check_arch_lr_value(value)


@dataclass(frozen=True)
class SearchConfig:
    """The inner one-stage search (or a fixed baseline) and its schedule."""

    method: str | list[str] = "odbb"
    preset: str = "paper"
    """A named recipe (``RECIPE_PRESETS``) filling the keys below that the trial leaves unset."""
    candidates: list[str] = field(default_factory=lambda: list(BRANCH_TYPES))
    budget: int | float = 0.34
    epochs: int = field(default=150, metadata=rule(at_least(1)))
    random_epochs: int = field(default=15, metadata=rule(at_least(0)))
    search_epochs: int = field(default=35, metadata=rule(at_least(0)))
    arch_lr: float | Literal["auto"] = field(default=1.0e-4, metadata=rule(_arch_lr_check))
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = field(default=5.0e-4, metadata=rule(at_least(0.0)))
    # Recipe options (issue #13); every default is the paper's behaviour. See docs/sweep-config.md.
    arch_lr_travel: float = field(default=1.0, metadata=rule(between(0.0, 1.0e6, low_open=True)))
    """With ``arch_lr: auto``: lr = arch_lr_travel * (pi / sqrt(3)) / S, S = search_epochs x
    steps per epoch, so alpha can move about ``arch_lr_travel`` noise stds over the search."""
    noise_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Temperature multiplying the logistic noise over the search phase: 1 (constant), or
    annealed from 1 to ``noise_final`` at the last search step (linear or cosine)."""
    noise_final: float = field(default=0.0, metadata=rule(at_least(0.0)))
    fixed_lr_schedule: Literal["continue", "restart"] = "continue"
    """Weight lr in the fixed phase: the tail of the one cosine (continue), or a fresh cosine
    from optim.lr over the fixed phase after ``fixed_warmup_epochs`` of linear warmup (restart)."""
    fixed_warmup_epochs: int = field(default=0, metadata=rule(at_least(0)))
    fix_bn: Literal["reset", "recalibrate"] = "reset"
    """At the fix: reset all BN running statistics (reset), or reset them and re-estimate them
    on ``fix_bn_batches`` training batches, forward only, cumulative average (recalibrate)."""
    fix_bn_batches: int = field(default=20, metadata=rule(at_least(1)))
    layer_floor: int = field(default=0, metadata=rule(at_least(0)))
    """Every layer keeps at least this many conv branches inside the global top-k (0: none)."""
    random_sampling: Literal["uniform", "fair"] = "uniform"
    """Random phase: a uniformly random k-subset per step, or the k least-used candidates so
    far with random tie-breaks (fair: every candidate's count within 1 of the others')."""
    two_stage: bool = False
    """After the search phase, re-initialise the network, keep the searched mask, and train it
    from scratch for the remaining epochs with a restarted lr schedule."""
    keep_kxk: bool | Literal["auto"] = "auto"
    """Every mask (random, search, final) keeps every layer's ``kxk`` inside the budget, so a
    search from ``model.weights`` never drops the trained conv; the search chooses what joins
    it. ``auto``: true with ``model.weights`` (``TrialConfig.keeps_kxk``)."""

    @property
    def searching(self) -> bool:
        """True for the RepNAS search, False for a fixed architecture."""
        return self.method == "odbb"

    def validate(self, path: str) -> None:
        self._validate_method(join_path(path, "method"))
        check_preset(self.preset, join_path(path, "preset"))
        cpath = join_path(path, "candidates")
        for i, name in enumerate(self.candidates):
            if name not in BRANCH_TYPES:
                raise ConfigError(join_path(cpath, i), f"unknown branch type {name!r}{did_you_mean(name, BRANCH_TYPES)}; expected one of: {', '.join(BRANCH_TYPES)}")
        if not self.candidates or len(set(self.candidates)) != len(self.candidates):
            raise ConfigError(cpath, "expected a non-empty list of distinct branch types")
        if self.searching and "kxk" not in self.candidates:
            raise ConfigError(cpath, "must include 'kxk' (layers without identity fall back to it when they select nothing)")
        bpath = join_path(path, "budget")
        if isinstance(self.budget, float) and not 0.0 < self.budget <= 1.0:
            raise ConfigError(bpath, f"a ratio budget must be in (0, 1], got {self.budget}")
        if isinstance(self.budget, int) and self.budget < 1:
            raise ConfigError(bpath, f"an absolute budget must be an integer >= 1 branches, got {self.budget}")
        if self.random_epochs + self.search_epochs > self.epochs:
            raise ConfigError(
                join_path(path, "search_epochs"),
                f"random_epochs + search_epochs ({self.random_epochs} + {self.search_epochs}) exceeds epochs ({self.epochs})",
            )
        fixed_epochs = self.epochs - (self.random_epochs + self.search_epochs if self.searching else 0)
        if self.fixed_warmup_epochs:
            wpath = join_path(path, "fixed_warmup_epochs")
            if self.fixed_lr_schedule != "restart" and not (self.two_stage and self.searching):
                raise ConfigError(wpath, "warms up the restarted schedule only: set fixed_lr_schedule: restart (or two_stage: true)")
            if self.fixed_warmup_epochs > fixed_epochs:
                raise ConfigError(wpath, f"{self.fixed_warmup_epochs} warmup epochs exceed the {fixed_epochs} epochs of the fixed phase")
        if self.two_stage and self.searching and fixed_epochs < 1:
            raise ConfigError(join_path(path, "two_stage"), f"retrains in the epochs after random_epochs + search_epochs, "
                                                             f"and epochs ({self.epochs}) leaves none")
        for i, beta in enumerate(self.arch_betas):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(join_path(join_path(path, "arch_betas"), i), f"expected a value in [0, 1), got {beta}")

    def _validate_method(self, path: str) -> None:
        if isinstance(self.method, list):
            allowed = (*BRANCH_TYPES, IDENTITY)
            for i, name in enumerate(self.method):
                if name not in allowed:
                    raise ConfigError(join_path(path, i), f"unknown branch type {name!r}{did_you_mean(name, allowed)}; expected one of: {', '.join(allowed)}")
            if not [b for b in self.method if b != IDENTITY]:
                raise ConfigError(path, "an explicit branch list needs at least one branch besides identity")
            return
        if self.method.endswith(".json"):
            if not Path(self.method).expanduser().is_file():
                raise ConfigError(path, f"architecture file {self.method} not found")
            return
        names = ("odbb", *BASELINES)
        if self.method not in names:
            raise ConfigError(
                path,
                f"unknown method {self.method!r}{did_you_mean(self.method, names)}; expected one of: {', '.join(names)}, a list of branch types or an architecture .json path",
            )


@dataclass(frozen=True)
class OptimConfig:
    """Weight optimiser: SGD with momentum, cosine lr per iteration, clipping."""

    lr: float = field(default=0.1, metadata=rule(between(0.0, 10.0, low_open=True)))
    momentum: float = field(default=0.9, metadata=rule(between(0.0, 1.0, high_open=True)))
    weight_decay: float = field(default=1.0e-4, metadata=rule(at_least(0.0)))
    grad_clip: float | None = field(default=5.0, metadata=rule(between(0.0, float("inf"), low_open=True)))
    new_branch_lr_scale: float = field(default=1.0, metadata=rule(between(0.0, float("inf"), low_open=True,
                                                                           high_open=True)))
    """The lr of every ODBB's new branches (all but ``kxk``, the identity included;
    ``searchspace.new_branch_parameters``) is ``lr`` times this, over the whole schedule."""


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs; the ``trial:`` section of a sweep file."""

    seed: int = field(default=0, metadata=rule(at_least(0)))
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    @property
    def keeps_kxk(self) -> bool:
        """Whether the search keeps every layer's ``kxk`` (``search.keep_kxk``, ``auto``: with ``model.weights``)."""
        keep = self.search.keep_kxk
        return self.search.searching and (keep is True or (keep == "auto" and self.model.weights is not None))

    def validate(self, path: str) -> None:
        workers = self.runtime.workers
        if self.data.batch_size % workers:
            raise ConfigError(join_path(join_path(path, "data"), "batch_size"),
                              f"the global batch {self.data.batch_size} must split evenly over runtime.workers = {workers}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, path: str = "trial") -> TrialConfig:
        """Validate a plain mapping (missing keys take their defaults).

        Args:
            data: a ``trial:`` mapping (or None for every default).
            path: the key path errors are named under.

        Raises:
            ConfigError: a wrong type, an out-of-range value or an unknown key, named by its path.
        """
        return load_dataclass(cls, with_preset(data, path), path)

    @classmethod
    def from_overrides(cls, base: Mapping[str, Any], overrides: Mapping[str, Any], path: str = "trial") -> TrialConfig:
        """The trial that ``base`` (a ``trial:`` mapping) with ``overrides`` layered on top
        (``presets.layer_trial``) describes: the one way a sampled or ``--set`` trial becomes a config."""
        return cls.from_dict(layer_trial(base, overrides, path), path)

    def with_threads(self, cpus: float | None) -> TrialConfig:
        """This config with ``runtime.num_threads`` unset resolved to the ``cpus`` the trial (or
        each of its DDP workers) was given, at least 1; unchanged when set or ``cpus`` is unknown.
        The one place the thread count is decided (the driver, so MLflow params show it, and the
        trainable, for library use without the driver)."""
        if self.runtime.num_threads is not None or cpus is None:
            return self
        return replace(self, runtime=replace(self.runtime, num_threads=max(1, int(cpus))))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form that ``from_dict`` reads back unchanged."""
        return dump_dataclass(self)


def check_trial_key(key: str, path: str) -> None:
    """Raise ``ConfigError`` at ``path`` unless dotted ``key`` names a TrialConfig field (or
    anything below a free-form mapping field such as ``model.options``)."""
    node: Any = TrialConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not is_dataclass(node):
            if node is Any or get_origin(node) is dict:
                return
            raise ConfigError(path, f"{key!r} is not a trial key: {'.'.join(parts[:i])} is a value, not a mapping")
        names = [f.name for f in fields(node)]
        if part not in names:
            where = ".".join(parts[:i]) or "trial"
            raise ConfigError(path, f"{key!r} is not a trial key: {where} has no {part!r}"
                                    f"{did_you_mean(part, names)}; keys there: {', '.join(names)}")
        node = get_type_hints(node)[part]
