"""Reading a sweep file: YAML (after ``extends:``), ``MLFLOW_TRACKING_URI`` and ``--set``
overrides, validation into a frozen :class:`~orchestrator.sweep.schema.SweepConfig`.

Everything here runs before Ray starts; every problem is a ``ConfigError`` naming the key
path and what was expected.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from trainables.config.presets import layer_trial
from trainables.config.metrics import INT8_METRICS, objective_metric_names, scheduler_metric_names
from trainables.config.schema import apply_overrides, did_you_mean, join_path, load_dataclass, parse_override
from trainables.errors import ConfigError
from trainables.config.sweepfile import read_sweep_yaml

from .tracking_uri import resolve_tracking_uri
from .fit import check_fit, check_request
from .schema import SchedulerConfig, SweepConfig
from .control import check_unsampled_control, with_control
from .space import SpaceParam, parse_space
from .trials import validate_trials

__all__ = ["load_sweep", "parse_sweep", "apply_set", "local_gpu_count", "starts_local_ray", "RAY_RESULT_KEYS"]

RAY_RESULT_KEYS: tuple[str, ...] = ("training_iteration", "time_total_s", "time_this_iter_s")
"""Keys Ray Tune adds to every result; valid in ``stop:``."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PATH_KEYS = frozenset({"model.weights", "data.root"})
"""Trial keys naming local files: made absolute against the working directory here, as Tune
runs each trial in a folder of its own (and a resumed sweep reads the paths it first resolved)."""


