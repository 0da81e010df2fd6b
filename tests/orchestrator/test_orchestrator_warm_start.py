"""Warm starts (``search.warm_start``) read from a real MLflow store (sqlite): which earlier
trials fit, how they reach Optuna's study with every objective, and the errors that stop a
sweep before Ray starts."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.ray_tune.repeats import config_key
from orchestrator.ray_tune.searchers import make_searcher
from orchestrator.records import TrialStatus
from orchestrator.sweep import param_space, parse_sweep
from orchestrator.tracking.parent_run import (TAG_PARENT, TAG_REPEAT_OF, TAG_STOPPED, TAG_TRIAL, mlflow_params,
                                              start_parent_run)
from orchestrator.tracking.warm_start import resolve_warm_start
from trainables.config.repeat import REPEAT_KEY
from trainables.errors import ConfigError

LRS, BUDGETS = [0.05, 0.08, 0.1, 0.15], [0.2, 0.5, 0.75]
OBJECTIVES = [{"metric": "val_acc", "mode": "max"}, {"metric": "branches_kept", "mode": "min"}]


def _space() -> dict[str, Any]:
    return {"search.budget": {"choice": BUDGETS}, "optim.lr": {"choice": LRS}}


def _earlier(tmp_path: Path, kit: Any, name: str = "earlier", stopped: bool = False, **trial_search: Any) -> Any:
    """A sweep in MLflow as the driver leaves it: a parent run and one child run per point of the
    space (its whole config as params, its metrics per epoch), FINISHED, or with ``stopped`` as
    an ASHA sweep leaves most trials (stopped after epoch 1, tag ``repnas.stopped_early``),
    plus a stopped trial of lr 0.05 and budget 0.2, a failed trial and a repeated one."""
    sweep = kit.tiny_sweep(tmp_path, name, space=_space(), search={"objectives": OBJECTIVES})
    sweep["trial"]["search"].update(trial_search)
    cfg = parse_sweep(sweep)
    state = start_parent_run(cfg, resume=False)
    client = MlflowClient(state.tracking_uri)

    def child(i: int, lr: float, budget: float, status: TrialStatus, epochs: int = 2) -> str:
        name = f"repnas_trial_{i:02d}"
        tags = {TAG_PARENT: state.parent_run_id, TAG_TRIAL: name}
        if status is TrialStatus.STOPPED:
            tags[TAG_STOPPED] = "true"
        run = client.create_run(state.experiment_id, run_name=name, tags=tags).info.run_id
        client.log_batch(run, params=mlflow_params(cfg.trial_config({"optim.lr": lr, "search.budget": budget}).to_dict()))
        for epoch in range(1, epochs + 1):  # the last epoch: the final value
            client.log_metric(run, "val_acc", 0.5 + lr + budget / 10 - (epochs - epoch) / 10, step=epoch)
        if epochs == 2:
            client.log_metric(run, "branches_kept", 30 * budget, step=2)
        client.set_terminated(run, status.mlflow)
        return run

    grid = list(itertools.product(LRS, BUDGETS))
    for i, (lr, budget) in enumerate(grid):
        child(i, lr, budget, TrialStatus.STOPPED if stopped else TrialStatus.FINISHED, 1 if stopped else 2)
    child(len(grid), 0.05, 0.2, TrialStatus.STOPPED, epochs=1)
    child(len(grid) + 1, 0.15, 0.75, TrialStatus.FAILED, epochs=1)
    repeat = child(len(grid) + 2, 0.15, 0.75, TrialStatus.FINISHED)
    client.set_tag(repeat, TAG_REPEAT_OF, "repnas_trial_11")
    return cfg


def _later(tmp_path: Path, kit: Any, warm: list[str], **search: Any) -> Any:
    return parse_sweep(kit.tiny_sweep(tmp_path, "later", space=_space(),
                                      search={"objectives": OBJECTIVES, "warm_start": warm, **search}))


def test_earlier_trials_that_fit_reach_the_study_with_every_objective(tmp_path: Path, kit: Any) -> None:
    _earlier(tmp_path, kit)
    cfg = _later(tmp_path, kit, ["earlier"])
    warm = resolve_warm_start(cfg)
    assert warm.used == {"earlier": 13} and warm.skipped == {"earlier": {"failed or unfinished": 1, "repeats": 1}}
    trial = next(t for t in warm.trials if t.point == {"search.budget": 0.5, "optim.lr": 0.1})
    assert trial.repeat.sweep == "earlier" and trial.repeat.trial.startswith("repnas_trial_")
    assert trial.repeat.metrics["val_acc"] == pytest.approx(0.65) and trial.repeat.run_id
    assert "13 trial(s) of sweep 'earlier', 1 of them stopped early" in warm.lines()[0]
    searcher = make_searcher(cfg.search, param_space(cfg.space, "optuna"), warm.trials, cfg.trial)
    assert searcher.set_search_properties(None, None, param_space(cfg.space, "optuna"))
    study = searcher.searcher._ot_study  # OptunaSearch's real study (test-only look inside)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 12 and states.count(optuna.trial.TrialState.PRUNED) == 1
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.values[1] for t in complete) == sorted(30 * b for b in BUDGETS for _ in LRS)
    # the stopped trial's partial result never stands in for the finished one of the same point
    assert searcher.finished[config_key({"search.budget": 0.2, "optim.lr": 0.05}, cfg.trial)]["metrics"]["val_acc"] \
        == pytest.approx(0.57)
    first = searcher.suggest("a")
    assert REPEAT_KEY in first  # every configuration of the space was trained before: nothing trains again


def test_stopped_trials_reach_the_study_pruned_with_their_epochs(tmp_path: Path, kit: Any) -> None:
    """An ASHA sweep's stopped trials are what it learnt: pruned in the study, with the objective
    per epoch, never a known result (proposing one trains it), and they end TPE's random start."""
    _earlier(tmp_path, kit, stopped=True)
    cfg = _later(tmp_path, kit, ["earlier"], objectives=[OBJECTIVES[0]])
    warm = resolve_warm_start(cfg)
    assert warm.used == {"earlier": 13} and all(t.stopped for t in warm.trials)
    space = param_space(cfg.space, "optuna")
    searcher = make_searcher(cfg.search, space, warm.trials)
    searcher.set_search_properties(None, None, space)
    assert searcher.finished == {}
    study = searcher.searcher._ot_study
    pruned = {(t.params["optim.lr"], t.params["search.budget"]): t.intermediate_values for t in study.trials}
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    assert pruned[(0.15, 0.75)] == {1: pytest.approx(0.725)}
    assert REPEAT_KEY not in searcher.suggest("t0")  # every point was trained before, none in full
    cfg = _later(tmp_path, kit, ["earlier"], objectives=[OBJECTIVES[0]], skip_repeats=False)
    proposals = []
    for given in ([], warm.trials):
        searcher = make_searcher(cfg.search, space, given)
        searcher.set_search_properties(None, None, space)
        proposals.append([searcher.suggest(f"t{i}") for i in range(4)])
    assert proposals[0] != proposals[1]  # 13 >= TPE's n_startup_trials: it models from the first proposal


