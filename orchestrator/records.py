"""One trial's outcome, :class:`TrialRecord`, built from Ray's results or from MLflow's runs.

Both builders speak one status vocabulary, :class:`TrialStatus`; Ray's and MLflow's own
words are mapped onto it here and nowhere else (``status_from_ray``, ``status_from_mlflow``,
and :attr:`TrialStatus.mlflow` for the child run's writer). Importing this module is cheap:
Ray, MLflow and ``trainables`` are imported by the functions that need them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.tune import Result

    from .config import Objective, SweepConfig
    from .tracking import SweepState

__all__ = ["TrialStatus", "TrialRecord", "status_from_ray", "status_from_mlflow", "trial_name", "trial_id",
           "trial_error", "records_from_results", "records_from_mlflow"]

_ALWAYS = ("search.method", "search.budget", "model.reparam")  # in every MLflow record's config
_RAY_DONE = "done"  # Ray sets it to True once it ended a trial, replacing the trial's own "done"


class TrialStatus(str, Enum):
    """Where a trial stands (the value is what tables and files show)."""

    PENDING = "pending"    # no result yet
    RUNNING = "running"    # reported, not ended (in an interrupted sweep: ``--resume`` continues it)
    FINISHED = "finished"  # every epoch, the final metrics and the fused model
    STOPPED = "stopped"    # ended early by the scheduler or a stop criterion
    FAILED = "failed"      # raised, diverged, or a non-finite objective
    KILLED = "killed"      # interrupted (Ctrl-C in the trial), or an MLflow run no Ray trial has

    def __str__(self) -> str:
        return self.value

    @property
    def ended(self) -> bool:
        """Whether the trial will not run again by itself."""
        return self not in (TrialStatus.PENDING, TrialStatus.RUNNING)

    @property
    def mlflow(self) -> str:
        """The MLflow run status of a child run in this state (a stopped trial's run is FINISHED
        with tag ``repnas.stopped_early``)."""
        return {TrialStatus.FINISHED: "FINISHED", TrialStatus.STOPPED: "FINISHED", TrialStatus.FAILED: "FAILED",
                TrialStatus.KILLED: "KILLED"}.get(self, "RUNNING")


@dataclass
class TrialRecord:
    """One trial's outcome as the Pareto table, the registry and the report see it."""

    trial_id: str
    trial_name: str
    status: TrialStatus
    config: dict[str, Any] = field(default_factory=dict)  # the sampled dotted keys
    budget: Any = None
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    model_uri: str | None = None
    error: str | None = None
    pareto: bool = False
    resume: str | None = None  # for a failed trial: what ``--resume`` will do about it

    def value(self, metric: str) -> float:
        """The metric as a float (NaN when missing or not numeric)."""
        try:
            return float(self.metrics[metric])
        except (KeyError, TypeError, ValueError):
            return math.nan


def status_from_ray(result: Result) -> TrialStatus:
    """The status of a Ray Tune result: failed (Ray's error, or the trial reported that it
    diverged), pending (never reported), finished or stopped (Ray ended it after or before the
    final metrics), else running."""
    from trainables.failures import failure_reason
    from trainables.metrics import FINAL_METRICS

    metrics = result.metrics or {}
    if result.error is not None or failure_reason(metrics):
        return TrialStatus.FAILED
    if "training_iteration" not in metrics:
        return TrialStatus.PENDING
    if not metrics.get(_RAY_DONE):
        return TrialStatus.RUNNING
    final = all(k in metrics for k in FINAL_METRICS if k != _RAY_DONE)
    return TrialStatus.FINISHED if final else TrialStatus.STOPPED


def status_from_mlflow(status: str, stopped_early: bool = False) -> TrialStatus:
    """The status of a child run from its MLflow status (and its ``repnas.stopped_early`` tag)."""
    if status == "FINISHED":
        return TrialStatus.STOPPED if stopped_early else TrialStatus.FINISHED
    return {"FAILED": TrialStatus.FAILED, "KILLED": TrialStatus.KILLED}.get(status, TrialStatus.RUNNING)


def trial_name(result: Result) -> str:
    """The trial's name: its folder's (``repnas_trial_<id>``)."""
    return Path(result.path).name if result.path else str((result.metrics or {}).get("trial_id", "?"))


