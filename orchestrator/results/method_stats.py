"""Compare search methods across seeds: pure functions over :class:`TrialRecord` lists.

A *method* is what the ``search.*`` keys of a trial set (``dbb``, ``odbb k=20``); trials
of one method differ in the replicate key (``seed``) and in *tuned* keys (every other
sampled key, e.g. ``optim.lr``). Per method and tuned setting: mean and standard
deviation over replicates; per method: the tuned setting with the best mean validation
metric (the test metric never selects anything); then equal-branch-count verdicts of
the searched method against each fixed one. No Ray, no MLflow.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainables.config.presets import RECIPE_PRESETS

from ..records import TrialRecord

__all__ = ["GroupStats", "Verdict", "method_label", "target_count", "group_records", "select_best", "form_verdicts",
           "equal_count_verdicts", "fixed_methods", "reference_verdicts", "compare"]

SEARCHED = "odbb"


_METHOD_KEYS = ("search.method", "search.budget")
_REPARAM_KEY = "model.reparam"


def method_label(config: Mapping[str, Any]) -> str:
    """``plain`` / ``dbb`` / ``odbb k=20`` / ``odbb ρ=0.34`` / ``1x1+kxk`` from flat trial keys,
    followed by any other ``search.*`` key present (``odbb k=20 arch_lr=0.01``; a key at the
    value its ``search.preset`` gives it is left out: ``odbb k=48 preset=short``) and by
    ``online`` for the online training form (``dbb online``)."""
    method = config.get("search.method", SEARCHED)
    budget = config.get("search.budget")
    if isinstance(method, (list, tuple)):
        label = "+".join(map(str, method))
    elif method != SEARCHED:
        label = str(method)
    elif isinstance(budget, int) and not isinstance(budget, bool):
        label = f"{SEARCHED} k={budget}"
    else:
        label = f"{SEARCHED} ρ={budget:g}" if isinstance(budget, float) else SEARCHED
    implied = {f"search.{k}": v for k, v in RECIPE_PRESETS.get(str(config.get("search.preset")), {}).items()}
    extras = [f"{k.split('.', 1)[1]}={config[k]}" for k in sorted(config)
              if k.startswith("search.") and k not in _METHOD_KEYS and (k not in implied or implied[k] != config[k])]
    if config.get(_REPARAM_KEY, "offline") != "offline":
        extras.append(str(config[_REPARAM_KEY]))
    return " ".join([label, *extras])


def target_count(record: TrialRecord) -> int:
    """The branch count a trial is meant to keep: the budget for a search (k, or ⌊Nρ⌋),
    what it kept for a fixed method."""
    budget = record.config.get("search.budget")
    if record.config.get("search.method", SEARCHED) == SEARCHED and isinstance(budget, (int, float)):
        if isinstance(budget, float):
            return math.floor(record.value("branches_total") * budget + 1e-9)
        return int(budget)
    return int(record.value("branches_kept"))


@dataclass
class GroupStats:
    """One method at one tuned setting, over its replicates."""

    method: str
    tuned: dict[str, Any]
    searched: bool
    target_branches: int
    reparam: str = "offline"  # the training form (``model.reparam``); part of the method, not tuned
    trials: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Replicates (finished trials)."""
        return len(self.trials)

    def mean(self, metric: str) -> float:
        """Mean over replicates (NaN without values)."""
        xs = self.values.get(metric, [])
        return statistics.fmean(xs) if xs else math.nan

    def std(self, metric: str) -> float:
        """Sample standard deviation over replicates (NaN below two values)."""
        xs = self.values.get(metric, [])
        return statistics.stdev(xs) if len(xs) > 1 else math.nan


def group_records(records: Sequence[TrialRecord], metrics: Sequence[str], replicate_key: str = "seed",
                  tuned_keys: Sequence[str] | None = None) -> list[GroupStats]:
    """Mean/std groups of the finished trials that trained (repeats are not new replicates), one
    per method and tuned setting.

    ``tuned_keys``: the sampled keys other than ``search.*`` and ``replicate_key``
    (default: every such key found in the records' configs).
    """
    finished = [r for r in records if r.finished and r.repeat_of is None]  # a repeat is no new replicate
    if tuned_keys is None:
        tuned_keys = sorted({k for r in finished for k in r.config
                             if not k.startswith("search.") and k not in (replicate_key, _REPARAM_KEY)})
    groups: dict[tuple[str, tuple[Any, ...]], GroupStats] = {}
    for r in sorted(finished, key=lambda r: r.trial_name):
        tuned = {k: r.config.get(k) for k in tuned_keys}
        label = method_label(r.config)
        key = (label, tuple(repr(v) for v in tuned.values()))
        g = groups.setdefault(key, GroupStats(label, tuned, r.config.get("search.method", SEARCHED) == SEARCHED,
                                              target_count(r), str(r.config.get(_REPARAM_KEY, "offline"))))
        g.trials.append(r.trial_name)
        for m in metrics:
            if math.isfinite(r.value(m)):
                g.values.setdefault(m, []).append(r.value(m))
    return sorted(groups.values(), key=lambda g: (g.target_branches, g.searched, g.method, repr(g.tuned)))


