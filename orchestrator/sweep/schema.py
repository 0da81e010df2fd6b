"""The sweep file's schema: one frozen dataclass per section, validated by ``sweep.load``.

Field types, defaults and range rules are the reference of docs/sweep-config.md. A
:class:`SweepConfig` is built once (``load_sweep`` / ``parse_sweep``) and never changed:
``base`` is the validated base trial every consumer reads trial values from, and
:meth:`SweepConfig.trial_config` the one way a sampled trial's config is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from trainables.config.sections import TrialConfig
from trainables.config.metrics import objective_metric_names
from trainables.config.schema import at_least, between, derived, did_you_mean, dump_dataclass, join_path, rule
from trainables.errors import ConfigError

from .space import SpaceParam

__all__ = ["Mode", "Objective", "RayConfig", "ResourcesConfig", "SweepSearchConfig", "SchedulerConfig", "FailureSettings",
           "CheckpointSettings", "MlflowConfig", "SweepConfig"]

Mode = Literal["min", "max"]


@dataclass(frozen=True)
class Objective:
    """One objective: a reported metric, whether to minimise or maximise it, and its value in
    the reference point of the Pareto front's hypervolume (``results.hypervolume``; null: the
    metric's natural worst where it has one)."""

    metric: str
    mode: Mode
    reference: float | None = None


@dataclass(frozen=True)
class RayConfig:
    """Where Ray runs: ``address: null`` starts a local Ray sized to the machine."""

    address: str | None = None
    num_cpus: int | None = field(default=None, metadata=rule(at_least(0)))
    num_gpus: int | None = field(default=None, metadata=rule(at_least(0)))
    dashboard: bool = False

    def validate(self, path: str) -> None:
        if self.address is not None and (self.num_cpus is not None or self.num_gpus is not None):
            raise ConfigError(join_path(path, "num_cpus"),
                              "num_cpus/num_gpus size a local Ray; leave them null when connecting to an address")


@dataclass(frozen=True)
class ResourcesConfig:
    """Resources of one trial (per worker when ``workers > 1``)."""

    cpus: float = field(default=1.0, metadata=rule(between(0.0, float("inf"), low_open=True)))
    gpus: float = field(default=0.0, metadata=rule(at_least(0.0)))
    workers: int = field(default=1, metadata=rule(at_least(1)))


def _default_objectives() -> list[Objective]:
    return [Objective("val_acc", "max"), Objective("branches_kept", "min")]


@dataclass(frozen=True)
class SweepSearchConfig:
    """The outer search algorithm and its budget: the sweep's ``search:`` section."""

    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    objectives: list[Objective] = field(default_factory=_default_objectives)
    sampler: Literal["tpe", "nsgaii", "nsgaiii", "random"] = "tpe"
    population_size: int | None = field(default=None, metadata=rule(at_least(2)))
    num_samples: int = field(default=8, metadata=rule(at_least(1)))
    max_concurrent: int | None = field(default=None, metadata=rule(at_least(1)))
    seed: int | None = 0
    skip_repeats: bool = True
    """A proposal equal to a finished or running trial's configuration is not trained again: it
    gets that trial's result (``ray_tune.repeats``). Off for hardware that is not deterministic."""
    warm_start: list[str] = field(default_factory=list)
    """Earlier sweeps (a sweep file, or a sweep name in this tracking store) whose finished trials
    that fit this space are given to the sampler before it proposes anything (``tracking.warm_start``)."""

    control: Literal["plain"] | None = None
    """Pair every trial with a control trained ``plain`` at the same settings (learning rate,
    seed, every other sampled key, the same schedule; ``orchestrator.sweep.control``): a grid gets
    this method in its method dimension; Optuna and random sweeps follow each proposed trial by its
    control (``ray_tune.controls``: the sampler never proposes, nor learns from, a control), so
    the sweep runs twice its searched trials (``num_samples`` for Optuna; with ``skip_repeats`` a
    control equal to an earlier trial takes its result untrained). The control trials stay off
    the Pareto front, and each trial reports ``gain_val_acc``/``gain_test_acc`` over its control
    (``results.controls``)."""

    @property
    def paired(self) -> bool:
        """Each proposed trial is followed by its control (a control outside a grid's space)."""
        return self.control is not None and self.algorithm != "grid"

    def validate(self, path: str) -> None:
        if self.warm_start and self.algorithm != "optuna":
            raise ConfigError(join_path(path, "warm_start"), f"warm starts feed Optuna's sampler; set "
                                                             f"search.algorithm: optuna (got {self.algorithm})")
        known = objective_metric_names()
        opath = join_path(path, "objectives")
        if not self.objectives:
            raise ConfigError(opath, "expected at least one {metric, mode}")
        seen: set[str] = set()
        for i, obj in enumerate(self.objectives):
            mpath = join_path(join_path(opath, i), "metric")
            if obj.metric not in known:
                raise ConfigError(mpath, f"unknown metric {obj.metric!r}{did_you_mean(obj.metric, known)}; "
                                         f"expected one of: {', '.join(known)}")
            if obj.metric in seen:
                raise ConfigError(mpath, f"{obj.metric!r} is listed twice")
            seen.add(obj.metric)


