"""Fill MLflow in from what Ray Tune recorded: ``python -m orchestrator.sync SWEEP.yaml``.

Ray's results in ``<storage_path>/<name>`` (each trial's progress, latest checkpoint with
its config, metric history and ``export/``, error) are the record of a sweep; MLflow is a
view of it. When the tracking server was unreachable for part of a sweep, this command
creates or completes each child run (found by its trial-name tag, so re-running it never
duplicates) with the writer the trials' hook uses (``orchestrator.child_run.reconcile``):
the missing metric steps, the exports and the fused model, the end status. Then it
recomputes the Pareto front and the registry aliases. The driver runs the same
reconciliation at the end of every sweep.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.tracking import MlflowClient

from .child_run import TrialLog, reconcile
from .config import ConfigError, SweepConfig, load_sweep
from .records import TrialStatus, status_from_ray, trial_error, trial_id, trial_name
from .redact import error_line, redact
from .tracking import SweepState, child_runs, client_defaults

if TYPE_CHECKING:
    from mlflow.entities import Run
    from ray.tune import Result, ResultGrid

__all__ = ["SyncReport", "load_results", "trial_log", "sync_mlflow", "main"]

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


def load_results(cfg: SweepConfig) -> ResultGrid:
    """The sweep's results as Ray recorded them in storage (no Ray cluster needed)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    return ResultGrid(ExperimentAnalysis(cfg.experiment_path))


def trial_log(result: Result, cfg: SweepConfig) -> TrialLog:
    """What the trial's child run must show, from Ray's results: the config and per-epoch metrics
    the trial saved in its latest checkpoint (what its hook was given); without one, the base
    trial with Ray's sampled config and Ray's progress rows. Status and error as the records read them."""
    meta = _checkpoint_meta(result)
    if meta is not None:
        config, epochs = meta["config"], {int(row["epoch"]): row for row in meta.get("history", [])}
    else:
        from trainables.config import TrialConfig

        config, epochs = TrialConfig.from_overrides(cfg.base_trial(), result.config or {}).to_dict(), _epoch_rows(result)
    status = status_from_ray(result)
    export = _export_dir(result) if status is TrialStatus.FINISHED else None
    return TrialLog(trial_name(result), config, trial_id(result), epochs, status, trial_error(result), export)


def _checkpoint_meta(result: Result) -> dict[str, Any] | None:
    """The trial's own record in its latest checkpoint (``run_trial``'s meta), None if unreadable."""
    if result.checkpoint is None:
        return None
    from trainables.restore import stored_meta

    try:
        meta = stored_meta(result.checkpoint.filesystem, result.checkpoint.path)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta.get("config"), dict) else None


def _epoch_rows(result: Result) -> dict[int, dict[str, float]]:
    """The trial's metrics per completed epoch from Ray's progress (the last report of an epoch
    wins; failure rows and Ray's own keys skipped)."""
    from trainables.failures import FAILED_KEY
    from trainables.metrics import EPOCH_METRICS, FINAL_METRICS, OPTIONAL_FINAL_METRICS

    frame = result.metrics_dataframe
    rows: dict[int, dict[str, float]] = {}
    if frame is None or "epoch" not in frame:
        return rows
    names = EPOCH_METRICS + FINAL_METRICS + OPTIONAL_FINAL_METRICS
    for row in frame.to_dict("records"):
        if row.get(FAILED_KEY) == 1.0 or not _finite(row.get("epoch")):
            continue
        rows[int(row["epoch"])] = {k: float(row[k]) for k in names if _finite(row.get(k))}
    return rows


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    """Child runs of trials Ray does not know (a driver killed before its first snapshot):
    deleted when they hold no metrics, else tagged ``repnas.orphaned`` and marked KILLED."""
    for name, run in runs.items():
        if name in trial_names:
            continue
        if not run.data.metrics:
            client.delete_run(run.info.run_id)
        else:
            client.set_tag(run.info.run_id, TAG_ORPHANED, "true")
            client.set_terminated(run.info.run_id, "KILLED")
        report.orphans += 1


def sync_mlflow(cfg: SweepConfig, state: SweepState, results: ResultGrid) -> SyncReport:
    """Make MLflow match Ray's results for every trial (idempotent)."""
    client_defaults()
    client = MlflowClient(state.tracking_uri)
    runs = child_runs(state)
    report = SyncReport()
    names: set[str] = set()
    for result in results:
        if not result.path:
            continue
        log = trial_log(result, cfg)
        names.add(log.name)
        run = runs.get(log.name)
        done = reconcile(client, state.tracking_uri, state.experiment_id, state.parent_run_id, log,
                         run.info.run_id if run else None)
        report.created += done.created
        report.steps_logged += done.points
        report.completed += done.ended is TrialStatus.FINISHED
        report.failed += done.ended is TrialStatus.FAILED
    _clean_orphans(client, runs, names, report)
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m orchestrator.sync SWEEP.yaml [--set K=V]``: 0 done, 1 MLflow failed, 2 usage."""
    parser = argparse.ArgumentParser(prog="repnas-sync", description="Fill MLflow in from a sweep's Ray results.")
    parser.add_argument("sweep", help="the sweep YAML file the sweep was run with")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="same overrides as the run")
    args = parser.parse_args(argv)
    try:
        cfg = load_sweep(args.sweep, args.set)
    except ConfigError as err:
        print(f"repnas-sync: error: invalid sweep file {args.sweep}: {err}", file=sys.stderr)
        return 2
    from .tuner import can_restore

    state = SweepState.load(cfg)
    if state is None or not can_restore(cfg):
        print(f"repnas-sync: error: no sweep with Ray results at {cfg.experiment_path}", file=sys.stderr)
        return 2
    from .summary import print_summary, summarize

    try:
        results = load_results(cfg)
        print(f"MLflow sync of {cfg.name!r}: {sync_mlflow(cfg, state, results)}")
        summary = summarize(results, cfg, state)
    except Exception as err:  # noqa: BLE001 - report any tracking failure in one line
        print(f"repnas-sync: error: MLflow at {redact(state.tracking_uri)} failed: {error_line(err)}",
              file=sys.stderr)
        return 1
    print_summary(summary, cfg, state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