def select_best(groups: Sequence[GroupStats], by: str, mode: str = "max") -> list[GroupStats]:
    """Per method, the tuned setting with the best mean ``by`` (ties: the first)."""
    best: dict[str, GroupStats] = {}
    sign = 1.0 if mode == "max" else -1.0
    for g in groups:
        score = sign * g.mean(by)
        if math.isnan(score):
            continue
        if g.method not in best or score > sign * best[g.method].mean(by):
            best[g.method] = g
    return [g for g in groups if best.get(g.method) is g]


@dataclass
class Verdict:
    """The searched method against a fixed one at the same branch count."""

    searched: GroupStats  # the method under test (a search; an online form in ``form_verdicts``)
    fixed: GroupStats     # the reference (a fixed method; the offline form in ``form_verdicts``)
    metric: str
    difference: float  # searched mean - fixed mean
    stderr: float      # of the difference (Welch)
    p_value: float     # Welch's t-test, two-sided (NaN when undefined); decides the outcome at 5%

    @property
    def outcome(self) -> str:
        """``better`` / ``worse`` when Welch's test rejects equal means at 5%, else no difference."""
        if not math.isfinite(self.p_value):
            return "undecided (fewer than 2 replicates each)"
        if self.p_value >= 0.05:
            return f"not significantly different (p={self.p_value:.2f})"
        return "better" if self.difference > 0 else "worse"

    def line(self) -> str:
        """One sentence for the report."""
        s, f = self.searched, self.fixed
        counts = (f"{f.target_branches}" if s.target_branches == f.target_branches
                  else f"{s.target_branches} vs {f.target_branches}")
        return (f"{s.method} vs {f.method} at {counts} branches: {self.metric} "
                f"{s.mean(self.metric):.4f} ± {s.std(self.metric):.4f} vs {f.mean(self.metric):.4f} ± "
                f"{f.std(self.metric):.4f} (n={s.n}/{f.n}), difference {self.difference:+.4f} ± {self.stderr:.4f} "
                f"(Welch p={self.p_value:.2f}): {s.method} is {self.outcome}")


def _welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Standard error of mean(a) - mean(b) and the two-sided Welch p-value."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return 0.0, (1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0)
    from scipy import stats

    return se, float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def compare(a: GroupStats, b: GroupStats, metric: str) -> Verdict:
    """``a`` against ``b`` on ``metric``: difference of the means, its standard error, Welch's p."""
    se, p = _welch(a.values[metric], b.values[metric])
    return Verdict(a, b, metric, statistics.fmean(a.values[metric]) - statistics.fmean(b.values[metric]), se, p)


def equal_count_verdicts(selected: Sequence[GroupStats], metric: str) -> list[Verdict]:
    """Each fixed method against every searched method with the same target branch count and training form."""
    return [compare(match, fixed, metric)
            for fixed in selected if not fixed.searched and metric in fixed.values
            for match in selected
            if match.searched and metric in match.values
            and (match.target_branches, match.reparam) == (fixed.target_branches, fixed.reparam)]


def _base_method(g: GroupStats) -> str:
    """The method without its training form (``dbb online`` -> ``dbb``)."""
    return g.method.removesuffix(f" {g.reparam}")


def fixed_methods(groups: Sequence[GroupStats]) -> list[str]:
    """The fixed methods among ``groups``, without their training form: what ``reference_verdicts`` takes."""
    return sorted({_base_method(g) for g in groups if not g.searched})


def reference_verdicts(selected: Sequence[GroupStats], metric: str, reference: str) -> list[Verdict]:
    """Every searched method against the fixed method ``reference`` (``plain``, ``dbb``) trained
    in the same form, whatever the two branch counts (ODBB at RepVGG's count vs DBB)."""
    fixed = {g.reparam: g for g in selected if not g.searched and _base_method(g) == reference and metric in g.values}
    return [compare(g, fixed[g.reparam], metric)
            for g in selected if g.searched and metric in g.values and g.reparam in fixed]


def form_verdicts(selected: Sequence[GroupStats], metric: str) -> list[Verdict]:
    """Each method trained in another form (``dbb online``) against its offline form (``dbb``)."""
    offline = {g.method: g for g in selected if g.reparam == "offline" and metric in g.values}
    return [compare(g, offline[_base_method(g)], metric)
            for g in selected if g.reparam != "offline" and metric in g.values and _base_method(g) in offline]
