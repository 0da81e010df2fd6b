"""A trial's MLflow child run, with one writer: live from the trial (:class:`MLflowTrialHook`)
and afterwards from Ray's results (``tracking.from_ray``, ``python -m orchestrator.sync``).

A :class:`TrialLog` is what the run must show: the trial's record (name, id, how it ended),
its params, one metric row per completed epoch (step = epoch) and, when it finished, its
export folder (artifacts and the fused model). :func:`reconcile` writes whatever the run
lacks and nothing twice, so the hook and the sync build the same run and either completes
what the other began; only where the log comes from differs (the trial itself, or the
record and checkpoint Ray keeps).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from trainables.run.hooks import TrialHook

from ..records import TrialRecord, TrialStatus, error_message, numeric_metrics
from ..redact import error_line, redact
from . import fused_model
from .parent_run import (MODEL_NAME, TAG_ERROR, TAG_MODEL_URI, TAG_PARENT, TAG_REPEAT_OF, TAG_REPEAT_RUN, TAG_STOPPED,
                         TAG_TRIAL, TAG_TRIAL_ID, client_defaults, mlflow_params)

if TYPE_CHECKING:
    from trainables.config.sections import TrialConfig
    from trainables.config.repeat import Repeat

__all__ = ["TrialLog", "ChildRun", "Reconciled", "reconcile", "MLflowTrialHook"]

_STEP = "epoch"  # in every row: its history tells which steps a run already has
_ERROR_CHARS = 5000


@dataclass
class TrialLog:
    """What a trial's child run must show."""

    record: TrialRecord  # name, Ray's trial id, status and error (what the run's tags and status show)
    params: Mapping[str, Any]  # the TrialConfig the trial ran, as a dict: the run's params
    epochs: dict[int, dict[str, Any]] = field(default_factory=dict)  # metric rows by epoch (= step)
    export_dir: Path | None = None  # a finished trial's export folder
    repeat: Repeat | None = None  # a repeat's earlier trial: linked instead of a fused model

    @property
    def step(self) -> int:
        """The last epoch the log has (the fused model's step)."""
        return max(self.epochs, default=0)


@dataclass
class Reconciled:
    """What one :func:`reconcile` wrote."""

    run_id: str
    created: bool
    points: int
    ended: TrialStatus | None  # the end written (None: the run already showed it, or the trial has not ended)


