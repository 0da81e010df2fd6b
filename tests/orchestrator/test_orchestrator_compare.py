"""Method comparison over seeds: grouping, validation-based selection, equal-count verdicts."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats

from orchestrator.results.method_stats import (
    equal_count_verdicts,
    form_verdicts,
    group_records,
    method_label,
    reference_verdicts,
    select_best,
    target_count,
)
from orchestrator.records import TrialRecord, TrialStatus


def _record(name: str, method: str, lr: float, seed: int, val: float, test: float, kept: int,
            budget: int | float | None = None, **extra: float) -> TrialRecord:
    config = {"search.method": method, "optim.lr": lr, "seed": seed}
    if budget is not None:
        config["search.budget"] = budget
    metrics = {"val_acc": val, "test_acc": test, "branches_kept": kept, "branches_total": 30.0, "done": 1.0, **extra}
    return TrialRecord(trial_id=name, trial_name=name, status=TrialStatus.FINISHED, config=config, metrics=metrics)


def test_method_labels_and_target_counts() -> None:
    assert method_label({"search.method": "dbb", "search.budget": 0.34}) == "dbb"
    assert method_label({"search.method": "odbb", "search.budget": 20}) == "odbb k=20"
    assert method_label({"search.method": "odbb", "search.budget": 0.34}) == "odbb ρ=0.34"
    assert method_label({"search.method": ["kxk", "1x1"]}) == "kxk+1x1"
    assert method_label({"search.method": "odbb", "search.budget": 20, "search.epochs": 14,
                         "search.arch_lr": 0.01, "optim.lr": 0.2}) == "odbb k=20 arch_lr=0.01 epochs=14"
    short = {"search.method": "odbb", "search.budget": 48, "search.preset": "short", "search.two_stage": True,
             "search.arch_lr": "auto", "search.search_epochs": 2}  # the preset's values are implied, not listed
    assert method_label(short) == "odbb k=48 preset=short search_epochs=2"
    assert target_count(_record("a", "odbb", 0.1, 0, 0.9, 0.9, kept=12, budget=0.34)) == 10  # floor(30 * 0.34)
    assert target_count(_record("b", "odbb", 0.1, 0, 0.9, 0.9, kept=6, budget=5)) == 5  # fallbacks kept one more
    assert target_count(_record("c", "dbb", 0.1, 0, 0.9, 0.9, kept=20)) == 20


def test_groups_select_on_validation_and_compare_at_equal_count() -> None:
    odbb_test = [0.91, 0.92, 0.93]
    dbb_test = [0.88, 0.885, 0.89]
    records = [
        # dbb: lr 0.2 wins on validation although lr 0.05 has the better test accuracy
        *(_record(f"dbb-a{s}", "dbb", 0.05, s, val=0.80, test=0.99, kept=20) for s in range(3)),
        *(_record(f"dbb-b{s}", "dbb", 0.2, s, val=0.85, test=dbb_test[s], kept=20) for s in range(3)),
        *(_record(f"odbb{s}", "odbb", 0.2, s, val=0.90, test=odbb_test[s], kept=20, budget=20) for s in range(3)),
        _record("plain0", "plain", 0.2, 0, val=0.8, test=0.8, kept=5),
        _record("odbb5", "odbb", 0.2, 0, val=0.8, test=0.81, kept=6, budget=5),
        _record("crashed", "odbb", 0.2, 3, val=0.99, test=0.99, kept=20, budget=20),
    ]
    records[-1].status, records[-1].error = TrialStatus.FAILED, "RuntimeError: boom"
    groups = group_records(records, ["test_acc", "val_acc"])
    assert [(g.method, g.tuned["optim.lr"], g.n) for g in groups] == [
        ("plain", 0.2, 1), ("odbb k=5", 0.2, 1), ("dbb", 0.05, 3), ("dbb", 0.2, 3), ("odbb k=20", 0.2, 3)]
    best = select_best(groups, "val_acc")
    assert {(g.method, g.tuned["optim.lr"]) for g in best} == {("plain", 0.2), ("odbb k=5", 0.2), ("dbb", 0.2),
                                                              ("odbb k=20", 0.2)}
    dbb = next(g for g in best if g.method == "dbb")
    assert dbb.mean("test_acc") == pytest.approx(statistics.fmean(dbb_test))
    assert dbb.std("test_acc") == pytest.approx(statistics.stdev(dbb_test))
    verdicts = {v.fixed.method: v for v in equal_count_verdicts(best, "test_acc")}
    assert set(verdicts) == {"dbb", "plain"}
    v = verdicts["dbb"]
    assert v.searched.method == "odbb k=20" and v.difference == pytest.approx(0.035)
    assert v.p_value == pytest.approx(stats.ttest_ind(odbb_test, dbb_test, equal_var=False).pvalue)
    assert v.stderr == pytest.approx(math.sqrt(statistics.variance(odbb_test) / 3 + statistics.variance(dbb_test) / 3))
    assert v.outcome == "better" and "odbb k=20 is better" in v.line()
    assert verdicts["plain"].outcome.startswith("undecided")


def test_no_significant_difference() -> None:
    records = [*(_record(f"d{s}", "dbb", 0.1, s, 0.9, t, kept=20) for s, t in enumerate([0.90, 0.92, 0.88])),
               *(_record(f"o{s}", "odbb", 0.1, s, 0.9, t, kept=20, budget=20) for s, t in enumerate([0.91, 0.89, 0.90]))]
    (verdict,) = equal_count_verdicts(select_best(group_records(records, ["test_acc", "val_acc"]), "val_acc"), "test_acc")
    assert verdict.p_value > 0.05 and verdict.outcome.startswith("not significantly different")


def test_every_searched_variant_meets_the_fixed_method_of_its_count() -> None:
    records = [*(_record(f"d{s}", "dbb", 0.1, s, 0.9, 0.9, kept=20) for s in range(2)),
               *(_record(f"o{s}", "odbb", 0.1, s, 0.9, 0.8, kept=20, budget=20) for s in range(2))]
    for s in range(2):
        records.append(_record(f"f{s}", "odbb", 0.1, s, 0.9, 0.95, kept=20, budget=20))
        records[-1].config["search.arch_lr"] = 0.01
    verdicts = equal_count_verdicts(select_best(group_records(records, ["test_acc", "val_acc"]), "val_acc"), "test_acc")
    assert sorted((v.searched.method, v.fixed.method) for v in verdicts) == [
        ("odbb k=20", "dbb"), ("odbb k=20 arch_lr=0.01", "dbb")]


def test_online_form_is_its_own_method_compared_with_its_offline_form() -> None:
    """``model.reparam: online`` labels a method ``... online`` (never a tuned key); searched and
    fixed methods meet within one form; each online method meets its offline form (Welch)."""
    records = []
    for i, (method, budget, reparam, tests) in enumerate([
            ("dbb", None, "offline", [0.890, 0.892, 0.894]), ("dbb", None, "online", [0.900, 0.902, 0.903]),
            ("odbb", 20, "offline", [0.870, 0.875, 0.872]), ("odbb", 20, "online", [0.895, 0.896, 0.899])]):
        for seed, test in enumerate(tests):
            r = _record(f"t{i}{seed}", method, 0.2, seed, test, test, 20, budget)
            if reparam == "online":
                r.config["model.reparam"] = "online"
            records.append(r)
    assert method_label(records[3].config) == "dbb online" and method_label(records[0].config) == "dbb"
    groups = group_records(records, ["test_acc", "val_acc"])
    assert all(g.tuned == {"optim.lr": 0.2} for g in groups)
    best = select_best(groups, "val_acc")
    assert {(g.method, g.reparam) for g in best} == {("dbb", "offline"), ("dbb online", "online"),
                                                    ("odbb k=20", "offline"), ("odbb k=20 online", "online")}
    pairs = {(v.searched.method, v.fixed.method) for v in equal_count_verdicts(best, "test_acc")}
    assert pairs == {("odbb k=20", "dbb"), ("odbb k=20 online", "dbb online")}
    forms = {(v.searched.method, v.fixed.method): v for v in form_verdicts(best, "test_acc")}
    assert set(forms) == {("dbb online", "dbb"), ("odbb k=20 online", "odbb k=20")}
    v = forms[("dbb online", "dbb")]
    expected = stats.ttest_ind([0.900, 0.902, 0.903], [0.890, 0.892, 0.894], equal_var=False).pvalue
    assert v.p_value == pytest.approx(expected) and v.difference == pytest.approx(statistics.fmean([0.900, 0.902, 0.903]) - 0.892)
    assert v.outcome == "better"


def test_reference_verdicts_meet_a_named_method_at_any_branch_count() -> None:
    """``--versus dbb``: ODBB at RepVGG's count against DBB, in the same training form only."""
    odbb_test, dbb_test = [0.90, 0.91, 0.92], [0.88, 0.89, 0.885]
    records = [*(_record(f"d{s}", "dbb", 0.1, s, 0.9, t, kept=20) for s, t in enumerate(dbb_test)),
               *(_record(f"o{s}", "odbb", 0.1, s, 0.9, t, kept=10, budget=10) for s, t in enumerate(odbb_test)),
               *(_record(f"p{s}", "plain", 0.1, s, 0.9, 0.8, kept=5) for s in range(3))]
    online = _record("on", "odbb", 0.1, 0, 0.9, 0.9, kept=10, budget=10)
    online.config["model.reparam"] = "online"  # no online dbb to meet
    best = select_best(group_records([*records, online], ["test_acc", "val_acc"]), "val_acc")
    assert not [v for v in equal_count_verdicts(best, "test_acc") if v.fixed.method == "dbb"]
    (v,) = reference_verdicts(best, "test_acc", "dbb")
    assert (v.searched.method, v.fixed.method) == ("odbb k=10", "dbb")
    assert v.difference == pytest.approx(statistics.fmean(odbb_test) - statistics.fmean(dbb_test))
    assert v.p_value == pytest.approx(stats.ttest_ind(odbb_test, dbb_test, equal_var=False).pvalue)
    assert "at 10 vs 20 branches" in v.line() and v.outcome == "better"
    assert reference_verdicts(best, "test_acc", "acnet") == []
