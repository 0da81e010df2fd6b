"""The hypervolume of a sweep's Pareto front: one number that compares sweeps of one file.

The volume of objective space that the front dominates, bounded by a reference point: larger
is better, and it grows whenever a sweep finds a better trade-off. The reference point must
not depend on the sweep's own results, or sweeps of one file would not compare: each
objective's ``reference`` from the sweep file, else its natural worst value (accuracies: 0;
``branches_kept``: ``branches_total``, the host's candidate count, the same in every sweep of
a file). An objective with neither (a time, a loss) needs ``reference`` in the file; without
it no hypervolume is logged. Exact for any number of objectives (dimension sweep): fronts of
tens of trials take milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from ..records import TrialRecord

__all__ = ["hypervolume", "reference_point", "NATURAL_WORST"]

NATURAL_WORST: dict[str, float] = {"val_acc": 0.0, "fused_val_acc": 0.0, "test_acc": 0.0, "train_acc": 0.0,
                                   "int8_val_acc": 0.0, "int8_test_acc": 0.0}
"""Objectives with a natural worst value (a maximised accuracy's is 0)."""
_COUNT, _TOTAL = "branches_kept", "branches_total"


class _Objective(Protocol):
    metric: str
    mode: str
    reference: float | None


def reference_point(objectives: Sequence[_Objective], records: Sequence[TrialRecord]) -> list[float] | None:
    """The reference point of ``objectives`` (see the module doc); None when one has none."""
    point = []
    for o in objectives:
        if o.reference is not None:
            point.append(float(o.reference))
        elif o.metric in NATURAL_WORST and o.mode == "max":
            point.append(NATURAL_WORST[o.metric])
        elif o.metric == _COUNT and o.mode == "min" and any(math.isfinite(r.value(_TOTAL)) for r in records):
            point.append(max(r.value(_TOTAL) for r in records if math.isfinite(r.value(_TOTAL))))
        else:
            return None
    return point


def hypervolume(points: Sequence[Sequence[float]], modes: Sequence[str], reference: Sequence[float]) -> float:
    """The volume dominated by ``points`` (each a value per objective, ``modes`` min or max) and
    bounded by ``reference``; points no better than the reference in every objective add nothing."""
    sign = [1.0 if m == "min" else -1.0 for m in modes]  # as minimisation
    ref = [s * r for s, r in zip(sign, reference)]
    inside = [[s * v for s, v in zip(sign, p)] for p in points]
    return _volume([p for p in inside if all(v < r for v, r in zip(p, ref))], ref)


def _volume(points: list[list[float]], ref: list[float]) -> float:
    """Dominated volume of minimisation ``points`` (each below ``ref`` everywhere): slices along
    the last objective, each slice the volume of the points already in it, one dimension down."""
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    points = sorted(points, key=lambda p: p[-1])
    total = 0.0
    for i, p in enumerate(points):
        top = points[i + 1][-1] if i + 1 < len(points) else ref[-1]
        if top > p[-1]:
            total += (top - p[-1]) * _volume([q[:-1] for q in points[:i + 1]], ref[:-1])
    return total
