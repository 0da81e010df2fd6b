"""MLflow filled in from what Ray Tune recorded (``python -m orchestrator.sync``, and the end
of every sweep).

Ray's results in ``<storage_path>/<name>`` (each trial's progress, latest checkpoint with its
config, metric history and ``export/``, error) are the record of a sweep; MLflow is a view of
it. For every trial this creates or completes its child run (found by its trial-name tag, so
running it again never duplicates) with the writer the trials' hook uses
(:func:`~orchestrator.tracking.child_run.reconcile`): the missing metric steps, the exports
and the fused model, the end status, from the same record the summary shows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.tracking import MlflowClient

from ..records import TRIAL_METRICS, TrialStatus, numeric_metrics
from ..ray_tune.results import record_from_result, sampled_config
from .child_run import TrialLog, reconcile
from .parent_run import TAG_REPEAT_OF, SweepState, child_runs, client_defaults

if TYPE_CHECKING:
    from mlflow.entities import Run
    from ray.tune import Result, ResultGrid

    from ..sweep import SweepConfig

__all__ = ["SyncReport", "trial_log", "sync_mlflow", "TAG_ORPHANED"]

TAG_ORPHANED = "repnas.orphaned"


@dataclass
class SyncReport:
    """What one reconciliation changed."""

    created: int = 0
    steps_logged: int = 0
    completed: int = 0
    failed: int = 0
    orphans: int = 0

    def __str__(self) -> str:
        return (f"{self.created} child run(s) created, {self.steps_logged} metric point(s) logged, "
                f"{self.completed} run(s) completed with their model, {self.failed} marked failed, "
                f"{self.orphans} orphan run(s) without a Ray trial cleaned up")


def trial_log(result: Result, cfg: SweepConfig) -> TrialLog:
    """What the trial's child run must show, from Ray's results: its record, and the config and
    per-epoch metrics the trial saved in its latest checkpoint (what its hook was given); without
    one, the config the record was built from and Ray's progress rows."""
    record = record_from_result(result, cfg)
    sampled, repeat = sampled_config(result)
    meta = _checkpoint_meta(result)
    if meta is not None:
        params, epochs = meta["config"], {int(row["epoch"]): row for row in meta.get("history", [])}
    else:
        params, epochs = cfg.trial_config(sampled).to_dict(), _epoch_rows(result)
    export = _export_dir(result) if record.finished and repeat is None else None
    return TrialLog(record, params, epochs, export, repeat)


def _checkpoint_meta(result: Result) -> dict[str, Any] | None:
    """The trial's own record in its latest checkpoint (``run_trial``'s meta), None if unreadable."""
    if result.checkpoint is None:
        return None
    from trainables.run.restore import stored_meta

    try:
        meta = stored_meta(result.checkpoint.filesystem, result.checkpoint.path)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta.get("config"), dict) else None


def _epoch_rows(result: Result) -> dict[int, dict[str, float]]:
    """The trial's metrics per completed epoch from Ray's progress (the last report of an epoch
    wins; failure rows and Ray's own keys skipped)."""
    from trainables.search.failures import FAILED_KEY

    frame = result.metrics_dataframe
    rows: dict[int, dict[str, float]] = {}
    if frame is None or "epoch" not in frame:
        return rows
    for row in frame.to_dict("records"):
        values = {k: v for k, v in numeric_metrics(row, TRIAL_METRICS).items() if math.isfinite(v)}
        if row.get(FAILED_KEY) != 1.0 and "epoch" in values:
            rows[int(values["epoch"])] = values
    return rows


def _export_dir(result: Result) -> Path | None:
    """``export/`` of the trial's latest checkpoint (a finished trial), local or downloaded."""
    if result.checkpoint is None:
        return None
    import pyarrow.fs as pafs

    fs, path = result.checkpoint.filesystem, result.checkpoint.path
    if fs.get_file_info(f"{path}/export").type != pafs.FileType.Directory:
        return None
    local = Path(result.checkpoint.to_directory()) if not isinstance(fs, pafs.LocalFileSystem) else Path(path)
    return local / "export"


def _clean_orphans(client: MlflowClient, runs: Mapping[str, Run], trial_names: set[str], report: SyncReport) -> None:
    """Child runs of trials Ray does not know (a driver killed before its next snapshot):
    deleted when they hold no metrics or are repeats (whose metrics are a copy of the run they
    link to; the searcher proposes the lost trial again), else tagged ``repnas.orphaned`` and
    marked KILLED."""
    for name, run in runs.items():
        if name in trial_names:
            continue
        if not run.data.metrics or TAG_REPEAT_OF in run.data.tags:
            client.delete_run(run.info.run_id)
        else:
            client.set_tag(run.info.run_id, TAG_ORPHANED, "true")
            client.set_terminated(run.info.run_id, TrialStatus.KILLED.mlflow)
        report.orphans += 1


def sync_mlflow(cfg: SweepConfig, state: SweepState, results: ResultGrid) -> SyncReport:
    """Make MLflow match Ray's results for every trial (idempotent)."""
    client_defaults(state.tracking_uri)
    client = MlflowClient(state.tracking_uri)
    runs = child_runs(state)
    report = SyncReport()
    names: set[str] = set()
    for result in results:
        if not result.path:
            continue
        log = trial_log(result, cfg)
        names.add(log.record.trial_name)
        run = runs.get(log.record.trial_name)
        done = reconcile(client, state.tracking_uri, state.experiment_id, state.parent_run_id, log,
                         run.info.run_id if run else None)
        report.created += done.created
        report.steps_logged += done.points
        report.completed += done.ended is TrialStatus.FINISHED
        report.failed += done.ended is TrialStatus.FAILED
    _clean_orphans(client, runs, names, report)
    return report
