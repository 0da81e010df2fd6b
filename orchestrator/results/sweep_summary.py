"""After a sweep: Pareto table and plot on the parent run, registry, terminal summary."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..console import quiet_mlflow
from ..ray_tune.results import records_from_results, resume_advice, trial_name
from ..records import TrialRecord, TrialStatus
from ..redact import redact
from ..sweep.control import method_keys
from ..tracking.model_registry import Registered, register_models
from ..tracking.parent_run import SweepState, child_runs, log_parent_artifacts, log_parent_values, run_links
from .controls import GAINS, ControlReport, control_report, mark_controls
from .hypervolume import hypervolume, reference_point
from .pareto import format_table, is_valid, mark_front, plot_fronts, registry_aliases, write_table

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from ..sweep import SweepConfig

__all__ = ["Summary", "summarize", "print_summary", "HYPERVOLUME_METRIC", "TAG_REFERENCE", "TAG_CONTROL"]

HYPERVOLUME_METRIC, TAG_REFERENCE = "pareto_hypervolume", "repnas.hypervolume_reference"
TAG_CONTROL = "repnas.control"


@dataclass
class Summary:
    """What a finished sweep produced; ``advice``: what ``--resume`` will do, per failed trial;
    ``hypervolume`` of the Pareto front at ``reference`` (None without a reference point)."""

    records: list[TrialRecord]
    files: list[Path]
    registered: list[Registered] = field(default_factory=list)
    advice: dict[str, str] = field(default_factory=dict)
    hypervolume: float | None = None
    reference: list[float] | None = None
    controls: ControlReport | None = None

    @property
    def failed(self) -> list[TrialRecord]:
        """The trials that failed (Ray's errors, diverged trials, non-finite objectives)."""
        return [r for r in self.records if r.status is TrialStatus.FAILED]

    @property
    def trained(self) -> list[TrialRecord]:
        """The trials that trained (not repeats of another trial)."""
        return [r for r in self.records if r.repeat_of is None]


def _front_hypervolume(records: list[TrialRecord], cfg: SweepConfig) -> tuple[float | None, list[float] | None]:
    """(hypervolume, reference point) of the valid records' front; (None, None) without a reference."""
    reference = reference_point(cfg.objectives, records)
    if reference is None:
        return None, None
    metrics = [o.metric for o in cfg.objectives]
    points = [[r.value(m) for m in metrics] for r in records if is_valid(r, metrics)]
    return hypervolume(points, [o.mode for o in cfg.objectives], reference), reference


def summarize(results: ResultGrid, cfg: SweepConfig, state: SweepState, register: bool = True) -> Summary:
    """Pareto over the objectives -> ``pareto.csv/json/png`` on the parent run (``pareto/``)
    and in ``<storage>/<name>/pareto/`` when local; then register the chosen models (not with
    ``register=False``: an interrupted sweep registers when its resumed run completes)."""
    records = records_from_results(results, cfg, run_links(child_runs(state)))
    controls = _controls(records, cfg, state) if cfg.search.control else None
    mark_front(records, cfg.objectives)
    volume, reference = _front_hypervolume(records, cfg)
    local = "://" not in cfg.experiment_path
    out = Path(cfg.experiment_path) / "pareto" if local else Path(tempfile.mkdtemp(prefix="repnas-pareto-"))
    extra = {} if volume is None else {"hypervolume": volume, "hypervolume_reference": reference}
    files = [*write_table(records, cfg.objectives, out, extra), plot_fronts(records, cfg.objectives, out / "pareto.png")]
    log_parent_artifacts(state, files, "pareto")
    if controls is not None:
        (out / "controls.json").write_text(json.dumps(controls.to_dict(), indent=1, default=str))
        (out / "controls.md").write_text("\n".join(controls.lines()) + "\n")
        log_parent_artifacts(state, [out / "controls.json", out / "controls.md"], "controls")
    if volume is not None:
        log_parent_values(state, {HYPERVOLUME_METRIC: volume}, {TAG_REFERENCE: json.dumps(reference)})
    registered: list[Registered] = []
    if register:
        with quiet_mlflow():
            registered = register_models(cfg.mlflow.tracking_uri, cfg.registered_model_name,
                                         registry_aliases(records, cfg.objectives, cfg.mlflow.register))
    failed = {r.trial_name for r in records if r.status is TrialStatus.FAILED}
    advice = {trial_name(r): resume_advice(r) for r in results if trial_name(r) in failed}
    return Summary(records, files if local else [], registered, advice, volume, reference, controls)


def _controls(records: list[TrialRecord], cfg: SweepConfig, state: SweepState) -> ControlReport:
    """Mark the controls, each trial's gain over its control (on its child run too: tag
    ``repnas.control``, metrics ``gain_val_acc``/``gain_test_acc``), and the per-method
    comparison (on the parent run: ``control.*`` metrics)."""
    control = str(cfg.search.control)
    mark_controls(records, control, method_keys(cfg.space))
    for r in records:
        if r.run_id is not None:
            gains = {g: r.metrics[g] for g in GAINS.values() if g in r.metrics}
            log_parent_values(state, gains, {TAG_CONTROL: str(r.control).lower()}, run_id=r.run_id)
    report = control_report(records, control)
    log_parent_values(state, report.parent_metrics(), {TAG_CONTROL: control})
    return report


def print_summary(summary: Summary, cfg: SweepConfig, state: SweepState) -> None:
    """Pareto table, registered models and where everything was written."""
    print(f"\n=== sweep {cfg.name!r}: {len(summary.records)} trials; Pareto front (*) over "
          f"{', '.join(f'{o.metric} ({o.mode})' for o in cfg.objectives)} ===")
    print(format_table(summary.records, cfg.objectives))
    for r in summary.failed:
        print(f"  ! {r.trial_name}: {r.error}")
        if r.trial_name in summary.advice:
            print(f"    {summary.advice[r.trial_name]}")
    if summary.controls is not None:
        print()
        print("\n".join(summary.controls.lines()))
    trained, repeats = summary.trained, len(summary.records) - len(summary.trained)
    cost = sum(r.value("train_seconds") for r in trained if math.isfinite(r.value("train_seconds")))
    gpus = sum(r.value("gpu_seconds") for r in trained if math.isfinite(r.value("gpu_seconds")))
    print(f"\ncost: {len(trained)} trial(s) trained in {cost:.0f} s" + (f" ({gpus:.0f} GPU-seconds)" if gpus else "")
          + (f"; {repeats} repeated configuration(s) not trained again" if repeats else ""))
    if summary.hypervolume is not None:
        print(f"Pareto hypervolume: {summary.hypervolume:.6g} (reference point {summary.reference})")
    else:
        lacking = [o.metric for o in cfg.objectives if reference_point([o], summary.records) is None]
        print(f"Pareto hypervolume: not computed ({', '.join(lacking)} has no natural worst value: "
              "give it a reference in search.objectives)")
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
