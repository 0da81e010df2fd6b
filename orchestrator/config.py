"""The sweep file schema: dataclasses, YAML loading, ``--set`` overrides and checks.

Everything here runs before Ray starts; every problem is a :class:`ConfigError` naming the
key path and what was expected.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainables.config import under_preset
from trainables.metrics import objective_metric_names, scheduler_metric_names
from trainables.schema import (
    ConfigError,
    apply_overrides,
    at_least,
    between,
    did_you_mean,
    dump_dataclass,
    join_path,
    load_dataclass,
    parse_override,
    rule,
)
from trainables.sweepfile import read_sweep_yaml

from .space import SpaceParam, parse_space
from .validate import validate_trials

__all__ = [
    "ConfigError", "Objective", "RayConfig", "ResourcesConfig", "SearcherConfig",
    "SchedulerConfig", "FailureSettings", "CheckpointSettings", "MlflowConfig",
    "SweepConfig", "load_sweep", "parse_sweep", "apply_set", "sqlite_path", "sqlite_file",
]

Mode = Literal["min", "max"]
# Keys Ray Tune adds to every result; valid in ``stop:``.
RAY_RESULT_KEYS: tuple[str, ...] = ("training_iteration", "time_total_s", "time_this_iter_s")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Objective:
    """One objective: a reported metric and whether to minimise or maximise it."""

    metric: str
    mode: Mode


@dataclass
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


@dataclass
class ResourcesConfig:
    """Resources of one trial (per worker when ``workers > 1``)."""

    cpus: float = field(default=1.0, metadata=rule(between(0.0, float("inf"), low_open=True)))
    gpus: float = field(default=0.0, metadata=rule(at_least(0.0)))
    workers: int = field(default=1, metadata=rule(at_least(1)))


def _default_objectives() -> list[Objective]:
    return [Objective("val_acc", "max"), Objective("branches_kept", "min")]


@dataclass
class SearcherConfig:
    """The outer search algorithm and its budget: the sweep's ``search:`` section."""

    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    objectives: list[Objective] = field(default_factory=_default_objectives)
    sampler: Literal["tpe", "nsgaii", "nsgaiii", "random"] = "tpe"
    population_size: int | None = field(default=None, metadata=rule(at_least(2)))
    num_samples: int = field(default=8, metadata=rule(at_least(1)))
    max_concurrent: int | None = field(default=None, metadata=rule(at_least(1)))
    seed: int | None = 0

    def validate(self, path: str) -> None:
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


@dataclass
class SchedulerConfig:
    """Trial scheduler; ASHA takes a single metric (default: the first objective)."""

    type: Literal["none", "fifo", "asha"] = "none"
    metric: str | None = None
    mode: Mode | None = None
    grace_period: int = field(default=1, metadata=rule(at_least(1)))
    reduction_factor: float = field(default=2.0, metadata=rule(between(1.0, float("inf"), low_open=True)))
    max_t: int | None = field(default=None, metadata=rule(at_least(1)))


@dataclass
class FailureSettings:
    """How often a crashed trial is retried from its last checkpoint (-1: forever)."""

    max_failures: int = field(default=0, metadata=rule(at_least(-1)))


@dataclass
class CheckpointSettings:
    """How many trial checkpoints Ray keeps (null: all)."""

    num_to_keep: int | None = field(default=2, metadata=rule(at_least(1)))


@dataclass
class MlflowConfig:
    """Tracking store, experiment and which fused models to register."""

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None
    register: Literal["pareto", "none", "all"] = "pareto"
    registered_model_name: str | None = None

    def validate(self, path: str) -> None:
        self.tracking_uri = _resolve_tracking_uri(self.tracking_uri, join_path(path, "tracking_uri"))


