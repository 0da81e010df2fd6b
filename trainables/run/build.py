"""Build the trial's model from its config: the ODBB supernet or a fixed architecture.

``search.method`` decides: ``odbb`` builds the supernet over ``search.candidates``; a
baseline name, an explicit branch list or an architecture JSON builds a model whose
ODBBs hold exactly those branches (all active, trained without alpha). A converted host
(``torchvision.<builder>``, ``model.factory``) with ``model.weights`` then loads that
state dict of the original model, function-preserving (``searchspace.load_original_state_dict``;
its new branches start at ``model.new_branch_start``, 0: exact).
Errors that only show once the model exists (budget above the candidate count, a layer
floor above the budget, bad model options, weights that do not fit, a model with nothing
to convert) are raised here as ``ConfigError`` naming the key. ``check_trial_model``
raises the same errors before any trial runs, without data or training.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchspace import (
    BRANCH_TYPES,
    IDENTITY,
    TORCHVISION_PREFIX,
    Architecture,
    FactoryError,
    LayerArch,
    NothingToConvertError,
    build_from_architecture,
    build_model,
    check_original_state,
    is_external,
    load_original_state_dict,
    odbb_layers,
    resolve_factory,
)

from ..config.datasets import dataset_info
from ..config.hosts import check_options
from ..config.sections import BASELINES, TrialConfig
from ..errors import ConfigError
from ..search.gates import budget_to_k, min_kept
from .weights import WEIGHTS_KEY as _WEIGHTS
from .weights import read_state_dict

__all__ = ["build_trial_model", "check_trial_model", "num_candidates", "dataset_classes"]



def num_candidates(model: nn.Module) -> int:
    """Candidate branches over all ODBB layers (identity excluded)."""
    return sum(len(block.branch_names) for _, block in odbb_layers(model))


def _host_key(cfg: TrialConfig) -> str:
    """The key that names the host: ``trial.model.factory`` or ``trial.model.name``."""
    return "trial.model.factory" if cfg.model.factory else "trial.model.name"


def _build(cfg: TrialConfig, num_classes: int, in_channels: int, branches: list[str] | tuple[str, ...]) -> nn.Module:
    host = cfg.model.host
    if cfg.model.factory:
        try:
            resolve_factory(cfg.model.factory)
        except ValueError as err:
            raise ConfigError("trial.model.factory", str(err)) from None
        check_options(cfg.model.factory, cfg.model.options, "trial.model.options")
    if host.startswith(TORCHVISION_PREFIX) and in_channels != 3:
        raise ConfigError("trial.data.channels", f"{host} takes 3 input channels and {cfg.data.dataset} has "
                                                 f"{in_channels}: set data.channels: 3 (gray images repeated)")
    try:
        return build_model(host, num_classes, in_channels, branches, cfg.model.reparam, options=cfg.model.options)
    except (NothingToConvertError, FactoryError) as err:
        raise ConfigError(_host_key(cfg), str(err)) from None
    except (TypeError, ValueError) as err:
        raise ConfigError("trial.model.options", str(err)) from None
    except Exception as err:  # noqa: BLE001 - a user's builder failing is a config problem, not a crash
        if not is_external(host):
            raise
        raise ConfigError(_host_key(cfg), f"building {host} failed: {type(err).__name__}: {err}") from None


def _build_for_check(cfg: TrialConfig, num_classes: int, in_channels: int,
                     branches: list[str] | tuple[str, ...]) -> nn.Module:
    """``_build`` on the meta device (no memory, no init), or on the CPU for a builder that
    computes with tensors while it builds (torchvision's RegNet widths)."""
    try:
        with torch.device("meta"):
            return _build(cfg, num_classes, in_channels, branches)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - retried on the CPU, where a real error shows again
        return _build(cfg, num_classes, in_channels, branches)


def _fixed_architecture(cfg: TrialConfig, num_classes: int, in_channels: int, meta: bool = False) -> Architecture:
    """The Architecture a non-searching ``search.method`` asks for (the host built on the meta
    device with ``meta``)."""
    method = cfg.search.method
    if isinstance(method, str) and method.endswith(".json"):
        try:
            arch = Architecture.load(Path(method).expanduser())
        except (OSError, ValueError) as err:
            raise ConfigError("trial.search.method", f"cannot read architecture {method}: {err}") from None
        if (arch.num_classes, arch.in_channels) != (num_classes, in_channels):
            raise ConfigError(
                "trial.search.method",
                f"architecture {method} is for {arch.num_classes} classes / {arch.in_channels} input channels, "
                f"the dataset has {num_classes} / {in_channels}",
            )
        _check_kxk_kept(cfg, arch.layers)
        return arch
    if isinstance(method, list):
        wanted, identity = [b for b in method if b != IDENTITY], IDENTITY in method
    else:
        wanted, identity = list(BASELINES[method][0]), BASELINES[method][1]
    host = (_build_for_check if meta else _build)(cfg, num_classes, in_channels, BRANCH_TYPES)
    layers = []
    for name, block in odbb_layers(host):
        kept = [b for b in block.branch_names if b in wanted]
        if not kept and not (identity and block.has_identity):
            raise ConfigError("trial.search.method", f"layer {name} would keep no branch of {wanted}")
        layers.append(LayerArch(name, kept, identity and block.has_identity))
    _check_kxk_kept(cfg, layers)
    spec = host.spec
    return Architecture(spec.name, spec.num_classes, spec.in_channels, dict(spec.options), layers)


def _check_kxk_kept(cfg: TrialConfig, layers: list[LayerArch]) -> None:
    """With ``model.weights`` every layer must keep ``kxk``: it carries the trained conv."""
    if cfg.model.weights is None:
        return
    for layer in layers:
        if "kxk" not in layer.branches:
            raise ConfigError("trial.search.method", f"layer {layer.name} keeps no 'kxk' branch, which carries the "
                                                     f"trained conv of model.weights; keep 'kxk' in every layer")


def _read_weights(cfg: TrialConfig, mmap: bool = False) -> Mapping[str, torch.Tensor]:
    """The ``model.weights`` state dict (``weights_only``; ``mmap``: tensors not read)."""
    return read_state_dict(str(cfg.model.weights), mmap=mmap).tensors


def _weights_error(cfg: TrialConfig, err: ValueError) -> ConfigError:
    return ConfigError(_WEIGHTS, f"{cfg.model.weights} does not fit {cfg.model.host} "
                                 f"(options {cfg.model.options}): {err}")


def _load_weights(cfg: TrialConfig, model: nn.Module) -> None:
    state = _read_weights(cfg)  # a file that is not a state_dict: its own ConfigError
    try:
        load_original_state_dict(model, state, new_branch_start=cfg.model.new_branch_start)
    except ValueError as err:
        raise _weights_error(cfg, err) from None


def _check_weights(cfg: TrialConfig, model: nn.Module) -> None:
    """Keys and shapes of ``model.weights`` against the original of ``model`` (file not read in full)."""
    shapes = {k: tuple(v.shape) for k, v in _read_weights(cfg, mmap=True).items()}
    try:
        check_original_state(model, shapes)
    except ValueError as err:
        raise _weights_error(cfg, err) from None


def _layer_sizes(model: nn.Module) -> list[int]:
    return [len(block.branch_names) for _, block in odbb_layers(model)]


def _check_budget(cfg: TrialConfig, sizes: list[int]) -> None:
    """The budget against the candidate count, the per-layer floor and the kept kxk against the budget."""
    try:
        k = budget_to_k(cfg.search.budget, sum(sizes))
    except ValueError as err:
        raise ConfigError("trial.search.budget", f"{err} ({cfg.model.host} with candidates {cfg.search.candidates})") from None
    floor = cfg.search.layer_floor
    forced = min_kept(sizes, floor)
    if forced > k:
        raise ConfigError("trial.search.layer_floor", f"a floor of {floor} per layer keeps {forced} branches over "
                                                      f"{len(sizes)} layers, more than the budget's {k}")
    if cfg.keeps_kxk and len(sizes) > k:
        raise ConfigError("trial.search.budget", f"keeps {k} branches, fewer than the {len(sizes)} kxk branches that "
                                                 f"search.keep_kxk keeps (one per layer; auto with model.weights)")


def build_trial_model(cfg: TrialConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The model the engine trains; checks the budget against the real candidate count and
    loads ``model.weights`` (the same weights on every call: ``two_stage`` restarts from them)."""
    if cfg.search.searching:
        model = _build(cfg, num_classes, in_channels, cfg.search.candidates)
        _check_budget(cfg, _layer_sizes(model))
    else:
        arch = _fixed_architecture(cfg, num_classes, in_channels)
        try:
            model = build_from_architecture(arch, cfg.model.reparam)
        except ValueError as err:
            raise ConfigError("trial.search.method", str(err)) from None
    if cfg.model.weights is not None:
        _load_weights(cfg, model)
    return model


def dataset_classes(cfg: TrialConfig) -> int | None:
    """The dataset's classes without reading it (an image folder's: its class folders, if there)."""
    classes = dataset_info(cfg.data.dataset).classes
    if classes is None and cfg.data.root:
        train = Path(cfg.data.root).expanduser() / "train"
        classes = sum(1 for p in train.iterdir() if p.is_dir()) if train.is_dir() else None
    return classes or None


def check_trial_model(cfg: TrialConfig, cache: dict[str, Any] | None = None) -> None:
    """Raise the ``ConfigError`` that :func:`build_trial_model` would raise in the trial (unknown
    model options, a factory that does not import, a model with nothing to convert, a budget
    above the candidate count, a layer floor above the budget, a layer left without branches,
    weights whose keys or shapes do not fit), from the config alone: models are built on the
    meta device and the weights file's keys and shapes are read without its data. ``cache``
    keeps each check's result between calls (one build per model and method)."""
    classes, channels = dataset_classes(cfg), cfg.data.in_channels
    method = cfg.search.method
    cache = {} if cache is None else cache
    host = [cfg.model.host, cfg.model.options, classes, channels]
    if cfg.model.weights is not None:
        wkey = json.dumps(["weights", *host, cfg.model.weights], sort_keys=True, default=str)
        if wkey not in cache:
            if classes is not None:  # the head's shape needs the class count
                _check_weights(cfg, _build_for_check(cfg, classes, channels, BRANCH_TYPES))
            cache[wkey] = None
    if classes is None and isinstance(method, str) and method.endswith(".json"):
        return  # the architecture's class count can only be compared with the data
    key = json.dumps([*host, cfg.search.candidates, "odbb" if cfg.search.searching else method,
                      cfg.model.weights is not None], sort_keys=True, default=str)  # the layer sizes only
    if key not in cache:
        if cfg.search.searching:
            cache[key] = _layer_sizes(_build_for_check(cfg, classes or 2, channels, cfg.search.candidates))
        else:
            _fixed_architecture(cfg, classes or 2, channels, meta=True)
            cache[key] = None
    if cache[key] is not None:
        _check_budget(cfg, cache[key])
