"""The control of a sweep (``search.control``): which trials are controls, each trial's gain
over its own control, and per method the gain over the controls with Welch's test.

A trial's control is the finished control trial with the same values of every key but the
method's (learning rate, seed, schedule, training form, any other sampled key): same schedule,
same seed, trained plain. Pure functions over :class:`TrialRecord` lists; no Ray, no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from ..records import TrialRecord
from .method_stats import GroupStats, Verdict, compare, group_records

__all__ = ["GAINS", "WEIGHTS_METRICS", "ControlReport", "mark_controls", "control_report"]

GAINS = {"val_acc": "gain_val_acc", "test_acc": "gain_test_acc"}
"""Compared metric -> the trial's gain over its control (metric minus the control's)."""
WEIGHTS_METRICS = ("weights_val_acc", "weights_test_acc")


def _pair_key(record: TrialRecord, method_keys: Collection[str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in record.config.items() if k not in method_keys))


def mark_controls(records: Sequence[TrialRecord], control: str,
                  method_keys: Collection[str] = ("search.method",)) -> None:
    """Set ``control`` on the control trials and the ``GAINS`` metrics of every other finished
    trial that has a finished control (its metric minus the control's): the one equal to it in
    every key but ``method_keys`` (``sweep.control.method_keys`` of the sweep's space), so a
    trial is compared at its own schedule, learning rate and seed."""
    controls = {}
    for r in records:
        r.control = r.config.get("search.method") == control
        if r.control and r.finished:
            controls[_pair_key(r, method_keys)] = r
    for r in records:
        pair = controls.get(_pair_key(r, method_keys))
        if r.control or pair is None or not r.finished:
            continue
        for metric, gain in GAINS.items():
            if math.isfinite(r.value(metric)) and math.isfinite(pair.value(metric)):
                r.metrics[gain] = r.value(metric) - pair.value(metric)


@dataclass
class ControlReport:
    """Every method at every setting against the control at that setting (``verdicts``, one per
    compared metric), and the starting weights' own accuracy (``weights``: metric -> values over
    the control trials; empty without ``model.weights``)."""

    control: str
    verdicts: list[Verdict]
    weights: dict[str, list[float]]

    def lines(self) -> list[str]:
        """The comparison as console / report lines."""
        out = [(f"against the control ({self.control}, same schedule, learning rate and seed): "
                "mean ± std over seeds, Welch p")]
        for name, values in self.weights.items():
            std = f" ± {_std(values):.4f}" if len(values) > 1 else ""
            out.append(f"  the starting weights before training: {name.removeprefix('weights_')} "
                       f"{sum(values) / len(values):.4f}{std}")
        for v in self.verdicts:
            tuned = ", ".join(f"{k}={x}" for k, x in v.searched.tuned.items())
            out.append(f"  {v.searched.method}{f' ({tuned})' if tuned else ''}: {v.metric} "
                       f"{v.searched.mean(v.metric):.4f} ± {_nan(v.searched.std(v.metric))} vs "
                       f"{v.fixed.mean(v.metric):.4f} ± {_nan(v.fixed.std(v.metric))}, gain {v.difference:+.4f} "
                       f"(n={v.searched.n}/{v.fixed.n}, Welch p={_nan(v.p_value, '.2f')})")
        if not self.verdicts:
            out.append("  no method has a finished control at its settings yet")
        return out

    def parent_metrics(self) -> dict[str, float]:
        """``control.<method>[.<setting>].<metric>_gain`` (and ``_p``) for the sweep's parent run."""
        out: dict[str, float] = {}
        for v in self.verdicts:
            name = _metric_name(v.searched)
            out[f"control.{name}.{v.metric}_gain"] = v.difference
            if math.isfinite(v.p_value):
                out[f"control.{name}.{v.metric}_p"] = v.p_value
        for metric, values in self.weights.items():
            out[f"control.{metric}"] = sum(values) / len(values)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the parent run's ``controls/controls.json``)."""
        return {"control": self.control, "weights": self.weights,
                "comparisons": [{"method": v.searched.method, "setting": v.searched.tuned, "metric": v.metric,
                                 "mean": v.searched.mean(v.metric), "std": v.searched.std(v.metric),
                                 "control_mean": v.fixed.mean(v.metric), "control_std": v.fixed.std(v.metric),
                                 "gain": v.difference, "stderr": v.stderr, "p_value": v.p_value,
                                 "n": v.searched.n, "control_n": v.fixed.n, "trials": v.searched.trials,
                                 "control_trials": v.fixed.trials} for v in self.verdicts]}


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1))


def _nan(value: float, spec: str = ".4f") -> str:
    return format(value, spec) if math.isfinite(value) else "-"


def _metric_name(group: GroupStats) -> str:
    """An MLflow-safe metric name part for a method at a setting."""
    setting = "_".join(f"{k.split('.')[-1]}{v}" for k, v in group.tuned.items())
    raw = f"{group.method}{'.' + setting if setting else ''}"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in raw)


def control_report(records: Sequence[TrialRecord], control: str, replicate_key: str = "seed") -> ControlReport:
    """Each method's groups (per setting, over ``replicate_key``) against the control's group at
    the same setting and training form, on ``val_acc`` and ``test_acc``."""
    groups = group_records(records, [*GAINS, *WEIGHTS_METRICS], replicate_key)
    controls = {(repr(g.tuned), g.reparam): g for g in groups if g.method.split(" ")[0] == control}
    verdicts = [compare(g, c, metric) for g in groups if g.method.split(" ")[0] != control
                for c in [controls.get((repr(g.tuned), g.reparam))] if c is not None
                for metric in GAINS if metric in g.values and metric in c.values]
    weights = {m: [x for c in controls.values() for x in c.values.get(m, [])] for m in WEIGHTS_METRICS}
    return ControlReport(control, verdicts, {m: v for m, v in weights.items() if v})
