"""``search.control`` outside a grid (``ray_tune.controls``): each proposal of a real OptunaSearch
is followed by its control, whose results Optuna never learns; the pair survives a saved state;
behind the repeat check a control equal to an earlier one is a repeat; a random sweep's list
holds the controls; and a tiny Optuna sweep with a control end to end."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from orchestrator.ray_tune.controls import ControlPairer
from orchestrator.ray_tune.repeats import RepeatSkipper
from orchestrator.ray_tune.searchers import make_searcher
from orchestrator.run import main
from orchestrator.sweep import SweepSearchConfig
from orchestrator.sweep.control import control_of
from trainables.config.metrics import FINAL_METRICS
from trainables.config.repeat import REPEAT_KEY, Repeat

SPACE = {"search.budget": tune.choice([0.2, 0.5]), "optim.lr": tune.loguniform(0.05, 0.2)}


def _optuna() -> OptunaSearch:
    return OptunaSearch(metric="val_acc", mode="max", sampler=optuna.samplers.RandomSampler(seed=0))


def _pairer(space: dict[str, Any] | None = None) -> ControlPairer:
    searcher = ControlPairer(_optuna(), "plain")
    assert searcher.set_search_properties(None, None, dict(space or SPACE))
    return searcher


def _done(val: float) -> dict[str, Any]:
    """A finished trial's last result as Tune gives it."""
    return {"val_acc": val, "epoch": 2.0, **{k: 1.0 for k in FINAL_METRICS}, "done": True, "training_iteration": 2}


