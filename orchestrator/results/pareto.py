"""Pareto front over any number of objectives: non-dominated sort, table, plot.

Pure functions over :class:`~orchestrator.records.TrialRecord` lists (which models the
registry gets, too); no Ray, no MLflow.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from ..records import TrialRecord, TrialStatus

__all__ = [
    "dominates", "non_dominated", "is_valid", "mark_front", "front",
    "best_by", "registry_aliases", "write_table", "plot_fronts", "format_table", "TABLE_METRICS", "BUDGET_KEY",
]

BUDGET_KEY = "search.budget"  # labels the plot's points; a column of its own in the table
# Metrics shown in the table next to the objectives (when reported); peak_memory_mb tells
# whether trials packed onto one GPU (resources.gpus < 1) fit it together.
TABLE_METRICS: tuple[str, ...] = ("val_acc", "fused_val_acc", "gain_val_acc", "test_acc", "gain_test_acc",
                                  "weights_val_acc", "branches_kept", "branches_total",
                                  "params_fused", "latency_fused_ms", "epoch", "train_seconds", "gpu_seconds",
                                  "peak_memory_mb")
# Extra plot panels: primary objective against these (all minimised).
_EXTRA_X: tuple[str, ...] = ("branches_kept", "latency_fused_ms", "params_fused", "train_seconds")


class _Objective(Protocol):
    metric: str
    mode: str


def _better_or_equal(a: float, b: float, mode: str) -> bool:
    return a >= b if mode == "max" else a <= b


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` everywhere and strictly better somewhere."""
    return all(_better_or_equal(x, y, m) for x, y, m in zip(a, b, modes)) and any(
        x != y for x, y in zip(a, b))


