"""``ray_tune.realign`` on Ray's own search classes and snapshot format (no cluster, fast): a
searcher state saved ahead of the experiment snapshot (a driver killed while Ray copied the two
to storage) proposes the lost points again and counts only the snapshot's trials; one saved
behind it proposes no point twice, and the completion of a trial it never proposed reaches it.
For a grid (the list behind the repeat check, under Tune's concurrency limit) and for Optuna
with a control after each proposal. CI caught the grid case: a sweep resumed one trial short."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from ray import tune
from ray.tune import PlacementGroupFactory
from ray.tune.experiment import Trial
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.serialization import TuneFunctionEncoder

from orchestrator.ray_tune import adapter as ray_adapter
from orchestrator.ray_tune.controls import ControlPairer
from orchestrator.ray_tune.realign import AlignedSearch
from orchestrator.ray_tune.repeats import RepeatSkipper
from orchestrator.ray_tune.searchers import VariantList
from trainables.config.metrics import FINAL_METRICS

POINTS = [{"search.budget": b} for b in (0.2, 0.5, 0.75)]


def _done(val: float) -> dict[str, Any]:
    """The last result of a trial that finished (Ray's keys and every final metric)."""
    return {"training_iteration": 4, "done": True, **{k: 1.0 for k in FINAL_METRICS}, "val_acc": val}


def _snapshot(folder: Path, trials: list[tuple[str, dict[str, Any], dict[str, Any] | None]]) -> None:
    """An experiment snapshot as Tune writes it, holding ``(trial id, config, last result or None
    while it runs)`` in creation order."""
    data = []
    for trial_id, config, result in trials:
        trial = Trial("repnas_trial", config=config, trial_id=trial_id, stub=True,
                      placement_group_factory=PlacementGroupFactory([{"CPU": 1}]))
        trial.create_placement_group_factory()
        if result is not None:
            trial.run_metadata.last_result = result
            trial.status = Trial.TERMINATED
        data.append(trial.get_json_state())
    state = {"trial_data": data, "runner_data": {}, "stats": {}}
    (folder / f"{ray_adapter.SNAPSHOT_PREFIX}2026-12-06_00-00-00{ray_adapter.SNAPSHOT_SUFFIX}").write_text(
        json.dumps(state, cls=TuneFunctionEncoder))


def _grid() -> AlignedSearch:
    search = AlignedSearch(ConcurrencyLimiter(RepeatSkipper(VariantList(POINTS)), 3))
    search._total_samples = len(POINTS)  # what Tune sets from num_samples
    return search


def _suggest(search: AlignedSearch, trial_id: str) -> dict[str, Any] | None:
    """What Tune does when it creates a trial: ask, and count it."""
    config = search.searcher.suggest(trial_id)
    if config is not None:
        ray_adapter.set_generated_count(search, ray_adapter.generated_count(search) + 1)
    return config


def _restored(saved: AlignedSearch, folder: Path, fresh: AlignedSearch) -> AlignedSearch:
    saved.save_to_dir(str(folder), "s")
    fresh.restore_from_dir(str(folder))
    return fresh


def test_a_grid_state_ahead_of_the_snapshot_proposes_the_lost_point_again(tmp_path: Path, capsys) -> None:
    search = _grid()
    assert [_suggest(search, i) for i in "ab"] == POINTS[:2]
    search.searcher.on_trial_complete("a", _done(0.7))
    assert _suggest(search, "c") == POINTS[2]  # the third trial: in the searcher's state, not in the snapshot
    _snapshot(tmp_path, [("a", POINTS[0], _done(0.7)), ("b", POINTS[1], None)])
    restored = _restored(search, tmp_path, _grid())
    assert ray_adapter.generated_count(restored) == 2 and not restored.is_finished()
    assert "counts 3 trial(s), the experiment snapshot 2" in capsys.readouterr().err
    assert restored.searcher.live_trials == {"b"}
    assert _suggest(restored, "d") == POINTS[2]  # lost, proposed again
    assert _suggest(restored, "e") is None and ray_adapter.generated_count(restored) == 3


def test_a_grid_state_behind_the_snapshot_proposes_no_point_twice(tmp_path: Path) -> None:
    search = _grid()
    assert _suggest(search, "a") == POINTS[0]
    _snapshot(tmp_path, [("a", POINTS[0], _done(0.7)), ("b", POINTS[1], None)])  # b: unknown to the state
    restored = _restored(search, tmp_path, _grid())
    assert ray_adapter.generated_count(restored) == 2 and restored.searcher.live_trials == {"b"}
    skipper = restored.searcher.searcher
    assert _suggest(restored, "c") == POINTS[2]  # not POINTS[1] a second time
    assert _suggest(restored, "d") is None
    restored.searcher.on_trial_complete("b", _done(0.8))  # the limiter forwards b's end to the repeat check
    assert len(skipper.finished) == 2 and not skipper.running.keys() - {skipper._key(POINTS[2])}


def test_a_consistent_state_is_left_as_it_was(tmp_path: Path, capsys) -> None:
    search = _grid()
    assert [_suggest(search, i) for i in "ab"] == POINTS[:2]
    _snapshot(tmp_path, [("a", POINTS[0], None), ("b", POINTS[1], None)])
    restored = _restored(search, tmp_path, _grid())
    assert "resume:" not in capsys.readouterr().err
    assert restored.searcher.searcher.running == search.searcher.searcher.running
    assert _suggest(restored, "c") == POINTS[2]


SPACE = {"search.budget": tune.choice([0.2, 0.5]), "optim.lr": tune.loguniform(0.05, 0.2)}


def _optuna() -> AlignedSearch:
    inner = ControlPairer(OptunaSearch(metric="val_acc", mode="max", sampler=optuna.samplers.RandomSampler(seed=0)),
                          "plain")
    search = AlignedSearch(ConcurrencyLimiter(RepeatSkipper(inner), 2))
    assert search.searcher.set_search_properties(None, None, dict(SPACE))
    return search


def _study(search: AlignedSearch) -> optuna.Study:
    return search.searcher.searcher.searcher.searcher._ot_study


@pytest.mark.parametrize("lost", ["control", "proposal and control"])
def test_an_optuna_state_ahead_of_the_snapshot(lost: str, tmp_path: Path) -> None:
    """A lost control is proposed again; a lost proposal fails in the study and its control is dropped."""
    search = _optuna()
    first = _suggest(search, "a")
    control = _suggest(search, "b")
    assert control == {**first, "search.method": "plain"}
    if lost == "control":
        _snapshot(tmp_path, [("a", first, None)])
    else:
        search.searcher.on_trial_complete("a", _done(0.7))
        search.searcher.on_trial_complete("b", _done(0.6))
        assert _suggest(search, "c") not in (None, control)
        _snapshot(tmp_path, [("a", first, _done(0.7)), ("b", control, _done(0.6))])
    restored = _restored(search, tmp_path, _optuna())
    after = _suggest(restored, "d")
    states = [t.state for t in _study(restored).trials]
    if lost == "control":
        assert after == control and states == [optuna.trial.TrialState.RUNNING]
    else:
        assert after not in (None, control) and "search.method" not in after  # a new proposal, no stale control
        assert states[:2] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]


def test_an_optuna_state_behind_the_snapshot_adopts_the_proposal(tmp_path: Path) -> None:
    """A proposal the saved study never made joins it, and its result reaches the study."""
    search = _optuna()
    ahead = _optuna()
    first = _suggest(ahead, "a")
    control = _suggest(ahead, "b")
    ahead.searcher.on_trial_complete("a", _done(0.7))
    ahead.searcher.on_trial_complete("b", _done(0.6))
    second = _suggest(ahead, "c")
    assert second is not None and "search.method" not in second
    assert _suggest(search, "a") == first  # the saved state: only a
    _snapshot(tmp_path, [("a", first, _done(0.7)), ("b", control, _done(0.6)), ("c", second, None)])
    restored = _restored(search, tmp_path, _optuna())
    assert ray_adapter.generated_count(restored) == 3 and restored.searcher.live_trials == {"c"}
    assert _suggest(restored, "d") == {**second, "search.method": "plain"}  # c's control, not a's again
    restored.searcher.on_trial_complete("c", _done(0.9))
    study = _study(restored)
    assert sorted(t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE) == [0.7, 0.9]
    assert {t.params["search.budget"] for t in study.trials} == {first["search.budget"], second["search.budget"]}