@dataclass
class SweepConfig:
    """A validated sweep file."""

    name: str = ""
    storage_path: str = "./ray_results"
    storage_shared: bool = False  # the local storage_path is one shared folder on every node
    ray: RayConfig = field(default_factory=RayConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    search: SearcherConfig = field(default_factory=SearcherConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    stop: dict[str, int | float] = field(default_factory=dict)
    failure: FailureSettings = field(default_factory=FailureSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    space: list[SpaceParam] = field(default_factory=list)
    trial: dict[str, Any] = field(default_factory=dict)
    source: str | None = field(default=None, init=False)  # the YAML file it came from

    @property
    def experiment_path(self) -> str:
        """``<storage_path>/<name>``: the Tune experiment directory (or URI)."""
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def objectives(self) -> list[Objective]:
        """The search objectives."""
        return self.search.objectives

    @property
    def experiment_name(self) -> str:
        """MLflow experiment (default: the sweep name)."""
        return self.mlflow.experiment or self.name

    @property
    def registered_model_name(self) -> str:
        """Registry name for the fused models (default: ``repnas-<name>``)."""
        return self.mlflow.registered_model_name or f"repnas-{self.name}"

    def base_trial(self) -> dict[str, Any]:
        """The ``trial:`` dict with the space's constants and ``resources`` applied: ``runtime.workers``,
        and an unset ``runtime.num_threads`` as the CPUs each trial (or DDP worker) is given, so the
        config a trial runs is known on the driver too (MLflow params from the trial or from ``sync``)."""
        fixed = {p.key: p.values[0] for p in self.space if not p.sampled}
        if self.resources.workers > 1:
            fixed["runtime.workers"] = self.resources.workers
        if (self.trial.get("runtime") or {}).get("num_threads") is None:
            fixed.setdefault("runtime.num_threads", max(1, int(self.resources.cpus)))
        return apply_overrides(self.trial, fixed)

    def to_dict(self) -> dict[str, Any]:
        """The resolved sweep as plain YAML-able data."""
        out = dump_dataclass(self)
        out.pop("source")
        out["space"] = {p.key: p.to_spec() for p in self.space}
        return out


def apply_set(raw: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` overrides (dotted KEY, VALUE parsed by ``yaml.safe_load``).

    Under ``space.`` the rest of KEY is one dotted trial key: ``space.optim.lr={choice: [0.1]}``.
    """
    out = copy.deepcopy(raw)
    for item in assignments:
        key, value = parse_override(item)
        head, _, rest = key.partition(".")
        if head == "space" and rest:
            space = out.get("space")
            if space is None:
                space = out["space"] = {}
            if not isinstance(space, dict):
                raise ConfigError(f"--set {key}", "space is not a mapping")
            space[rest] = value
        else:
            if key == "trial.search.preset" and isinstance(out.get("trial"), Mapping):
                out["trial"] = under_preset(out["trial"], value, f"--set {key}")  # replaces the file's values
            try:
                out = apply_overrides(out, {key: value})
            except ConfigError as err:
                raise ConfigError(f"--set {key}", err.message) from None
    return out


def load_sweep(path: str | os.PathLike[str], overrides: list[str] | None = None,
               env: dict[str, str] | None = None) -> SweepConfig:
    """Read, override (``MLFLOW_TRACKING_URI`` then ``--set``) and validate a sweep file."""
    env = dict(os.environ) if env is None else env
    raw = read_sweep_yaml(path)
    if env.get("MLFLOW_TRACKING_URI"):
        section = raw.get("mlflow")
        raw["mlflow"] = {**(section if isinstance(section, dict) else {}),
                         "tracking_uri": env["MLFLOW_TRACKING_URI"]}
    raw = apply_set(raw, overrides or [])
    raw.setdefault("name", Path(path).stem)
    return parse_sweep(raw, source=str(Path(path).resolve()))


def parse_sweep(raw: dict[str, Any], source: str | None = None) -> SweepConfig:
    """Validate a sweep mapping into a :class:`SweepConfig` (paths resolved, trial checked)."""
    raw = dict(raw)
    space = parse_space(raw.pop("space", None))
    trial = raw.pop("trial", None)
    if trial is None:
        trial = {}
    if not isinstance(trial, dict):
        raise ConfigError("trial", f"expected a mapping (the trial defaults), got {type(trial).__name__} {trial!r}")
    if isinstance(raw.get("scheduler"), str):
        raw["scheduler"] = {"type": raw["scheduler"]}
    cfg = load_dataclass(SweepConfig, raw, "")
    cfg.space, cfg.trial, cfg.source = space, trial, source
    _check(cfg)
    return cfg


def _check(cfg: SweepConfig) -> None:
    if not _NAME.match(cfg.name):
        raise ConfigError("name", f"expected letters, digits, '_', '.', '-' (it names a directory), got {cfg.name!r}")
    if "://" not in cfg.storage_path:
        cfg.storage_path = str(Path(cfg.storage_path).expanduser().resolve())
    known = objective_metric_names()
    for key, value in cfg.stop.items():
        if key not in known + RAY_RESULT_KEYS:
            raise ConfigError(join_path("stop", key), f"unknown stop criterion{did_you_mean(key, known + RAY_RESULT_KEYS)}; "
                                                      f"expected a reported metric or one of: {', '.join(RAY_RESULT_KEYS)}")
    _check_scheduler(cfg)
    _check_resources(cfg)
    _check_space(cfg)
    workers = cfg.trial.get("runtime", {}).get("workers") if isinstance(cfg.trial.get("runtime"), dict) else None
    if workers not in (None, cfg.resources.workers):
        raise ConfigError("trial.runtime.workers", "set resources.workers instead (the sweep copies it into the trial)")
    validate_trials(cfg.base_trial(), [p for p in cfg.space if p.sampled])


def _check_space(cfg: SweepConfig) -> None:
    if not any(p.sampled for p in cfg.space):
        raise ConfigError("space", "expected at least one sampled key (choice, grid, uniform, loguniform "
                                   "or randint), e.g. search.budget: {choice: [0.25, 0.5]}")
    for p in cfg.space:
        if p.kind == "grid" and cfg.search.algorithm == "optuna":
            raise ConfigError(join_path("space", p.key), "grid is not an Optuna distribution; use choice, "
                                                         "or search.algorithm: grid or random")
        if cfg.search.algorithm == "grid" and p.kind not in ("grid", "choice", "constant"):
            raise ConfigError(join_path("space", p.key), f"search.algorithm grid needs grid or choice values, got {p.kind} "
                                                         "(use search.algorithm: random or optuna)")


def _check_scheduler(cfg: SweepConfig) -> None:
    s = cfg.scheduler
    if s.type != "asha":
        return
    s.metric = s.metric or cfg.objectives[0].metric
    s.mode = s.mode or next((o.mode for o in cfg.objectives if o.metric == s.metric), None)
    per_epoch = scheduler_metric_names()
    if s.metric not in per_epoch:
        raise ConfigError("scheduler.metric", f"ASHA needs a metric reported every epoch, got {s.metric!r}"
                                              f"{did_you_mean(s.metric, per_epoch)}; expected one of: {', '.join(per_epoch)}")
    if s.mode is None:
        raise ConfigError("scheduler.mode", f"expected min or max for scheduler metric {s.metric!r}")
    if s.max_t is not None and s.max_t < s.grace_period:
        raise ConfigError("scheduler.max_t", f"expected an integer >= grace_period ({s.grace_period}), got {s.max_t}")


def _check_resources(cfg: SweepConfig) -> None:
    r, ray_cfg = cfg.resources, cfg.ray
    if ray_cfg.address is not None:
        return  # a cluster's size is only known once connected
    machine_gpus = local_gpu_count()
    if ray_cfg.num_gpus is not None and ray_cfg.num_gpus > machine_gpus:
        raise ConfigError("ray.num_gpus", f"this machine has {machine_gpus} GPU(s), got {ray_cfg.num_gpus}")
    cpus = ray_cfg.num_cpus if ray_cfg.num_cpus is not None else (os.cpu_count() or 1)
    gpus = ray_cfg.num_gpus if ray_cfg.num_gpus is not None else machine_gpus
    if r.cpus * r.workers > cpus:
        raise ConfigError("resources.cpus", f"a trial needs {r.cpus * r.workers:g} CPU(s) but the local Ray has {cpus}; "
                                            "lower resources.cpus or raise ray.num_cpus")
    if r.gpus * r.workers > gpus:
        raise ConfigError("resources.gpus", f"a trial needs {r.gpus * r.workers:g} GPU(s) but the local Ray has {gpus} "
                                            "(resources.gpus: 0 trains on CPU)")


def local_gpu_count() -> int:
    """CUDA GPUs visible on this machine (0 without torch/CUDA)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA means no GPUs
        return 0


_URI_SCHEMES = ("http", "https", "file", "databricks", "postgresql", "mysql", "mssql")
_SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> str | None:
    """The database path of a ``sqlite:///PATH[?query]`` tracking URI; None for any other URI."""
    return uri[len(_SQLITE):].split("?", 1)[0] if uri.startswith(_SQLITE) else None


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for other URIs and ``:memory:``."""
    db = sqlite_path(uri)
    return None if db in (None, "", ":memory:") else Path(db)


def _resolve_tracking_uri(uri: str, path: str) -> str:
    """Make local sqlite paths absolute (trials run in other working directories)."""
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    if scheme == "sqlite":
        db = sqlite_path(uri)
        if not db:
            raise ConfigError(path, f"expected sqlite:///path/to/file.db, got {uri!r}")
        query = uri[len(_SQLITE) + len(db):]
        return uri if db.startswith("/") else _SQLITE + str(Path(db).expanduser().resolve()) + query
    if scheme.split("+")[0] in _URI_SCHEMES:
        return uri
    raise ConfigError(path, f"expected a tracking URI such as sqlite:///mlflow.db or http://127.0.0.1:5000, "
                            f"got {uri!r}")