@dataclass(frozen=True)
class SchedulerConfig:
    """Trial scheduler; ASHA takes a single metric (default: the first objective).

    ``max_t`` (null): the longest trial the space can sample, in epochs (one report each).
    """

    type: Literal["none", "fifo", "asha"] = "none"
    metric: str | None = None
    mode: Mode | None = None
    grace_period: int = field(default=1, metadata=rule(at_least(1)))
    reduction_factor: float = field(default=2.0, metadata=rule(between(1.0, float("inf"), low_open=True)))
    max_t: int | None = field(default=None, metadata=rule(at_least(1)))


@dataclass(frozen=True)
class FailureSettings:
    """How often a crashed trial is retried from its last checkpoint (-1: forever)."""

    max_failures: int = field(default=0, metadata=rule(at_least(-1)))


@dataclass(frozen=True)
class CheckpointSettings:
    """How many trial checkpoints Ray keeps (null: all)."""

    num_to_keep: int | None = field(default=2, metadata=rule(at_least(1)))


@dataclass(frozen=True)
class MlflowConfig:
    """Tracking store, experiment and which fused models to register."""

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None
    register: Literal["pareto", "none", "all"] = "pareto"
    registered_model_name: str | None = None


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep file.

    ``trial`` is the base trial mapping as resolved (the file's ``trial:`` with the space's
    constants, ``resources.workers`` and the thread count applied), ``base`` its validated
    :class:`TrialConfig`; sampled trials layer their keys over ``trial`` (``trial_config``).
    """

    name: str = ""
    storage_path: str = "./ray_results"
    storage_shared: bool = False  # the local storage_path is one shared folder on every node
    ray: RayConfig = field(default_factory=RayConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    search: SweepSearchConfig = field(default_factory=SweepSearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    stop: dict[str, int | float] = field(default_factory=dict)
    failure: FailureSettings = field(default_factory=FailureSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    space: tuple[SpaceParam, ...] = field(default=(), metadata=derived())
    trial: dict[str, Any] = field(default_factory=dict, metadata=derived())
    base: TrialConfig = field(default_factory=TrialConfig, metadata=derived())
    source: str | None = field(default=None, metadata=derived())  # the YAML file it came from

    @property
    def experiment_path(self) -> str:
        """``<storage_path>/<name>``: the Tune experiment directory (or URI)."""
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def objectives(self) -> list[Objective]:
        """The search objectives."""
        return self.search.objectives

    @property
    def sampled(self) -> list[SpaceParam]:
        """The space's sampled dimensions (its constants are part of ``trial``)."""
        return [p for p in self.space if p.sampled]

    @property
    def experiment_name(self) -> str:
        """MLflow experiment (default: the sweep name)."""
        return self.mlflow.experiment or self.name

    @property
    def registered_model_name(self) -> str:
        """Registry name for the fused models (default: ``repnas-<name>``)."""
        return self.mlflow.registered_model_name or f"repnas-{self.name}"

    def trial_config(self, overrides: dict[str, Any] | None = None) -> TrialConfig:
        """The config of the trial with these sampled ``overrides`` (``base`` for none)."""
        return TrialConfig.from_overrides(self.trial, overrides).with_threads(self.resources.cpus) \
            if overrides else self.base

    def values_of(self, key: str) -> list[Any]:
        """Every value a trial can have at dotted trial ``key``: the space's values for it (a
        range's ends; a group's values for that key), else the base trial's one value."""
        for p in reversed(self.sampled):  # a later space key wins, as in the trial's layering
            values = p.key_values(key)
            if values:
                return list(values)
        value: Any = self.base
        for part in key.split("."):
            value = getattr(value, part)
        return [value]

    def to_dict(self) -> dict[str, Any]:
        """The resolved sweep as plain YAML-able data."""
        out = dump_dataclass(self)
        out.pop("source")
        out.pop("base")
        out["space"] = {p.key: p.to_spec() for p in self.space}
        return out