def non_dominated(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[bool]:
    """Mask of the points no other point dominates (ties all stay on the front)."""
    return [not any(dominates(q, p, modes) for j, q in enumerate(points) if j != i)
            for i, p in enumerate(points)]


_ENDED_WITH_RESULT = (TrialStatus.FINISHED, TrialStatus.STOPPED)
"""Trials whose values stand: a running or pending trial of an interrupted sweep is not on a front."""


def is_valid(record: TrialRecord, metrics: Sequence[str]) -> bool:
    """Ended (finished, or stopped by the scheduler) without error, every metric present and finite."""
    return record.status in _ENDED_WITH_RESULT and record.error is None and all(
        math.isfinite(record.value(m)) for m in metrics)


def mark_front(records: Sequence[TrialRecord], objectives: Sequence[_Objective]) -> list[TrialRecord]:
    """Set ``pareto`` on every record (errored / NaN trials and controls are never on the front)."""
    metrics = [o.metric for o in objectives]
    valid = [r for r in records if is_valid(r, metrics) and not r.control]
    mask = non_dominated([[r.value(m) for m in metrics] for r in valid], [o.mode for o in objectives])
    for r in records:
        r.pareto = False
    for r, on_front in zip(valid, mask):
        r.pareto = on_front
    return list(records)


def _sort_key(objective: _Objective):  # noqa: ANN202 - small key factory
    sign = -1.0 if objective.mode == "max" else 1.0
    return lambda r: sign * r.value(objective.metric)


def front(records: Sequence[TrialRecord], objectives: Sequence[_Objective]) -> list[TrialRecord]:
    """The Pareto records, best first by the first objective (ties: the next ones, then name)."""
    keys = [_sort_key(o) for o in objectives]
    return sorted((r for r in records if r.pareto), key=lambda r: (*(k(r) for k in keys), r.trial_name))


def best_by(records: Sequence[TrialRecord], objective: _Objective) -> TrialRecord | None:
    """The valid record with the best value of one objective."""
    valid = [r for r in records if is_valid(r, [objective.metric])]
    key = _sort_key(objective)
    return min(valid, key=lambda r: (key(r), not r.pareto)) if valid else None


def registry_aliases(records: Sequence[TrialRecord], objectives: Sequence[_Objective],
                     which: str) -> list[tuple[TrialRecord, list[str]]]:
    """The records whose fused models to register (``which``: "pareto" | "all" | "none"; only
    records with a model) and each one's aliases: ``pareto-<i>`` in front order (best first
    objective first) and ``best-<metric>`` for each objective's best Pareto record."""
    if which == "none":
        return []
    with_model = [r for r in records if r.model_uri and r.run_id]
    chosen = front(with_model, objectives)
    if which == "all":
        chosen += [r for r in with_model if r not in chosen]
    aliases: dict[str, list[str]] = {r.trial_name: [] for r in chosen}
    for i, r in enumerate(front(with_model, objectives), start=1):
        aliases[r.trial_name].append(f"pareto-{i}")
    for obj in objectives:
        best = best_by(with_model, obj)
        if best is not None and best.trial_name in aliases:
            aliases[best.trial_name].append(f"best-{obj.metric}")
    return [(r, aliases[r.trial_name]) for r in chosen]


def _columns(records: Sequence[TrialRecord], objectives: Sequence[_Objective]) -> tuple[list[str], list[str]]:
    keys = sorted({k for r in records for k in r.config})
    metrics = list(dict.fromkeys([o.metric for o in objectives] + list(TABLE_METRICS)))
    metrics = [m for m in metrics if any(r.value(m) for r in records if m in r.metrics)]  # not all missing or 0
    return keys, metrics


def _row(r: TrialRecord, keys: list[str], metrics: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"trial_name": r.trial_name, "trial_id": r.trial_id, "status": r.status,
                           "pareto": r.pareto, "control": r.control, "budget": r.config.get(BUDGET_KEY)}
    row.update({k: r.config.get(k) for k in keys})
    row.update({m: r.metrics.get(m) for m in metrics})
    row.update({"run_id": r.run_id, "model_uri": r.model_uri, "repeat_of": r.repeat_of, "error": r.error})
    return row


def write_table(records: Sequence[TrialRecord], objectives: Sequence[_Objective], out_dir: Path,
                summary: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """``pareto.csv`` and ``pareto.json`` (all trials, with the ``pareto`` flag; ``summary``:
    sweep-level values such as the hypervolume, in the JSON)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keys, metrics = _columns(records, objectives)
    rows = [_row(r, keys, metrics) for r in records]
    csv_path, json_path = out_dir / "pareto.csv", out_dir / "pareto.json"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial_name"])
        writer.writeheader()
        writer.writerows(rows)
    payload = {"objectives": [{"metric": o.metric, "mode": o.mode} for o in objectives], **(summary or {}),
               "trials": [{**asdict(r), "budget": r.config.get(BUDGET_KEY)} for r in records]}
    json_path.write_text(json.dumps(payload, indent=2, default=str, allow_nan=True))
    return csv_path, json_path


def format_table(records: Sequence[TrialRecord], objectives: Sequence[_Objective]) -> str:
    """A fixed-width text table for the terminal, Pareto trials marked with ``*``, controls with ``control``."""
    keys, metrics = _columns(records, objectives)
    header = ["", "trial", "status", *keys, *metrics]
    lines = [[("*" if r.pareto else "control" if r.control else ""), r.trial_name, f"repeat of {r.repeat_of}" if r.repeat_of else r.status,
              *(_fmt(r.config.get(k)) for k in keys), *(_fmt(r.metrics.get(m)) for m in metrics)] for r in records]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in [header, *lines])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _panels(records: Sequence[TrialRecord], objectives: Sequence[_Objective]) -> list[tuple[Any, Any]]:
    from types import SimpleNamespace

    y = objectives[0]
    pairs = [(y, o) for o in objectives[1:]]
    for metric in _EXTRA_X:
        if metric != y.metric and all(o.metric != metric for _, o in pairs) and any(
                is_valid(r, [y.metric, metric]) for r in records):
            pairs.append((y, SimpleNamespace(metric=metric, mode="min")))
    return pairs


def plot_fronts(records: Sequence[TrialRecord], objectives: Sequence[_Objective], path: Path) -> Path:
    """PNG: one panel per (first objective, other metric) pair; every valid trial a point
    labelled with its budget, that pair's front highlighted and connected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(records, objectives) or [(objectives[0], None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for i, (ax, (yo, xo)) in enumerate(zip(axes[0], panels)):
        _panel(ax, records, yo, xo)
        swept = i < max(1, len(objectives) - 1)
        ax.set_title("front over the sweep objectives" if swept
                     else f"front of {yo.metric} vs {xo.metric if xo else 'trial'} (not an objective)", fontsize=9)
    fig.suptitle(f"Pareto front ({', '.join(f'{o.metric} {o.mode}' for o in objectives)})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panel(ax: Any, records: Sequence[TrialRecord], yo: _Objective, xo: _Objective | None) -> None:
    xm = xo.metric if xo else None
    valid = [r for r in records if is_valid(r, [yo.metric] + ([xm] if xm else []))]
    xs = [r.value(xm) if xm else i for i, r in enumerate(valid)]
    ys = [r.value(yo.metric) for r in valid]
    modes = [yo.mode] + ([xo.mode] if xo else [])
    mask = non_dominated([[y] + ([x] if xo else []) for x, y in zip(xs, ys)], modes)
    ax.scatter(xs, ys, c="lightgray", edgecolors="gray", label="trials", zorder=2)
    pts = sorted((x, y) for x, y, m in zip(xs, ys, mask) if m)
    if pts:
        ax.plot(*zip(*pts), "-o", color="tab:red", label="Pareto front", zorder=3)
    for x, y, r in zip(xs, ys, valid):
        ax.annotate(f"{r.config.get(BUDGET_KEY)}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"{xm} ({xo.mode})" if xo else "trial")
    ax.set_ylabel(f"{yo.metric} ({yo.mode})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, title="labels: budget", title_fontsize=8)
