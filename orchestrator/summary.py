"""After a sweep: Pareto table and plot on the parent run, registry, terminal summary."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .pareto import format_table, mark_front, plot_fronts, write_table
from .records import TrialRecord, records_from_results
from .redact import redact
from .registry import Registered, register_models
from .tracking import TAG_MODEL_URI, SweepState, child_runs, log_parent_artifacts

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from .config import SweepConfig

__all__ = ["Summary", "summarize", "print_summary"]


@dataclass
class Summary:
    """What a finished sweep produced."""

    records: list[TrialRecord]
    files: list[Path]
    registered: list[Registered] = field(default_factory=list)


def _attach_runs(records: list[TrialRecord], state: SweepState) -> None:
    runs = child_runs(state)
    for r in records:
        run = runs.get(r.trial_name)
        if run is not None:
            r.run_id = run.info.run_id
            r.model_uri = run.data.tags.get(TAG_MODEL_URI)


def summarize(results: ResultGrid, cfg: SweepConfig, state: SweepState) -> Summary:
    """Pareto over the objectives -> ``pareto.csv/json/png`` on the parent run (``pareto/``)
    and in ``<storage>/<name>/pareto/`` when local; then register the chosen models."""
    records = records_from_results(results, cfg)
    _attach_runs(records, state)
    mark_front(records, cfg.objectives)
    local = "://" not in cfg.experiment_path
    out = Path(cfg.experiment_path) / "pareto" if local else Path(tempfile.mkdtemp(prefix="repnas-pareto-"))
    files = [*write_table(records, cfg.objectives, out), plot_fronts(records, cfg.objectives, out / "pareto.png")]
    log_parent_artifacts(state, files, "pareto")
    registered = register_models(cfg.mlflow.tracking_uri, cfg.registered_model_name, records,
                                 cfg.objectives, cfg.mlflow.register)
    return Summary(records, files if local else [], registered)


def print_summary(summary: Summary, cfg: SweepConfig, state: SweepState) -> None:
    """Pareto table, registered models and where everything was written."""
    print(f"\n=== sweep {cfg.name!r}: {len(summary.records)} trials; Pareto front (*) over "
          f"{', '.join(f'{o.metric} ({o.mode})' for o in cfg.objectives)} ===")
    print(format_table(summary.records, cfg.objectives))
    failed = [r for r in summary.records if r.error]
    for r in failed:
        print(f"  ! {r.trial_name}: {r.error}")
        if r.resume:
            print(f"    {r.resume}")
    if summary.registered:
        print(f"\nregistered model {cfg.registered_model_name!r}:")
        for reg in summary.registered:
            print(f"  version {reg.version} <- {reg.trial_name}  aliases: {', '.join(reg.aliases) or '-'}")
    uri = redact(cfg.mlflow.tracking_uri)  # never print credentials
    print(f"\nRay Tune results: {cfg.experiment_path}")
    if summary.files:
        print(f"Pareto table/plot: {summary.files[0].parent}")
    print(f"MLflow: {uri} (experiment {cfg.experiment_name!r}, parent run {state.parent_run_id})")
    if uri.startswith(("http://", "https://")):
        print(f"  open {uri} in a browser")
    else:
        print(f"  view it with: mlflow ui --backend-store-uri {uri}")