def apply_set(raw: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` overrides (dotted KEY, VALUE parsed by ``yaml.safe_load``).

    Under ``space.`` the rest of KEY is one dotted trial key: ``space.optim.lr={choice: [0.1]}``;
    under ``trial.`` it layers over the file's trial as every trial layer does (``layer_trial``).
    """
    out = copy.deepcopy(raw)
    for item in assignments:
        key, value = parse_override(item)
        head, _, rest = key.partition(".")
        try:
            if head == "space" and rest:
                space = out.get("space")
                if space is None:
                    space = out["space"] = {}
                if not isinstance(space, dict):
                    raise ConfigError("", "space is not a mapping")
                space[rest] = value
            elif head == "trial" and rest:
                trial = out.get("trial") or {}
                if not isinstance(trial, dict):
                    raise ConfigError("", "trial is not a mapping")
                out["trial"] = layer_trial(trial, {rest: value})
            else:
                out = apply_overrides(out, {key: value})
        except ConfigError as err:
            raise ConfigError(f"--set {key}", err.message) from None
    return out


def load_sweep(path: str | os.PathLike[str], overrides: list[str] | None = None,
               env: dict[str, str] | None = None) -> SweepConfig:
    """Read, override and validate a sweep file: every check that can run before Ray starts.

    Args:
        path: the sweep YAML (its ``extends:`` chain is followed).
        overrides: ``--set KEY=VALUE`` strings, applied after ``MLFLOW_TRACKING_URI``.
        env: the environment to read (default ``os.environ``).

    Returns:
        The frozen :class:`SweepConfig`; ``cfg.base`` is the validated base trial.

    Raises:
        ConfigError: a bad key or value, named by its path (``trial.<key>``, ``space.<key>``...).
    """
    env = dict(os.environ) if env is None else env
    raw = read_sweep_yaml(path)
    if env.get("MLFLOW_TRACKING_URI"):
        section = raw.get("mlflow")
        raw["mlflow"] = {**(section if isinstance(section, dict) else {}),
                         "tracking_uri": env["MLFLOW_TRACKING_URI"]}
    raw = apply_set(raw, overrides or [])
    raw.setdefault("name", Path(path).stem)
    return parse_sweep(raw, source=str(Path(path).resolve()), env=env)


def parse_sweep(raw: dict[str, Any], source: str | None = None, env: dict[str, str] | None = None) -> SweepConfig:
    """Validate a sweep mapping into a :class:`SweepConfig` (paths resolved, every trial checked,
    ``resources`` against Ray's placement rules; with neither ``ray.address`` nor ``RAY_ADDRESS``
    in ``env``, against the local Ray the sweep will start too)."""
    raw = dict(raw)
    space = tuple(_absolute_paths_in(p) for p in parse_space(raw.pop("space", None)))
    trial = raw.pop("trial", None)
    if trial is None:
        trial = {}
    if not isinstance(trial, dict):
        raise ConfigError("trial", f"expected a mapping (the trial defaults), got {type(trial).__name__} {trial!r}")
    trial = _absolute_paths(trial)
    if isinstance(raw.get("scheduler"), str):
        raw["scheduler"] = {"type": raw["scheduler"]}
    cfg = load_dataclass(SweepConfig, raw, "")
    if not _NAME.match(cfg.name):
        raise ConfigError("name", f"expected letters, digits, '_', '.', '-' (it names a directory), got {cfg.name!r}")
    workers = trial.get("runtime", {}).get("workers") if isinstance(trial.get("runtime"), dict) else None
    if workers not in (None, cfg.resources.workers):
        raise ConfigError("trial.runtime.workers", "set resources.workers instead (the sweep copies it into the trial)")
    _check_space(space, cfg.search.algorithm)
    if "://" in cfg.storage_path and "?" in cfg.storage_path:
        raise ConfigError("storage_path", f"options after '?' are not supported ({cfg.storage_path!r}: the sweep's "
                          "name is appended to the path); give an S3-compatible store's endpoint as AWS_ENDPOINT_URL "
                          "and its credentials as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (docs/cluster.md)")
    controlled = space  # every trial with every control: the grid's space, else checked below
    if cfg.search.control is not None:
        search = trial.get("search") if isinstance(trial.get("search"), dict) else {}
        constant = next((p.values[0] for p in space if p.key.removeprefix("trial.") == "search.method"), None)
        controlled = with_control(space, cfg.search.control, constant or search.get("method", "odbb"))
        if cfg.search.algorithm == "grid":
            space = controlled
        else:  # each proposal is followed by its control (ray_tune.controls); the sampler never proposes one
            check_unsampled_control(space, cfg.search.control, cfg.search.algorithm)
    cfg = replace(
        cfg, source=source, space=space,
        storage_path=cfg.storage_path if "://" in cfg.storage_path else str(Path(cfg.storage_path).expanduser().resolve()),
        mlflow=replace(cfg.mlflow, tracking_uri=resolve_tracking_uri(cfg.mlflow.tracking_uri, "mlflow.tracking_uri")),
        trial=_base_trial(trial, space, cfg))
    cfg = replace(cfg, base=validate_trials(cfg.trial, cfg.sampled).with_threads(cfg.resources.cpus))
    if controlled is not space:  # the controls of the proposals must be valid trials too
        validate_trials(cfg.trial, [p for p in controlled if p.sampled])
    _check_stop(cfg)
    _check_int8(cfg)
    if starts_local_ray(cfg, env):
        _check_local_resources(cfg)
    else:  # a cluster's nodes are known once connected (ray_tune.cluster); Ray's own rules now
        check_request(cfg.resources)
    return replace(cfg, scheduler=_scheduler(cfg))


def _absolute(value: Any) -> Any:
    """A path string made absolute against the working directory (anything else as it is)."""
    return str(Path(value).expanduser().resolve()) if isinstance(value, str) and value else value


def _absolute_paths(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested trial mapping with every :data:`_PATH_KEYS` value made absolute."""
    out = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out[key] = _absolute_paths(value, f"{dotted}.")
        else:
            out[key] = _absolute(value) if dotted.removeprefix("trial.") in _PATH_KEYS else value
    return out


def _absolute_paths_in(p: SpaceParam) -> SpaceParam:
    """A space dimension whose options set a :data:`_PATH_KEYS` key, with those paths absolute."""
    own = p.key.removeprefix("trial.")
    if p.kind not in ("choice", "grid", "constant"):
        return p
    if own in _PATH_KEYS:
        return replace(p, values=tuple(_absolute(v) for v in p.values))
    return replace(p, values=tuple(_absolute_paths(v, f"{own}.") if isinstance(v, dict) else v for v in p.values))


def _base_trial(trial: dict[str, Any], space: tuple[SpaceParam, ...], cfg: SweepConfig) -> dict[str, Any]:
    """The ``trial:`` mapping with the space's constants and ``resources.workers`` applied (an
    unset ``runtime.num_threads`` is resolved by ``TrialConfig.with_threads``, on the driver for
    ``SweepConfig.base`` and in each trial from the CPUs Ray gave it)."""
    fixed = {p.key: p.values[0] for p in space if not p.sampled}
    if cfg.resources.workers > 1:
        fixed["runtime.workers"] = cfg.resources.workers
    return layer_trial(trial, fixed)


def _check_space(space: tuple[SpaceParam, ...], algorithm: str) -> None:
    if not any(p.sampled for p in space):
        raise ConfigError("space", "expected at least one sampled key (choice, grid, uniform, loguniform "
                                   "or randint), e.g. search.budget: {choice: [0.25, 0.5]}")
    for p in space:
        if p.kind == "grid" and algorithm == "optuna":
            raise ConfigError(join_path("space", p.key), "grid is not an Optuna distribution; use choice, "
                                                         "or search.algorithm: grid or random")
        if algorithm == "grid" and p.kind not in ("grid", "choice", "constant"):
            raise ConfigError(join_path("space", p.key), f"search.algorithm grid needs grid or choice values, got {p.kind} "
                                                         "(use search.algorithm: random or optuna)")


def _check_stop(cfg: SweepConfig) -> None:
    known = objective_metric_names()
    for key in cfg.stop:
        if key not in known + RAY_RESULT_KEYS:
            raise ConfigError(join_path("stop", key), f"unknown stop criterion{did_you_mean(key, known + RAY_RESULT_KEYS)}; "
                                                      f"expected a reported metric or one of: {', '.join(RAY_RESULT_KEYS)}")


def _check_int8(cfg: SweepConfig) -> None:
    """An INT8 metric as an objective or stop criterion needs every trial to quantize (and,
    for the ``int8_test_*`` ones, a dataset with a test split): a trial without it would never
    report the metric, and the search would learn nothing from it."""
    used = [(join_path(join_path("search.objectives", i), "metric"), o.metric) for i, o in enumerate(cfg.objectives)]
    used += [(join_path("stop", key), key) for key in cfg.stop]
    for path, metric in used:
        if metric not in INT8_METRICS:
            continue
        if False in cfg.values_of("export.int8.enabled"):
            raise ConfigError(path, f"{metric} is reported only by trials with trial.export.int8.enabled: true; "
                                    f"set it in the trial section (some trials of this space have it off)")
        if "_test_" in metric and "digits" in cfg.values_of("data.dataset"):
            raise ConfigError(path, f"{metric} needs a test split, and digits has none; use int8_val_acc / "
                                    f"int8_val_drop, or a dataset with a test split")


def _scheduler(cfg: SweepConfig) -> SchedulerConfig:
    """The scheduler section resolved: ASHA's metric and mode (default: the first objective's)
    and ``max_t`` (default: the most epochs a trial of the space can run)."""
    s = cfg.scheduler
    if s.type != "asha":
        return s
    metric = s.metric or cfg.objectives[0].metric
    mode = s.mode or next((o.mode for o in cfg.objectives if o.metric == metric), None)
    per_epoch = scheduler_metric_names()
    if metric not in per_epoch:
        raise ConfigError("scheduler.metric", f"ASHA needs a metric reported every epoch, got {metric!r}"
                                              f"{did_you_mean(metric, per_epoch)}; expected one of: {', '.join(per_epoch)}")
    if mode is None:
        raise ConfigError("scheduler.mode", f"expected min or max for scheduler metric {metric!r}")
    max_t = s.max_t or max(cfg.values_of("search.epochs"))
    if max_t < s.grace_period:
        raise ConfigError("scheduler.max_t", f"expected an integer >= grace_period ({s.grace_period}), got {max_t}")
    return replace(s, metric=metric, mode=mode, max_t=max_t)


def _check_local_resources(cfg: SweepConfig) -> None:
    """A local Ray's size is known before it starts: check that a trial fits it (a cluster's
    size is only known once connected: ``ray_tune.cluster.validate_cluster``)."""
    machine_gpus = local_gpu_count()
    if cfg.ray.num_gpus is not None and cfg.ray.num_gpus > machine_gpus:
        raise ConfigError("ray.num_gpus", f"this machine has {machine_gpus} GPU(s), got {cfg.ray.num_gpus}")
    cpus = cfg.ray.num_cpus if cfg.ray.num_cpus is not None else (os.cpu_count() or 1)
    gpus = cfg.ray.num_gpus if cfg.ray.num_gpus is not None else machine_gpus
    check_fit(cfg.resources, [{"CPU": float(cpus), "GPU": float(gpus)}], "the local Ray",
              "; lower the request or raise ray.num_cpus / ray.num_gpus")


def starts_local_ray(cfg: SweepConfig, env: dict[str, str] | None = None) -> bool:
    """Whether the sweep starts its own Ray on this machine: neither ``ray.address`` nor
    ``RAY_ADDRESS`` (in ``env``, default the environment) names a cluster."""
    return cfg.ray.address is None and not (os.environ if env is None else env).get("RAY_ADDRESS")


def local_gpu_count() -> int:
    """CUDA GPUs visible on this machine (0 without torch/CUDA)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA means no GPUs
        return 0
