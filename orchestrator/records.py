"""One trial's outcome, :class:`TrialRecord`, and the one status vocabulary, :class:`TrialStatus`.

A record means the same whichever source it is read from (Ray's results, in
``ray_tune.results``, or the sweep's MLflow child runs, in ``tracking.runs``): both build it
with :func:`make_record` from the trial's whole config and its last metrics. Ray's and
MLflow's own status words are mapped onto :class:`TrialStatus` here and nowhere else.
Importing this module is cheap: no Ray, no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from trainables.search.failures import failure_reason
from trainables.config.metrics import EPOCH_METRICS, FINAL_METRICS, OPTIONAL_FINAL_METRICS
from trainables.config.schema import flatten_overrides

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from .sweep import Objective, SweepConfig

__all__ = ["TrialStatus", "TrialRecord", "make_record", "numeric_metrics", "error_message", "record_keys", "status_from_result",
           "status_from_mlflow", "status_of_ray_trial", "ray_terminated", "TRIAL_METRICS", "RunLink"]

RunLink = tuple[str | None, str | None]
"""(MLflow child run id, fused model URI) of a trial, where known."""
_DONE = "done"  # Ray sets it to True once it ended a trial, replacing the trial's own "done"
TRIAL_METRICS: tuple[str, ...] = tuple(n for n in EPOCH_METRICS + FINAL_METRICS + OPTIONAL_FINAL_METRICS if n != _DONE)
"""Every metric a trial reports but its ``done`` marker (its status says that): what a record's
``metrics`` and a child run's metric rows hold (others are Ray's own)."""
_ALWAYS = ("search.method", "search.budget", "model.reparam")  # in every record's config


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
        """The MLflow run status of a run in this state (a stopped trial's run is FINISHED with
        tag ``repnas.stopped_early``; a sweep's parent run takes RUNNING, FINISHED or FAILED)."""
        return {TrialStatus.FINISHED: "FINISHED", TrialStatus.STOPPED: "FINISHED", TrialStatus.FAILED: "FAILED",
                TrialStatus.KILLED: "KILLED"}.get(self, "RUNNING")


def status_from_result(metrics: Mapping[str, Any], errored: bool) -> TrialStatus:
    """The status of a trial from its last result (Ray's, with Ray's own keys) and whether Ray
    recorded an error: failed (Ray's error, or the trial reported that it diverged), pending
    (never reported), finished or stopped (Ray ended it after or before the final metrics),
    else running."""
    if errored or failure_reason(metrics):
        return TrialStatus.FAILED
    if "training_iteration" not in metrics:
        return TrialStatus.PENDING
    if not metrics.get(_DONE):
        return TrialStatus.RUNNING
    final = all(k in metrics for k in FINAL_METRICS if k != _DONE)
    return TrialStatus.FINISHED if final else TrialStatus.STOPPED


def status_from_mlflow(status: str, stopped_early: bool = False) -> TrialStatus:
    """The status of a child run from its MLflow status (and its ``repnas.stopped_early`` tag)."""
    if status == "FINISHED":
        return TrialStatus.STOPPED if stopped_early else TrialStatus.FINISHED
    return {"FAILED": TrialStatus.FAILED, "KILLED": TrialStatus.KILLED}.get(status, TrialStatus.RUNNING)


def ray_terminated(trial: Trial) -> bool:
    """Whether Ray Tune ended a live trial for good (``TERMINATED``: a restore never reruns it)."""
    return trial.status == "TERMINATED"


def status_of_ray_trial(trial: Trial) -> TrialStatus:
    """The status of a live Tune trial (``Trial.status`` and its last result)."""
    if trial.status in ("PENDING", "PAUSED"):
        return TrialStatus.PENDING
    if trial.status == "RUNNING":
        return TrialStatus.RUNNING
    return status_from_result(trial.last_result or {}, errored=trial.status == "ERROR")


def error_message(error: BaseException) -> str:
    """A trial's error as ``Type: message``: the project's own exception when Ray wrapped one
    (``RayTaskError.cause``)."""
    cause = getattr(error, "cause", None) or error
    return f"{type(cause).__name__}: {cause}"


def numeric_metrics(values: Mapping[str, Any], names: Sequence[str] | None = None) -> dict[str, float]:
    """The int and float values of ``values`` (not bools, strings or None), as floats; only
    ``names`` when given. The one filter of what is a metric (records, MLflow rows)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and (names is None or k in names)}


@dataclass
class TrialRecord:
    """One trial's outcome as the summary, the Pareto table, the registry and the report see it.

    ``config``: the trial's values of the space's keys, sampled or constant, and of
    ``search.method``, ``search.budget``, ``model.reparam`` (a ``search.*`` key at the base
    trial's value left out, so a method's label names only what the space changed).
    ``metrics``: the trial's own metrics (``TRIAL_METRICS``) of its last report, plus
    ``epoch_time_mean_s`` (``train_seconds / epoch``). ``run_id``/``model_uri``: its MLflow
    child run and fused model, where known. A repeat (``repeat_of``) has the earlier trial's
    metrics and no fused model of its own.
    """

    trial_id: str
    trial_name: str
    status: TrialStatus
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    model_uri: str | None = None
    error: str | None = None
    repeat_of: str | None = None  # not trained: the earlier trial (``sweep/trial`` for another sweep's) whose result it has
    pareto: bool = False
    control: bool = False  # a control trial (``search.control``): never on the Pareto front

    @property
    def finished(self) -> bool:
        """Every epoch ran and the fused model exists (what comparisons and the registry use)."""
        return self.status is TrialStatus.FINISHED

    def value(self, metric: str) -> float:
        """The metric as a float (NaN when missing)."""
        return self.metrics.get(metric, math.nan)


def record_keys(cfg: SweepConfig) -> list[str]:
    """The flat trial keys a record's config holds: the always-shown ones and every key the space
    sets, sampled or constant (a mapping-valued key: each of its keys)."""
    keys = [key.removeprefix("trial.") for key in _ALWAYS]
    for p in cfg.space:
        keys += p.trial_keys()
    return list(dict.fromkeys(keys))


def make_record(cfg: SweepConfig, trial_id: str, trial_name: str, status: TrialStatus, config: Mapping[str, Any],
                metrics: Mapping[str, Any], error: str | None = None, run_id: str | None = None,
                model_uri: str | None = None, repeat_of: str | None = None) -> TrialRecord:
    """A record from any source: ``config`` is the trial's whole config, flat (dotted keys),
    ``metrics`` its last report. A finite-looking record whose objective is not finite fails
    (it cannot be ranked)."""
    base = flatten_overrides(cfg.base.to_dict())
    shown = {k: config[k] for k in record_keys(cfg) if k in config
             and (k in _ALWAYS or not k.startswith("search.") or config[k] != base.get(k))}
    values = numeric_metrics(metrics, TRIAL_METRICS)
    if values.get("epoch"):
        values["epoch_time_mean_s"] = values.get("train_seconds", math.nan) / values["epoch"]
    record = TrialRecord(trial_id, trial_name, status, shown, values, run_id, model_uri,
                         _first_line(error) if error else None, repeat_of)
    return _judge(record, cfg.objectives)


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else text


def _judge(record: TrialRecord, objectives: Sequence[Objective]) -> TrialRecord:
    """Fail a record whose objective is not finite (it cannot be ranked)."""
    bad = [o.metric for o in objectives if o.metric in record.metrics and not math.isfinite(record.value(o.metric))]
    if bad and record.error is None:
        record.error, record.status = f"non-finite {', '.join(bad)}", TrialStatus.FAILED
    return record
