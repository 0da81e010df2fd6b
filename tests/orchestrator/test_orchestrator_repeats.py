"""Repeated proposals are not trained again (``ray_tune.repeats``), with a real OptunaSearch: a
proposal equal to a finished trial becomes a repeat carrying its result, one equal to a running
trial waits for it, the searcher learns every result under its own ids, and Tune's saved state
keeps it all across a restore."""

from __future__ import annotations

import pickle
from typing import Any

import optuna
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from orchestrator.ray_tune.repeats import RepeatSkipper, config_key
from trainables.config.metrics import FINAL_METRICS
from trainables.config.repeat import REPEAT_KEY, Repeat

SPACE = {"search.budget": tune.choice([0.5]), "optim.lr": tune.choice([0.1])}  # one configuration only


def _skipper(known: list[tuple[dict[str, Any], Repeat]] | None = None) -> RepeatSkipper:
    searcher = RepeatSkipper(OptunaSearch(metric="val_acc", mode="max", sampler=optuna.samplers.RandomSampler(seed=0)),
                             known or [])
    assert searcher.set_search_properties(None, None, dict(SPACE))
    return searcher


def _done(val: float) -> dict[str, Any]:
    """A finished trial's last result as Tune gives it (Ray's keys included)."""
    return {"val_acc": val, "epoch": 2.0, **{k: 1.0 for k in FINAL_METRICS}, "done": True, "training_iteration": 2,
            "trial_id": "x", "time_total_s": 3.0}


def _study(searcher: RepeatSkipper) -> optuna.Study:
    return searcher.searcher._ot_study  # the real study OptunaSearch keeps (test-only look inside)


def test_a_finished_configuration_is_repeated_with_its_result_not_trained() -> None:
    searcher = _skipper()
    first = searcher.suggest("a")
    assert first == {"search.budget": 0.5, "optim.lr": 0.1}
    searcher.on_trial_complete("a", _done(0.9))
    second = searcher.suggest("b")
    repeat = Repeat.from_dict(second.pop(REPEAT_KEY))
    assert second == first and repeat.trial == "repnas_trial_a" and repeat.metrics["val_acc"] == 0.9
    assert "training_iteration" not in repeat.metrics and "done" not in repeat.metrics  # the trial's own metrics
    searcher.on_trial_complete("b", {**repeat.metrics, "done": True})  # what the trainable reports
    values = [t.value for t in _study(searcher).trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert values == [0.9, 0.9]  # the searcher learnt both proposals' results


def test_a_proposal_equal_to_a_running_trial_waits_for_it() -> None:
    searcher = _skipper()
    assert REPEAT_KEY not in searcher.suggest("a")
    assert searcher.suggest("b") is None and searcher.suggest("c") is None  # held, not trained beside it
    assert len(searcher.held) == 2
    searcher.on_trial_complete("a", _done(0.8))
    released = searcher.suggest("d")
    assert Repeat.from_dict(released[REPEAT_KEY]).metrics["val_acc"] == 0.8 and len(searcher.held) == 1
    searcher.on_trial_complete("d", {**Repeat.from_dict(released[REPEAT_KEY]).metrics, "done": True})
    assert REPEAT_KEY in searcher.suggest("e")
    ids = {t.number: t.state for t in _study(searcher).trials}
    assert sum(s == optuna.trial.TrialState.COMPLETE for s in ids.values()) == 2  # a and the released b


def test_a_failed_original_releases_its_duplicate_to_train() -> None:
    searcher = _skipper()
    searcher.suggest("a")
    assert searcher.suggest("b") is None
    searcher.on_trial_complete("a", None, error=True)
    retry = searcher.suggest("c")
    assert REPEAT_KEY not in retry and searcher.running == {config_key(retry): "c"}


def test_known_results_of_earlier_sweeps_are_repeated() -> None:
    earlier = Repeat("repnas_trial_z", {"val_acc": 0.95}, sweep="recipe", run_id="run-z")
    searcher = _skipper([({"search.budget": 0.5, "optim.lr": 0.1}, earlier)])
    repeat = Repeat.from_dict(searcher.suggest("a")[REPEAT_KEY])
    assert repeat == earlier and repeat.label == "recipe/repnas_trial_z"


def test_the_state_tune_saves_restores_the_repeats() -> None:
    """Tune saves a wrapper's ``get_state`` and the inner searcher's ``save`` (as for its
    ConcurrencyLimiter); a restored sweep repeats what the first run finished."""
    searcher = _skipper()
    searcher.suggest("a")
    searcher.on_trial_complete("a", _done(0.7))
    state = pickle.loads(pickle.dumps(searcher.get_state()))
    restored = _skipper()
    restored.set_state(state)
    assert Repeat.from_dict(restored.suggest("b")[REPEAT_KEY]).metrics["val_acc"] == 0.7


def test_proposals_that_differ_only_in_inert_keys_are_repeats(kit: Any) -> None:
    """Compared as the trials they describe over the sweep's ``trial:``: ``random_sampling``
    cannot matter without a random phase (``trainables.config.identity.inert_keys``), so a proposal that
    differs from a finished trial only there is its repeat; with a random phase it trains."""
    earlier = Repeat("repnas_trial_u", {"val_acc": 0.93})
    for random_epochs, repeated in ((0, True), (1, False)):
        base = {**kit.TINY_TRIAL, "search": {**kit.TINY_TRIAL["search"], "random_epochs": random_epochs}}
        searcher = RepeatSkipper(OptunaSearch(metric="val_acc", mode="max", sampler=optuna.samplers.RandomSampler(seed=0)),
                                 [({"search.random_sampling": "uniform", "optim.lr": 0.1}, earlier)], base)
        assert searcher.set_search_properties(None, None, {"search.random_sampling": tune.choice(["fair"]),
                                                           "optim.lr": tune.choice([0.1])})
        assert (REPEAT_KEY in searcher.suggest("a")) is repeated
    assert config_key({"optim.lr": 0.1}, base) != config_key({"optim.lr": 0.2}, base)
    assert config_key({"optim.lr": 0.1}) == '{"optim.lr": 0.1}'  # without a base: the sampled keys as they are


def test_a_grid_that_holds_a_configuration_twice_trains_it_once() -> None:
    """Grid sweeps run through a VariantList wrapped by the repeat check: the duplicate grid point
    waits for its twin and takes its result; Tune's saved state keeps the list's position."""
    from orchestrator.ray_tune.searchers import VariantList

    points = [{"search.budget": b} for b in (0.34, 0.34, 0.5)]
    searcher = RepeatSkipper(VariantList(points))
    first, second, third = searcher.suggest("a"), searcher.suggest("b"), searcher.suggest("c")
    assert first == points[0] and second is None and third == points[2]  # the twin is held, 0.5 runs beside
    assert searcher.suggest("d") is None  # the list is used up; the twin still waits
    saved = pickle.loads(pickle.dumps(searcher.get_state()))
    searcher.on_trial_complete("a", _done(0.7))
    twin = searcher.suggest("e")
    assert Repeat.from_dict(twin.pop(REPEAT_KEY)).metrics["val_acc"] == 0.7 and twin == points[1]
    restored = RepeatSkipper(VariantList(points))
    restored.set_state(saved)
    assert restored.held and restored.suggest("f") is None  # after a restore it still waits for the original
