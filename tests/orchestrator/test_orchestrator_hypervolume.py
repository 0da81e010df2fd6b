"""The Pareto front's hypervolume: exact against counting unit cells, modes, the reference point."""

from __future__ import annotations

import itertools
import random

import pytest

from orchestrator.records import TrialRecord, TrialStatus
from orchestrator.results.hypervolume import hypervolume, reference_point
from orchestrator.sweep import Objective


def _cells(points: list[list[int]], reference: list[int]) -> int:
    """Brute force (minimisation): the unit cells between 0 and the reference some point dominates."""
    ranges = [range(r) for r in reference]
    return sum(any(all(p_i <= c_i for p_i, c_i in zip(p, cell)) for p in points) for cell in itertools.product(*ranges))


@pytest.mark.parametrize("dims", [1, 2, 3, 4])
def test_exact_against_counting_cells(dims: int) -> None:
    rng = random.Random(dims)
    for _ in range(20):
        reference = [6] * dims
        points = [[rng.randint(0, 6) for _ in range(dims)] for _ in range(rng.randint(0, 7))]
        assert hypervolume(points, ["min"] * dims, reference) == _cells(points, reference)


def test_maximised_objectives_and_points_beyond_the_reference() -> None:
    # val_acc (max, reference 0) and branches_kept (min, reference 20): 0.9 x (20 - 10) + 0.8 x (10 - 5)
    assert hypervolume([[0.9, 10], [0.8, 5]], ["max", "min"], [0.0, 20]) == pytest.approx(13.0)
    assert hypervolume([[0.9, 10], [0.8, 5], [0.7, 12]], ["max", "min"], [0.0, 20]) == pytest.approx(13.0)  # dominated
    assert hypervolume([[0.9, 25]], ["max", "min"], [0.0, 20]) == 0.0  # worse than the reference: adds nothing
    assert hypervolume([], ["max"], [0.0]) == 0.0


def _record(total: float, **metrics: float) -> TrialRecord:
    return TrialRecord("t", "t", TrialStatus.FINISHED, metrics={"branches_total": total, **metrics})


def test_the_reference_point_never_comes_from_the_sweeps_results() -> None:
    records = [_record(30.0, val_acc=0.9, branches_kept=10.0, train_seconds=50.0)]
    acc, kept = Objective("val_acc", "max"), Objective("branches_kept", "min")
    assert reference_point([acc, kept], records) == [0.0, 30.0]  # natural worst; the host's candidate count
    assert reference_point([acc, Objective("train_seconds", "min")], records) is None  # no natural worst
    assert reference_point([acc, Objective("train_seconds", "min", reference=600.0)], records) == [0.0, 600.0]
    assert reference_point([Objective("val_acc", "max", reference=0.5)], records) == [0.5]
