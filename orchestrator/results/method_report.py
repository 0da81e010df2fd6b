"""The method-comparison report of finished sweeps, read back from MLflow
(``python -m orchestrator.report``): markdown, JSON and a plot.

For every method (the ``search.*`` keys of a trial) and setting of the other sampled keys:
mean ± std of ``--metric`` over the replicates (``seed``); per method the setting with
the best mean ``--select-by`` (validation); equal-branch-count verdicts (ODBB vs each
fixed method) and, with ``--versus``, ODBB vs a named fixed method at any count; the
fusion check of every trial (fused accuracy = supernet accuracy); and a check that the parent run's Pareto front is the front of the child runs' metrics.
Several sweeps (e.g. a follow-up that ``extends:`` the first) are pooled into one
comparison. Writes DIR/report.md, report.json, report.png and attaches them to each sweep's
parent run under ``report/``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainables.errors import ConfigError

from ..records import TrialRecord
from ..sweep import SweepConfig
from ..sweep.control import method_keys
from ..tracking.parent_run import SweepState
from ..tracking.runs import records_from_mlflow
from .method_stats import (
    GroupStats,
    Verdict,
    equal_count_verdicts,
    fixed_methods,
    form_verdicts,
    group_records,
    method_label,
    reference_verdicts,
    select_best,
)
from .controls import control_report, mark_controls
from .pareto import mark_front

__all__ = ["FusionCheck", "SweepPart", "fusion_check", "front_matches", "build_report", "plot_report", "COLUMNS",
           "DEFAULT_METRIC"]

COLUMNS: tuple[str, ...] = ("branches_kept", "val_acc", "fused_val_acc", "epoch_time_mean_s",
                            "train_seconds", "peak_memory_mb", "params_fused", "latency_fused_ms")
DEFAULT_METRIC = "test_acc"


@dataclass
class FusionCheck:
    """Fused model vs the supernet it came from, over every finished trial."""

    trials: int
    equal_accuracy: int          # fused_val_acc == val_acc exactly
    max_accuracy_gap: float      # max |fused_val_acc - val_acc|
    max_logit_diff: float        # max of fused_max_logit_diff

    @property
    def ok(self) -> bool:
        """Every fused model classifies the validation set as its supernet does."""
        return self.trials > 0 and self.equal_accuracy == self.trials


def fusion_check(records: Sequence[TrialRecord]) -> FusionCheck:
    """Compare fused and supernet validation accuracy of every finished trial."""
    done = [r for r in records if r.finished]
    gaps = [abs(r.value("fused_val_acc") - r.value("val_acc")) for r in done]
    diffs = [r.value("fused_max_logit_diff") for r in done]
    return FusionCheck(len(done), sum(g == 0.0 for g in gaps), max(gaps, default=math.nan),
                       max(diffs, default=math.nan))


def front_matches(cfg: SweepConfig, records: Sequence[TrialRecord], parent_front: set[str]) -> bool:
    """Whether the parent run's Pareto front is the front recomputed from ``records``."""
    recomputed = {r.trial_name for r in mark_front([*records], cfg.objectives) if r.pareto}
    return recomputed == parent_front


def _parent_front(state: SweepState) -> set[str] | None:
    """Trial names flagged ``pareto`` in the parent run's ``pareto/pareto.json`` (None if absent)."""
    import tempfile

    import mlflow.artifacts

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=state.parent_run_id, artifact_path="pareto/pareto.json",
                                                       dst_path=tmp, tracking_uri=state.tracking_uri)
        except Exception:  # noqa: BLE001 - a sweep that never finished has no front yet
            return None
        return {t["trial_name"] for t in json.loads(Path(path).read_text())["trials"] if t.get("pareto")}


def _cell(g: GroupStats, metric: str, digits: int = 4) -> str:
    mean, std = g.mean(metric), g.std(metric)
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else f"{mean:.{digits}f}"