class ChildRun:
    """One trial's child run under the sweep's parent run: found or created, then written to."""

    def __init__(self, client: MlflowClient, run_id: str, created: bool, experiment_id: str, parent_run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.created = created
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self._logged: set[int] | None = set() if created else None

    @classmethod
    def open(cls, client: MlflowClient, experiment_id: str, parent_run_id: str, log: TrialLog,
             run_id: str | None = None, running: bool = False) -> ChildRun:
        """The trial's run (``run_id``, else the first one tagged with its name, else a new one)
        with its params; ``running`` marks an ended run RUNNING again (the trial runs once more)."""
        name = log.record.trial_name
        run_id = run_id or _find(client, experiment_id, parent_run_id, name)
        if run_id is None:
            tags = {TAG_PARENT: parent_run_id, TAG_TRIAL: name}
            if log.record.trial_id:
                tags[TAG_TRIAL_ID] = log.record.trial_id
            run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
            client.log_batch(run_id, params=mlflow_params(log.params))
            opened = cls(client, run_id, True, experiment_id, parent_run_id)
            existing: Mapping[str, str] = {}
        else:
            run = client.get_run(run_id)
            if not run.data.params:
                client.log_batch(run_id, params=mlflow_params(log.params))
            if running and run.info.status != TrialStatus.RUNNING.mlflow:
                client.update_run(run_id, status=TrialStatus.RUNNING.mlflow)
            opened, existing = cls(client, run_id, False, experiment_id, parent_run_id), run.data.tags
        if log.repeat is not None and TAG_REPEAT_OF not in existing:
            opened._link(log.repeat)  # before its (copied) metrics: a repeat's run is known as one from then on
        return opened

    def log_epochs(self, epochs: Mapping[int, Mapping[str, Any]]) -> int:
        """Log the numeric metrics of every epoch the run lacks (step = epoch); the points logged."""
        if self._logged is None:
            self._logged = {m.step for m in self.client.get_metric_history(self.run_id, _STEP)}
        now = int(time.time() * 1000)
        points = [Metric(k, v, now, step) for step, row in sorted(epochs.items()) if step not in self._logged
                  for k, v in numeric_metrics(row).items()]
        if points:
            self.client.log_batch(self.run_id, metrics=points)  # MLflow splits large batches
        self._logged.update(epochs)
        return len(points)

    def end(self, log: TrialLog, tracking_uri: str, model_name: str = MODEL_NAME) -> TrialStatus | None:
        """Write how the trial ended unless the run shows it already (a finished trial: export
        artifacts, the fused model and its URI tag first; a repeat: the link to the trial it
        repeats); the status written."""
        status = log.record.status
        if not status.ended or (status is TrialStatus.FINISHED and log.export_dir is None and log.repeat is None):
            return None
        run = self.client.get_run(self.run_id)
        tags = run.data.tags
        outcome = TAG_MODEL_URI if log.repeat is None else TAG_REPEAT_OF
        shown = {TrialStatus.FINISHED: outcome in tags and TAG_ERROR not in tags,
                 TrialStatus.STOPPED: TAG_STOPPED in tags and TAG_ERROR not in tags,
                 TrialStatus.FAILED: TAG_ERROR in tags}.get(status, True)
        if run.info.status == status.mlflow and shown:
            return None
        if status in (TrialStatus.FINISHED, TrialStatus.STOPPED) and TAG_ERROR in tags:
            self.client.delete_tag(self.run_id, TAG_ERROR)  # an earlier attempt's; this one got through
        if status is TrialStatus.FINISHED and log.repeat is None and TAG_MODEL_URI not in tags:
            assert log.export_dir is not None
            for f in fused_model.artifact_files(log.export_dir):
                self.client.log_artifact(self.run_id, str(f))
            uri = fused_model.log_fused_model(tracking_uri, self.run_id, log.export_dir, model_name, log.step)
            self.client.set_tag(self.run_id, TAG_MODEL_URI, uri)
        elif status is TrialStatus.FAILED:
            self.client.set_tag(self.run_id, TAG_ERROR, redact(log.record.error or "failed")[:_ERROR_CHARS])
        elif status is TrialStatus.STOPPED:
            self.client.set_tag(self.run_id, TAG_STOPPED, "true")
        self.client.set_terminated(self.run_id, status.mlflow)
        return status

    def _link(self, repeat: Repeat) -> None:
        """Tag a repeat with the trial it repeats and, where found, that trial's run."""
        run_id = repeat.run_id or _find(self.client, self.experiment_id, self.parent_run_id, repeat.trial)
        tags = [RunTag(TAG_REPEAT_OF, repeat.label)] + ([RunTag(TAG_REPEAT_RUN, run_id)] if run_id else [])
        self.client.log_batch(self.run_id, tags=tags)


def _find(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_name: str) -> str | None:
    query = f"tags.{TAG_PARENT} = '{parent_run_id}' and tags.`{TAG_TRIAL}` = '{trial_name}'"
    runs = client.search_runs([experiment_id], query, max_results=1, order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def reconcile(client: MlflowClient, tracking_uri: str, experiment_id: str, parent_run_id: str, log: TrialLog,
              run_id: str | None = None, model_name: str = MODEL_NAME) -> Reconciled:
    """Make the trial's child run show ``log``: run and params, missing epochs, the end (idempotent)."""
    run = ChildRun.open(client, experiment_id, parent_run_id, log, run_id)
    points = run.log_epochs(log.epochs)
    return Reconciled(run.run_id, run.created, points, run.end(log, tracking_uri, model_name))


def _current_trial_id() -> str | None:
    try:
        import warnings

        from ray import tune

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "only meant to be called inside a Tuner"
            return tune.get_context().get_trial_id()
    except Exception:  # noqa: BLE001 - outside a Tune session there is no trial id
        return None


def _ending(error: BaseException) -> tuple[TrialStatus, str | None]:
    """How an exception ended a trial: Ray Tune stops one (scheduler, stop criteria) with
    ``sys.exit(0)``; Ctrl-C kills it; anything else fails it."""
    if isinstance(error, SystemExit) and error.code in (0, None):
        return TrialStatus.STOPPED, None
    if isinstance(error, KeyboardInterrupt):
        return TrialStatus.KILLED, None
    return TrialStatus.FAILED, error_message(error)


class MLflowTrialHook(TrialHook):
    """Child run per trial: params, per-epoch metrics (step = epoch), exports, fused model.

    Idempotent across restores: the run id is part of the checkpointed state; without
    state an existing child with the same trial name is reused; epochs already logged
    are skipped, so the metric history stays continuous with one point per step.

    Never fails the trial: an MLflow error is logged as a warning, the epoch's metrics
    stay buffered (``pending``, also in the checkpoint) and are sent with the next epoch
    that gets through; ``unlogged`` lists what failed at the time. Whatever is still
    missing is filled in from Ray's results at the end of the sweep or by
    ``python -m orchestrator.sync SWEEP.yaml``, through the same :func:`reconcile`.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 model_name: str = MODEL_NAME) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.model_name = model_name
        self.run_id: str | None = None
        self.pending: dict[int, dict[str, float]] = {}
        self.unlogged: list[str] = []
        self._log: TrialLog | None = None
        self._run: ChildRun | None = None
        self._finished = False

    @property
    def client(self) -> MlflowClient:
        """A client for the tracking URI (cheap; not pickled)."""
        return MlflowClient(self.tracking_uri)

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "pending": {str(k): v for k, v in self.pending.items()},
                "unlogged": self.unlogged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id") or self.run_id
        self.pending = {int(k): v for k, v in state.get("pending", {}).items()}
        self.unlogged = list(state.get("unlogged", []))

    def _attempt(self, what: str, action: Callable[[], None]) -> None:
        """Run an MLflow action; on failure warn, remember ``what`` and let training go on."""
        try:
            action()
        except Exception as err:  # noqa: BLE001 - any tracking failure must not end the trial
            self.unlogged.append(what)
            print(f"MLflow at {redact(self.tracking_uri)} failed while logging {what} ({error_line(err)}); training "
                  "continues. Fill it in later with `python -m orchestrator.sync SWEEP.yaml`.", file=sys.stderr)

    def on_start(self, config: TrialConfig, trial_name: str, resumed: bool) -> None:
        client_defaults(self.tracking_uri)
        self._log = TrialLog(TrialRecord(_current_trial_id() or "", trial_name, TrialStatus.RUNNING), config.to_dict())
        self._attempt("the child run", self._open)

    def _open(self) -> ChildRun | None:
        """The child run, opened once (created, or reopened as RUNNING)."""
        if self._run is None and self._log is not None:
            self._run = ChildRun.open(self.client, self.experiment_id, self.parent_run_id, self._log,
                                      self.run_id, running=True)
            self.run_id = self._run.run_id
        return self._run

    def on_epoch(self, metrics: dict[str, float], epoch: int) -> None:
        self.pending[epoch] = dict(metrics)
        self._attempt(f"epoch {epoch} metrics", self._flush)

    def _flush(self) -> None:
        """Send the buffered epochs in order (those MLflow already has are dropped)."""
        run = self._open()
        if run is not None:
            run.log_epochs(self.pending)
            self.pending.clear()

    def on_end(self, metrics: dict[str, float], export_dir: Path) -> None:
        self._finished = True
        self.pending[int(metrics.get(_STEP, 0) or 0)] = dict(metrics)  # a no-op when on_epoch logged it
        self._attempt("the final metrics, artifacts and fused model",
                      lambda: self._end(TrialStatus.FINISHED, export_dir=Path(export_dir)))

    def on_repeat(self, metrics: dict[str, float], repeat: Repeat) -> None:
        self._finished = True
        self.pending[int(metrics.get(_STEP, 0) or 0)] = dict(metrics)
        self._attempt("the repeated result", lambda: self._end(TrialStatus.FINISHED, repeat=repeat))

    def on_error(self, error: BaseException) -> None:
        status, message = _ending(error)
        if status is TrialStatus.STOPPED and self._finished:
            return  # Ray ends a trial's worker once its last result (``done``) is in: nothing was cut short
        self._attempt("the trial's end status", lambda: self._end(status, error=message))

    def _end(self, status: TrialStatus, error: str | None = None, export_dir: Path | None = None,
             repeat: Repeat | None = None) -> None:
        if self._log is None:
            return
        record = replace(self._log.record, status=status, error=error, repeat_of=repeat.label if repeat else None)
        log = replace(self._log, record=record, epochs=dict(self.pending), export_dir=export_dir, repeat=repeat)
        self.run_id = reconcile(self.client, self.tracking_uri, self.experiment_id, self.parent_run_id, log,
                                self.run_id, self.model_name).run_id
        self.pending.clear()