def trial_id(result: Result) -> str:
    """Ray's id of the trial."""
    return str((result.metrics or {}).get("trial_id") or trial_name(result).rsplit("_", 1)[-1])


def trial_error(result: Result) -> str | None:
    """Why a trial failed, ``Type: message`` (Ray's error or the diverged trial's report); None if it did not."""
    from trainables.failures import failure_reason

    from .repair import error_message

    return error_message(result.error) if result.error is not None else failure_reason(result.metrics or {})


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else text


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _judge(record: TrialRecord, objectives: Sequence[Objective]) -> TrialRecord:
    """Fail a record whose objective is not finite (it cannot be ranked)."""
    bad = [o.metric for o in objectives if o.metric in record.metrics and not math.isfinite(record.value(o.metric))]
    if bad and record.error is None:
        record.error, record.status = f"non-finite {', '.join(bad)}", TrialStatus.FAILED
    return record


def records_from_results(results: Iterable[Result], cfg: SweepConfig) -> list[TrialRecord]:
    """One record per trial of a Ray ``ResultGrid``, by name (metrics of its last report; for a
    failed one, the first line of its error and what ``--resume`` will do about it)."""
    from trainables.schema import flatten_overrides

    from .repair import resume_advice

    base_budget = cfg.base_trial().get("search", {}).get("budget", 0.34)
    records = []
    for result in results:
        config = flatten_overrides(result.config or {})
        error = trial_error(result)
        record = _judge(TrialRecord(
            trial_id=trial_id(result), trial_name=trial_name(result), status=status_from_ray(result),
            config=config, budget=config.get("search.budget", base_budget),
            metrics={k: v for k, v in (result.metrics or {}).items() if _number(v)},
            error=_first_line(error) if error else None), cfg.objectives)
        record.resume = resume_advice(result) if record.error else None
        records.append(record)
    return sorted(records, key=lambda r: r.trial_name)


def _space_keys(cfg: SweepConfig) -> list[str]:
    """The flat trial keys the space sets, sampled or constant (a mapping-valued key: each of its keys)."""
    keys: list[str] = []
    for p in cfg.space:
        nested = {k for v in p.values if isinstance(v, dict) for k in v}
        keys += [f"{p.key}.{k}" for k in sorted(nested)] if nested else [p.key]
    return keys


def _typed(value: str) -> Any:
    """An MLflow param (a string) back to its YAML value."""
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def records_from_mlflow(cfg: SweepConfig, state: SweepState) -> list[TrialRecord]:
    """One record per child run of the sweep's parent run, by name (configs typed, epoch times added).

    A ``search.*`` key left at the base trial's value is dropped from the config, so a
    method's label names only what the space changed (``odbb k=20 epochs=14``).
    """
    from mlflow.tracking import MlflowClient
    from trainables.config import TrialConfig

    from .tracking import TAG_ERROR, TAG_STOPPED, TAG_TRIAL_ID, child_runs, mlflow_params

    client = MlflowClient(state.tracking_uri)
    keys = list(dict.fromkeys([*_ALWAYS, *_space_keys(cfg)]))
    base = {p.key: p.value for p in mlflow_params(TrialConfig.from_dict(cfg.base_trial()).to_dict())}
    records = []
    for name, run in sorted(child_runs(state).items()):
        params, tags = run.data.params, run.data.tags
        metrics = dict(run.data.metrics)
        times = [m.value for m in client.get_metric_history(run.info.run_id, "epoch_time_s")]
        if times:
            metrics["epoch_time_mean_s"] = sum(times) / len(times)
            metrics["train_time_s"] = sum(times)
        config = {k: _typed(params[k]) for k in keys if k in params
                  and (k in _ALWAYS or not k.startswith("search.") or params[k] != base.get(k))}
        records.append(_judge(TrialRecord(
            trial_id=tags.get(TAG_TRIAL_ID, ""), trial_name=name,
            status=status_from_mlflow(run.info.status, tags.get(TAG_STOPPED) == "true"), config=config,
            metrics=metrics, run_id=run.info.run_id, error=tags.get(TAG_ERROR)),
            cfg.objectives))
    return records