def _completed(searcher: OptunaSearch) -> list[float]:
    return [t.value for t in searcher._ot_study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def test_each_proposal_is_followed_by_its_control_whose_result_optuna_never_learns() -> None:
    searcher = _pairer()
    proposal, control = searcher.suggest("a"), searcher.suggest("b")
    assert set(proposal) == {"search.budget", "optim.lr"} and REPEAT_KEY not in proposal
    assert control == {**proposal, "search.method": "plain"}
    searcher.on_trial_result("b", {"val_acc": 0.1, "training_iteration": 1})  # OptunaSearch has no trial "b"
    searcher.on_trial_complete("b", _done(0.1))
    assert _completed(searcher.searcher) == [] and not searcher.controls
    searcher.on_trial_complete("a", _done(0.9))
    assert _completed(searcher.searcher) == [0.9]
    third = searcher.suggest("c")
    assert "search.method" not in third and searcher.suggest("d")["search.method"] == "plain"


def test_a_control_due_when_the_driver_stopped_is_proposed_after_a_restore(tmp_path: Path) -> None:
    """Tune saves the wrapper's ``get_state`` and the inner searcher's ``save``: a proposal whose
    control was not yet proposed gets it after the restore, and the control's result still
    stays away from Optuna."""
    searcher = _pairer()
    proposal = searcher.suggest("a")
    state = pickle.loads(pickle.dumps(searcher.get_state()))
    searcher.save(str(tmp_path / "optuna.pkl"))
    restored = ControlPairer(_optuna(), "plain")
    restored.restore(str(tmp_path / "optuna.pkl"))
    restored.set_state(state)
    assert restored.suggest("b") == control_of(proposal, "plain") == {**proposal, "search.method": "plain"}
    restored.on_trial_complete("b", _done(0.2))
    restored.on_trial_complete("a", _done(0.8))
    assert _completed(restored.searcher) == [0.8]
    assert "search.method" not in restored.suggest("c")  # a new proposal, not the control again


def test_a_control_equal_to_an_earlier_one_is_a_repeat_behind_the_repeat_check() -> None:
    """Tune -> RepeatSkipper -> ControlPairer -> Optuna: two methods at one setting share their
    control, so the second control is a repeat, and Optuna learns only its own two trials."""
    search = SweepSearchConfig(objectives=[SweepSearchConfig().objectives[0]], control="plain")
    searcher = make_searcher(search)
    assert isinstance(searcher, RepeatSkipper) and isinstance(searcher.searcher, ControlPairer)
    assert isinstance(searcher.searcher.searcher, OptunaSearch)
    space = {"search.method": tune.choice(["dbb", "odbb"]), "optim.lr": tune.choice([0.1])}
    assert searcher.set_search_properties(None, None, space)
    first, control = searcher.suggest("a"), searcher.suggest("b")
    assert control == {"search.method": "plain", "optim.lr": 0.1} and first["search.method"] != "plain"
    searcher.on_trial_complete("a", _done(0.9))
    searcher.on_trial_complete("b", _done(0.5))
    searcher.suggest("c")  # another proposal (a repeat of "a" if Optuna draws its method again)
    repeat = searcher.suggest("d")
    assert Repeat.from_dict(repeat.pop(REPEAT_KEY)).metrics["val_acc"] == 0.5 and repeat == control
    searcher.on_trial_complete("c", _done(0.7))
    searcher.on_trial_complete("d", {"val_acc": 0.5, "done": True})
    assert sorted(_completed(searcher.searcher.searcher)) in ([0.7, 0.9], [0.9, 0.9])


def test_held_proposals_are_not_crowded_out_by_later_ones() -> None:
    """A proposal equal to a running trial is held; its control follows it. With the sweep's 2 x 2
    trials emitted or held, no new proposal is drawn: Tune, which counts only emitted trials,
    would otherwise fill the sweep with later proposals and controls and never run the held one
    (an Optuna sweep with a choice of one lr ended with 1 searched trial and 3 controls)."""
    search = SweepSearchConfig(objectives=[SweepSearchConfig().objectives[0]], control="plain")
    searcher = make_searcher(search, limit=4)
    assert searcher.set_search_properties(None, None, {"optim.lr": tune.choice([0.1])})
    first, control = searcher.suggest("a"), searcher.suggest("b")
    assert searcher.suggest("c") is None and searcher.suggest("d") is None  # the second proposal and its control: held
    assert searcher.suggest("e") is None and len(searcher.searcher.searcher._ot_study.trials) == 2  # nothing new drawn
    searcher.on_trial_complete("a", _done(0.9))
    searcher.on_trial_complete("b", _done(0.5))
    second, its_control = searcher.suggest("f"), searcher.suggest("g")
    assert Repeat.from_dict(second.pop(REPEAT_KEY)).metrics["val_acc"] == 0.9 and second == first
    assert Repeat.from_dict(its_control.pop(REPEAT_KEY)).metrics["val_acc"] == 0.5 and its_control == control
    assert searcher.suggest("h") is None  # 4 trials: the sweep is complete


def test_a_random_sweep_lists_each_trial_then_its_control(kit, tmp_path: Path, write_sweep, capsys) -> None:
    data = kit.tiny_sweep(tmp_path, search={"algorithm": "random", "num_samples": 2, "control": "plain"})
    assert main([str(write_sweep(data)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("trial ")]
    assert "# 4 trials; the first 3" in out and len(lines) == 3
    first = eval(lines[0].split(": ", 1)[1])  # noqa: S307 - the dict the dry run printed
    assert eval(lines[1].split(": ", 1)[1]) == {**first, "search.method": "plain"}  # noqa: S307
    assert "search.method" not in eval(lines[2].split(": ", 1)[1])  # noqa: S307


@pytest.mark.slow
def test_an_optuna_sweep_pairs_each_trial_with_its_control(kit, tmp_path: Path, write_sweep) -> None:
    """Two Optuna trials, each with a plain control at its learning rate and seed: controls tagged,
    off the Pareto front, gains on the searched trials, 2 x num_samples trials (each a run)."""
    data = kit.tiny_sweep(tmp_path, "paired", search={"num_samples": 2, "control": "plain"})
    data["space"]["seed"] = {"choice": [0, 1]}
    proc = kit.run_cli([str(write_sweep(data))], cwd=tmp_path, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "running sweep 'paired': 4 trials, each searched one followed by its control" in out
    _, kids = kit.children(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "paired")
    assert len(kids) == 4  # a continuous lr: no two proposals share a control
    controls = [k for k in kids if k.data.tags["repnas.control"] == "true"]
    searched = [k for k in kids if k.data.tags["repnas.control"] == "false"]
    assert len(searched) == 2 and len(controls) == 2 and all(k.data.params["search.method"] == "plain" for k in controls)
    assert all(k.data.params["search.method"] != "plain" for k in searched)
    for kid in searched:
        setting = (kid.data.params["optim.lr"], kid.data.params["seed"])
        pair = [c for c in controls if (c.data.params["optim.lr"], c.data.params["seed"]) == setting]
        assert len(pair) == 1, setting
        gain = kid.data.metrics["val_acc"] - pair[0].data.metrics["val_acc"]
        assert math.isclose(kid.data.metrics["gain_val_acc"], gain, abs_tol=1e-9)
        assert ("gain_test_acc" in kid.data.metrics) == ("test_acc" in kid.data.metrics)  # digits: no test split
    rows = json.loads((tmp_path / "ray_results" / "paired" / "pareto" / "pareto.json").read_text())["trials"]
    assert sum(r["control"] for r in rows) == len(controls) and not any(r["pareto"] for r in rows if r["control"])
    assert any(r["pareto"] for r in rows)
    table = out[out.index("Pareto front (*)"):]
    assert sum(line.startswith("control") for line in table.splitlines()) == len(controls)
    assert "search.method=plain" in out  # a control's console line names its method
