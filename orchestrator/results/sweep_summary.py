"""After a sweep: Pareto table and plot on the parent run, registry, terminal summary."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..console import quiet_mlflow
from ..ray_tune.results import records_from_results, resume_advice, trial_name
from ..records import TrialRecord, TrialStatus
from ..redact import redact
from ..tracking.model_registry import Registered, register_models
from ..tracking.parent_run import SweepState, child_runs, log_parent_artifacts, run_links
from .pareto import format_table, mark_front, plot_fronts, registry_aliases, write_table

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from ..sweep import SweepConfig

__all__ = ["Summary", "summarize", "print_summary"]


@dataclass
class Summary:
    """What a finished sweep produced; ``advice``: what ``--resume`` will do, per failed trial."""

    records: list[TrialRecord]
    files: list[Path]
    registered: list[Registered] = field(default_factory=list)
    advice: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[TrialRecord]:
        """The trials that failed (Ray's errors, diverged trials, non-finite objectives)."""
        return [r for r in self.records if r.status is TrialStatus.FAILED]


def summarize(results: ResultGrid, cfg: SweepConfig, state: SweepState) -> Summary:
    """Pareto over the objectives -> ``pareto.csv/json/png`` on the parent run (``pareto/``)
    and in ``<storage>/<name>/pareto/`` when local; then register the chosen models."""
    records = records_from_results(results, cfg, run_links(child_runs(state)))
    mark_front(records, cfg.objectives)
    local = "://" not in cfg.experiment_path
    out = Path(cfg.experiment_path) / "pareto" if local else Path(tempfile.mkdtemp(prefix="repnas-pareto-"))
    files = [*write_table(records, cfg.objectives, out), plot_fronts(records, cfg.objectives, out / "pareto.png")]
    log_parent_artifacts(state, files, "pareto")
    with quiet_mlflow():
        registered = register_models(cfg.mlflow.tracking_uri, cfg.registered_model_name,
                                     registry_aliases(records, cfg.objectives, cfg.mlflow.register))
    failed = {r.trial_name for r in records if r.status is TrialStatus.FAILED}
    advice = {trial_name(r): resume_advice(r) for r in results if trial_name(r) in failed}
    return Summary(records, files if local else [], registered, advice)


def print_summary(summary: Summary, cfg: SweepConfig, state: SweepState) -> None:
    """Pareto table, registered models and where everything was written."""
    print(f"\n=== sweep {cfg.name!r}: {len(summary.records)} trials; Pareto front (*) over "
          f"{', '.join(f'{o.metric} ({o.mode})' for o in cfg.objectives)} ===")
    print(format_table(summary.records, cfg.objectives))
    for r in summary.failed:
        print(f"  ! {r.trial_name}: {r.error}")
        if r.trial_name in summary.advice:
            print(f"    {summary.advice[r.trial_name]}")
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