def test_the_samplers_first_proposals_change(tmp_path: Path, kit: Any) -> None:
    _earlier(tmp_path, kit)
    cfg = _later(tmp_path, kit, ["earlier"], objectives=[OBJECTIVES[0]], skip_repeats=False)
    space = param_space(cfg.space, "optuna")
    proposals = []
    for warm in ([], resolve_warm_start(cfg).trials):
        searcher = make_searcher(cfg.search, space, warm)
        searcher.set_search_properties(None, None, space)
        proposals.append([searcher.suggest(f"t{i}") for i in range(4)])
    cold, warmed = proposals
    assert cold != warmed
    # TPE goes for the best region it was shown: its two best trials (lr 0.15, budget 0.5 and 0.75)
    assert warmed[0]["optim.lr"] == 0.15 and warmed[0]["search.budget"] in (0.5, 0.75)


@pytest.mark.parametrize(("change", "why"), [
    ({"search": {"epochs": 3}}, "with another search.epochs"),  # the base trial differs: results not comparable
])
def test_trials_of_another_base_are_not_used(tmp_path: Path, kit: Any, change: dict[str, Any], why: str) -> None:
    _earlier(tmp_path, kit)
    sweep = kit.tiny_sweep(tmp_path, "later", space=_space(), search={"objectives": OBJECTIVES, "warm_start": ["earlier"]})
    sweep["trial"]["search"].update(change["search"])
    warm = resolve_warm_start(parse_sweep(sweep))
    assert warm.used == {"earlier": 0} and warm.skipped["earlier"][why] == 13


def test_values_outside_the_space_are_not_used(tmp_path: Path, kit: Any) -> None:
    _earlier(tmp_path, kit)
    sweep = kit.tiny_sweep(tmp_path, "later", search={"objectives": OBJECTIVES, "warm_start": ["earlier"]})
    sweep["space"] = {"search.budget": {"choice": [0.5]}, "optim.lr": {"choice": LRS}}
    warm = resolve_warm_start(parse_sweep(sweep))
    assert warm.used == {"earlier": 4} and warm.skipped["earlier"]["outside the space at search.budget"] == 9


def test_a_sweep_file_names_the_earlier_sweep_too(tmp_path: Path, kit: Any, write_sweep: Any) -> None:
    earlier = _earlier(tmp_path, kit)
    raw = kit.tiny_sweep(tmp_path, earlier.name, space=_space(), search={"objectives": OBJECTIVES})
    write_sweep(raw, "earlier.yaml")
    later = write_sweep(kit.tiny_sweep(tmp_path, "later", space=_space(),
                                       search={"objectives": OBJECTIVES, "warm_start": ["earlier.yaml"]}), "later.yaml")
    from orchestrator.sweep import load_sweep

    assert resolve_warm_start(load_sweep(later, env={})).used == {"earlier": 13}


@pytest.mark.slow
@pytest.mark.parametrize(("warm", "space", "words"), [
    (["nowhere"], None, "no sweep named 'nowhere'"),
    (["missing.yaml"], None, "sweep file missing.yaml not found"),
    (["earlier"], {"optim.momentum": {"choice": [0.8, 0.9]}}, "share no key"),
])
def test_bad_warm_starts_exit_2_before_ray_starts(tmp_path: Path, kit: Any, write_sweep: Any, warm: list[str],
                                                  space: dict[str, Any] | None, words: str) -> None:
    _earlier(tmp_path, kit)
    sweep = kit.tiny_sweep(tmp_path, "later", search={"objectives": OBJECTIVES, "warm_start": warm})
    sweep["space"] = space or _space()  # replaced, not merged with the tiny sweep's
    with pytest.raises(ConfigError) as err:
        resolve_warm_start(parse_sweep(sweep))
    assert err.value.path == "search.warm_start[0]" and words in err.value.message
    out = kit.run_cli([str(write_sweep(sweep))], cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "search.warm_start[0]" in out.stderr and words in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "ray_results" / "later").exists()


def test_warm_start_needs_optuna(tmp_path: Path, kit: Any) -> None:
    sweep = kit.tiny_sweep(tmp_path, "later", space={"optim.lr": {"grid": LRS}},
                           search={"algorithm": "grid", "warm_start": ["earlier"]})
    with pytest.raises(ConfigError, match="search.warm_start: warm starts feed Optuna"):
        parse_sweep(sweep)
