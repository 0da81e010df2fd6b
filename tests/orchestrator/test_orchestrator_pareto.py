"""Pure tests of the Pareto front: dominance, modes, exclusions, table and plot files."""

from __future__ import annotations

import csv
import itertools
import json
import math
import random
from pathlib import Path

import pytest

from orchestrator.sweep import Objective
from orchestrator.results.pareto import (
    best_by,
    dominates,
    format_table,
    front,
    mark_front,
    non_dominated,
    plot_fronts,
    write_table,
)
from orchestrator.records import TrialRecord, TrialStatus

ACC_BRANCHES = [Objective("val_acc", "max"), Objective("branches_kept", "min")]


def _rec(name: str, status: TrialStatus = TrialStatus.FINISHED, error: str | None = None, budget: float = 0.5,
         **metrics: float) -> TrialRecord:
    return TrialRecord(trial_id=name, trial_name=name, status=status, config={"search.budget": budget},
                       metrics=metrics, error=error)


def test_dominates_respects_modes() -> None:
    assert dominates([0.9, 10], [0.8, 12], ["max", "min"])
    assert not dominates([0.9, 10], [0.9, 10], ["max", "min"])  # equal: no
    assert not dominates([0.9, 12], [0.8, 10], ["max", "min"])  # trade-off: no
    assert dominates([0.8, 12], [0.9, 10], ["min", "max"])


def test_non_dominated_two_objectives() -> None:
    points = [[0.95, 20], [0.90, 10], [0.85, 10], [0.96, 30], [0.70, 5], [0.90, 10]]
    assert non_dominated(points, ["max", "min"]) == [True, True, False, True, True, True]


def test_non_dominated_matches_brute_force_for_three_objectives() -> None:
    rng = random.Random(0)
    modes = ["max", "min", "min"]
    points = [[rng.randint(0, 5), rng.randint(0, 5), rng.randint(0, 5)] for _ in range(60)]
    mask = non_dominated(points, modes)
    sign = [1 if m == "max" else -1 for m in modes]
    for p, on_front in zip(points, mask):
        beaten = any(all(s * q_i >= s * p_i for s, q_i, p_i in zip(sign, q, p)) and q != p for q in points)
        assert on_front == (not beaten)
    front_pts = [p for p, m in zip(points, mask) if m]
    for a, b in itertools.permutations(front_pts, 2):
        assert not dominates(a, b, modes)


def test_single_objective_front_is_the_best() -> None:
    records = [_rec("a", val_acc=0.8), _rec("b", val_acc=0.9), _rec("c", val_acc=0.9)]
    mark_front(records, [Objective("val_acc", "max")])
    assert [r.trial_name for r in records if r.pareto] == ["b", "c"]


def test_errored_missing_and_nan_trials_are_excluded() -> None:
    records = [
        _rec("good", val_acc=0.8, branches_kept=10),
        _rec("nan", val_acc=math.nan, branches_kept=1),
        _rec("inf", val_acc=0.99, branches_kept=math.inf),
        _rec("err", status=TrialStatus.FAILED, error="boom", val_acc=1.0, branches_kept=1),
        _rec("failed", status=TrialStatus.FAILED, val_acc=1.0, branches_kept=1),
        _rec("missing", val_acc=1.0),
    ]
    mark_front(records, ACC_BRANCHES)
    assert [r.trial_name for r in records if r.pareto] == ["good"]


def test_front_order_and_best_by() -> None:
    records = [_rec("a", val_acc=0.9, branches_kept=20), _rec("b", val_acc=0.8, branches_kept=5),
               _rec("c", val_acc=0.95, branches_kept=30), _rec("d", val_acc=0.7, branches_kept=25)]
    mark_front(records, ACC_BRANCHES)
    assert [r.trial_name for r in front(records, ACC_BRANCHES)] == ["c", "a", "b"]
    assert best_by(records, ACC_BRANCHES[1]).trial_name == "b"
    assert best_by([], ACC_BRANCHES[0]) is None


def test_table_and_plot_files(tmp_path: Path) -> None:
    records = [_rec(f"t{i}", budget=b, val_acc=a, branches_kept=k, latency_fused_ms=l, params_fused=p,
                    peak_memory_mb=m)
               for i, (b, a, k, l, p, m) in enumerate([(0.2, 0.8, 6, 0.3, 7e4, 812.5), (0.5, 0.9, 15, 0.4, 7e4, 1534.0),
                                                       (0.75, 0.85, 22, 0.2, 7e4, 990.25)])]
    records.append(_rec("bad", status=TrialStatus.FAILED, error="NaN loss"))
    mark_front(records, ACC_BRANCHES)
    csv_path, json_path = write_table(records, ACC_BRANCHES, tmp_path)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["trial_name"] for r in rows if r["pareto"] == "True"] == ["t0", "t1"]
    assert [r["status"] for r in rows] == ["finished"] * 3 + ["failed"]
    assert {"search.budget", "val_acc", "branches_kept", "latency_fused_ms", "run_id"} <= set(rows[0])
    payload = json.loads(json_path.read_text())
    assert payload["objectives"][0] == {"metric": "val_acc", "mode": "max"}
    assert len(payload["trials"]) == 4 and payload["trials"][3]["status"] == "failed"
    png = plot_fronts(records, ACC_BRANCHES, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = format_table(records, ACC_BRANCHES)
    assert text.splitlines()[1].startswith("*") and "bad" in text
    assert text.splitlines()[1].split()[2] == "finished" and "failed" in text.splitlines()[-1]
    header = text.splitlines()[0].split()
    assert header[-1] == "peak_memory_mb"  # packed trials: does each one's peak fit its share of the GPU?
    assert [line.split()[-1] for line in text.splitlines()[1:]] == ["812.5", "1534", "990.2", "-"]
    assert rows[1]["peak_memory_mb"] == "1534.0"


@pytest.mark.parametrize(("objectives", "panels"), [
    ([Objective("val_acc", "max")], 3),  # no second objective: val_acc vs branches, latency, params
    ([Objective("val_acc", "max"), Objective("branches_kept", "min")], 3),  # + latency, params (not objectives)
    ([Objective("val_acc", "max"), Objective("latency_fused_ms", "min"), Objective("params_fused", "min")], 3),
])
def test_plot_any_number_of_objectives(objectives: list[Objective], panels: int, tmp_path: Path) -> None:
    """One panel per (first objective, other metric) pair, each with its front drawn in red."""
    import matplotlib.image

    records = [_rec(f"t{i}", val_acc=0.5 + i / 10, branches_kept=i, latency_fused_ms=1 - i / 10,
                    params_fused=1000 + i) for i in range(4)]
    mark_front(records, objectives)
    path = plot_fronts(records, objectives, tmp_path / "p.png")
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[1] == round(5.2 * 110) * panels  # figsize 5.2 in per panel at 110 dpi
    red = (abs(pixels[..., 0] - 0.839) < 0.02) & (abs(pixels[..., 1] - 0.153) < 0.02) & (abs(pixels[..., 2] - 0.157) < 0.02)
    width = pixels.shape[1] // panels
    assert all(red[:, i * width:(i + 1) * width].sum() > 50 for i in range(panels))  # a front in every panel