def _table(groups: Sequence[GroupStats], metric: str) -> list[str]:
    tuned = sorted({k for g in groups for k in g.tuned})
    head = ["method", "branches (target)", *tuned, "n", f"{metric} mean ± std", "val_acc", "s / epoch",
            "train s", "peak MB", "params fused"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        rows.append("| " + " | ".join([
            g.method, f"{g.mean('branches_kept'):.0f} ({g.target_branches})", *(str(g.tuned.get(k)) for k in tuned),
            str(g.n), _cell(g, metric), _cell(g, "val_acc"), _cell(g, "epoch_time_mean_s", 2),
            f"{g.mean('train_seconds'):.0f}", f"{g.mean('peak_memory_mb'):.0f}", f"{g.mean('params_fused'):.0f}",
        ]) + " |")
    return rows


def _front_table(cfg: SweepConfig, records: Sequence[TrialRecord], metric: str) -> list[str]:
    """The trials on the sweep's Pareto front (recomputed from the child runs' metrics)."""
    objectives = [o.metric for o in cfg.objectives]
    shown = list(dict.fromkeys([*objectives, metric]))
    keys = sorted({k for r in records for k in r.config if not k.startswith("search.")})
    rows = ["| trial | method | " + " | ".join([*keys, *shown]) + " |", "|" + "---|" * (2 + len(keys) + len(shown))]
    front = [r for r in mark_front([*records], cfg.objectives) if r.pareto]
    for r in sorted(front, key=lambda r: (r.value("branches_kept"), r.trial_name)):
        rows.append(f"| {r.trial_name} | {method_label(r.config)} | " + " | ".join(
            [*(str(r.config.get(k)) for k in keys), *(f"{r.value(m):.4g}" for m in shown)]) + " |")
    return rows


@dataclass
class SweepPart:
    """One sweep of a report: its config, its child runs' records, its parent run's front."""

    cfg: SweepConfig
    records: list[TrialRecord]
    parent_front: set[str] | None = None

    @classmethod
    def load(cls, cfg: SweepConfig) -> tuple[SweepPart, SweepState]:
        """Read the sweep's runs from MLflow (``ConfigError`` for a sweep that never started)."""
        state = SweepState.load(cfg)
        if state is None:
            raise ConfigError("name", f"no sweep state at {SweepState.path(cfg)}; run the sweep first")
        records = records_from_mlflow(cfg, state)
        if cfg.search.control is not None:  # controls and gains, as the sweep's own summary has them
            mark_controls(records, cfg.search.control, method_keys(cfg.space))
        return cls(cfg, records, _parent_front(state)), state

    @property
    def front_matches(self) -> bool | None:
        """Whether the parent run's Pareto front is the front of ``records`` (None: no front logged)."""
        return None if self.parent_front is None else front_matches(self.cfg, self.records, self.parent_front)


def build_report(parts: Sequence[SweepPart], metric: str, select_by: str, replicate_key: str,
                 versus: Sequence[str] = ()) -> tuple[str, dict[str, Any], list[GroupStats]]:
    """The markdown report over one or more sweeps, its JSON payload and each method's selected group.

    ``versus``: fixed methods (``plain``, ``dbb``) every searched method is also compared with,
    whatever the branch counts; ``ConfigError`` for one the sweeps do not have.
    """
    records = [r for part in parts for r in part.records]
    groups = group_records(records, [metric, *COLUMNS], replicate_key)
    best = select_best(groups, select_by, "max")
    verdicts = equal_count_verdicts(best, metric)
    forms = form_verdicts(best, metric)
    fixed = fixed_methods(best)
    for ref in versus:
        if ref not in fixed:
            raise ConfigError("--versus", f"no fixed method {ref!r} in these sweeps; expected one of: {', '.join(fixed)}")
    against = {ref: reference_verdicts(best, metric, ref) for ref in versus}
    fusion = fusion_check(records)
    names = ", ".join(f"`{p.cfg.name}`" for p in parts)
    lines = [f"# Sweep{'s' if len(parts) > 1 else ''} {names}: methods compared over `{replicate_key}`", "",
             f"{len(records)} trials, {fusion.trials} finished. Per method, the setting with the best mean "
             f"`{select_by}`; `{metric}` is the fused model's. ± is the sample standard deviation over "
             f"`{replicate_key}`.", "", *_table(best, metric), "", "## Verdicts (equal branch count)", ""]
    lines += [f"- {v.line()}" for v in verdicts] or ["- no searched trial matches a fixed method's branch count"]
    for ref, vs in against.items():
        lines += ["", f"## Verdicts (against {ref}, any branch count)", "", *[f"- {v.line()}" for v in vs]]
    if forms:
        lines += ["", "## Verdicts (online vs offline re-parameterization)", "", *[f"- {v.line()}" for v in forms]]
    controlled = [p for p in parts if p.cfg.search.control is not None]
    controls = control_report([r for p in controlled for r in p.records], str(controlled[0].cfg.search.control),
                              replicate_key) if controlled else None
    if controls is not None:
        head, *rest = controls.lines()
        lines += ["", "## Against the control", "", head[0].upper() + head[1:] + ".", "", *[f"- {x.strip()}" for x in rest]]
    lines += ["", "## Checks", "",
              f"- fusion: fused val accuracy equals the supernet's in {fusion.equal_accuracy}/{fusion.trials} "
              f"trials (max gap {fusion.max_accuracy_gap:.2e}); max logit difference {fusion.max_logit_diff:.2e}"]
    for p in parts:
        m = p.front_matches
        lines.append(f"- `{p.cfg.name}`: the Pareto front in the MLflow parent run "
                     + ("was not found" if m is None else "matches" if m else "DIFFERS from")
                     + " the front recomputed from the child runs")
    for p in parts:
        lines += ["", f"## Pareto front of `{p.cfg.name}` over "
                      f"{', '.join(f'{o.metric} ({o.mode})' for o in p.cfg.objectives)}", "",
                  *_front_table(p.cfg, p.records, metric)]
    lines += ["", "## Every setting", "", *_table(groups, metric), ""]
    payload = {"sweeps": [p.cfg.name for p in parts], "metric": metric, "select_by": select_by,
               "replicate_key": replicate_key,
               "selected": [_group_json(g) for g in best], "groups": [_group_json(g) for g in groups],
               "verdicts": [_verdict_json(v) for v in verdicts],
               "form_verdicts": [_verdict_json(v) for v in forms],
               "reference_verdicts": {ref: [_verdict_json(v) for v in vs] for ref, vs in against.items()},
               "controls": controls.to_dict() if controls is not None else None,
               "fusion": {**asdict(fusion), "ok": fusion.ok},
               "pareto_front_matches": {p.cfg.name: p.front_matches for p in parts},
               "trials": [asdict(r) for r in records]}
    return "\n".join(lines), payload, best


def _verdict_json(v: Verdict) -> dict[str, Any]:
    return {"searched": v.searched.method, "fixed": v.fixed.method, "branches": v.fixed.target_branches,
            "searched_branches": v.searched.target_branches,
            "difference": v.difference, "stderr": v.stderr, "p_value": v.p_value, "outcome": v.outcome}


def _group_json(g: GroupStats) -> dict[str, Any]:
    return {"method": g.method, "tuned": g.tuned, "target_branches": g.target_branches, "n": g.n,
            "trials": g.trials, "mean": {m: g.mean(m) for m in g.values}, "std": {m: g.std(m) for m in g.values}}


def plot_report(best: Sequence[GroupStats], metric: str, path: Path) -> Path:
    """Accuracy vs branch count and vs training time per epoch, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
    variants: dict[str, list[GroupStats]] = {}  # searched groups by their extra search keys
    for g in best:
        if g.searched:
            variants.setdefault(" ".join(g.method.split(" ")[2:]), []).append(g)
    fixed = [g for g in best if not g.searched]
    for ax, x, xlabel in ((axes[0], "branches_kept", "branches kept"),
                          (axes[1], "epoch_time_mean_s", "training time per epoch (s)")):
        for i, (extra, groups) in enumerate(variants.items()):
            groups = sorted(groups, key=lambda g: g.target_branches)  # the line joins budgets in order
            shift = (i - (len(variants) - 1) / 2) * 0.35 if x == "branches_kept" else 0.0  # unhide equal counts
            ax.errorbar([g.mean(x) + shift for g in groups], [g.mean(metric) for g in groups],
                        yerr=[_zero(g.std(metric)) for g in groups], fmt="-o", capsize=3, label=f"ODBB {extra}".rstrip())
            for g in groups:
                ax.annotate(g.method.split(" ")[1], (g.mean(x) + shift, g.mean(metric)), textcoords="offset points",
                            xytext=(4, -10), fontsize=7)
        for g in fixed:  # same plotting order in both panels: the colour cycle matches them up
            ax.errorbar([g.mean(x)], [g.mean(metric)], yerr=[_zero(g.std(metric))], fmt="s", capsize=3,
                        label=g.method)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric} (mean ± std)")
        ax.set_title(f"{metric} vs {xlabel}", fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(labels) - 1) // 4), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _zero(x: float) -> float:
    return x if math.isfinite(x) else 0.0
