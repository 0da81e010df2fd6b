"""Fill MLflow in from what Ray Tune recorded: ``python -m orchestrator.sync SWEEP.yaml``.

Ray's results in ``<storage_path>/<name>`` (each trial's progress, latest checkpoint with
``export/``, error) are the record of a sweep; MLflow is a view of it. When the tracking
server was unreachable for part of a sweep, this command creates or completes each child
run (found by its ``repnas.trial_name`` tag, so re-running it never duplicates), logs the
missing metric steps, the exports and the fused model, sets the end status, and then
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

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from .config import ConfigError, SweepConfig, load_sweep
from .redact import error_line, redact
from .tracking import (TAG_ERROR, TAG_PARENT, TAG_TRIAL, TAG_TRIAL_ID, SweepState, child_runs,
                       complete_run, client_defaults, mlflow_params)

if TYPE_CHECKING:
    from mlflow.entities import Run
    from ray.tune import Result, ResultGrid

__all__ = ["SyncReport", "load_results", "sync_mlflow", "main"]

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


def _epoch_rows(result: Result) -> dict[int, dict[str, float]]:
    """Numeric metrics per completed epoch (the last report of an epoch wins; failure rows skipped)."""
    from trainables.failures import FAILED_KEY
    from trainables.metrics import EPOCH_METRICS

    frame = result.metrics_dataframe
    rows: dict[int, dict[str, float]] = {}
    if frame is None or "epoch" not in frame:
        return rows
    for row in frame.to_dict("records"):
        if row.get(FAILED_KEY) == 1.0 or not _finite(row.get("epoch")):
            continue
        rows[int(row["epoch"])] = {k: float(row[k]) for k in EPOCH_METRICS if _finite(row.get(k))}
    return rows


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _error_of(result: Result) -> str | None:
    """The reason a trial ended in error: Ray's error, or the ``error`` of a diverged trial."""
    from trainables.failures import failure_reason

    if result.error is not None:
        return f"{type(result.error).__name__}: {result.error}"
    return failure_reason(result.metrics or {})


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


def _missing_points(client: MlflowClient, run_id: str, rows: Mapping[int, Mapping[str, float]]) -> list[Metric]:
    """Metric points Ray has and the run lacks (by metric name and step)."""
    names = {name for values in rows.values() for name in values}
    points = []
    for name in sorted(names):
        have = {m.step for m in client.get_metric_history(run_id, name)}
        points += [Metric(name, values[name], 0, step) for step, values in sorted(rows.items())
                   if name in values and step not in have]
    return points


def _sync_trial(client: MlflowClient, state: SweepState, cfg: SweepConfig, result: Result,
                run: Run | None, report: SyncReport) -> None:
    from trainables.tune import trial_config_from

    name = Path(result.path).name
    if run is None:
        tags = {TAG_PARENT: state.parent_run_id, TAG_TRIAL: name}
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id:
            tags[TAG_TRIAL_ID] = str(trial_id)
        run_id = client.create_run(state.experiment_id, run_name=name, tags=tags).info.run_id
        client.log_batch(run_id, params=mlflow_params(trial_config_from(cfg.base_trial(), result.config or {}).to_dict()))
        report.created += 1
    else:
        run_id = run.info.run_id
    points = _missing_points(client, run_id, _epoch_rows(result))
    client.log_batch(run_id, metrics=points)  # MLflow splits large batches
    report.steps_logged += len(points)
    error = _error_of(result)
    export = None if error else _export_dir(result)
    if error:
        if run is None or run.info.status != "FAILED" or TAG_ERROR not in run.data.tags:
            client.set_tag(run_id, TAG_ERROR, redact(error)[:5000])
            client.set_terminated(run_id, "FAILED")
            report.failed += 1
    elif export is not None and (run is None or run.info.status != "FINISHED"):
        from trainables.metrics import EPOCH_METRICS, FINAL_METRICS, OPTIONAL_FINAL_METRICS

        names = set(EPOCH_METRICS + FINAL_METRICS + OPTIONAL_FINAL_METRICS)
        final = {k: v for k, v in (result.metrics or {}).items() if k in names and _finite(v)}
        complete_run(client, state.tracking_uri, run_id, final, export)
        report.completed += 1


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
    names = set()
    for result in results:
        if not result.path:
            continue
        names.add(Path(result.path).name)
        _sync_trial(client, state, cfg, result, runs.get(Path(result.path).name), report)
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
