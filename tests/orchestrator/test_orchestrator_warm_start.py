"""Warm starts (``search.warm_start``) read from a real MLflow store (sqlite): which earlier
trials fit, how they reach Optuna's study with every objective, and the errors that stop a
sweep before Ray starts."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.ray_tune.searchers import make_searcher
from orchestrator.records import TrialStatus
from orchestrator.sweep import param_space, parse_sweep
from orchestrator.tracking.parent_run import TAG_PARENT, TAG_TRIAL, mlflow_params, start_parent_run
from orchestrator.tracking.warm_start import resolve_warm_start
from trainables.repeat import REPEAT_KEY
from trainables.schema import ConfigError

LRS, BUDGETS = [0.05, 0.08, 0.1, 0.15], [0.2, 0.5, 0.75]
OBJECTIVES = [{"metric": "val_acc", "mode": "max"}, {"metric": "branches_kept", "mode": "min"}]


def _space() -> dict[str, Any]:
    return {"search.budget": {"choice": BUDGETS}, "optim.lr": {"choice": LRS}}


def _earlier(tmp_path: Path, kit: Any, name: str = "earlier", **trial_search: Any) -> Any:
    """A finished sweep in MLflow as the driver leaves it: a parent run, one child run per trial
    (its whole config as params, its metrics, FINISHED), plus a stopped and a repeated trial."""
    sweep = kit.tiny_sweep(tmp_path, name, space=_space(), search={"objectives": OBJECTIVES})
    sweep["trial"]["search"].update(trial_search)
    cfg = parse_sweep(sweep)
    state = start_parent_run(cfg, resume=False)
    client = MlflowClient(state.tracking_uri)
    for i, (lr, budget) in enumerate(itertools.product(LRS, BUDGETS)):
        name = f"repnas_trial_{i:02d}"
        run = client.create_run(state.experiment_id, run_name=name,
                                tags={TAG_PARENT: state.parent_run_id, TAG_TRIAL: name}).info.run_id
        params = cfg.trial_config({"optim.lr": lr, "search.budget": budget}).to_dict()
        client.log_batch(run, params=mlflow_params(params))
        for key, value in {"val_acc": 0.5 + lr + budget / 10, "branches_kept": 30 * budget, "epoch": 2.0}.items():
            client.log_metric(run, key, value, step=2)
        client.set_terminated(run, TrialStatus.FINISHED.mlflow)
    stopped = client.create_run(state.experiment_id, tags={TAG_PARENT: state.parent_run_id, "repnas.stopped_early": "true"})
    client.set_terminated(stopped.info.run_id, "FINISHED")
    return cfg


def _later(tmp_path: Path, kit: Any, warm: list[str], **search: Any) -> Any:
    return parse_sweep(kit.tiny_sweep(tmp_path, "later", space=_space(),
                                      search={"objectives": OBJECTIVES, "warm_start": warm, **search}))


def test_earlier_trials_that_fit_reach_the_study_with_every_objective(tmp_path: Path, kit: Any) -> None:
    _earlier(tmp_path, kit)
    cfg = _later(tmp_path, kit, ["earlier"])
    warm = resolve_warm_start(cfg)
    assert warm.used == {"earlier": 12} and warm.skipped == {"earlier": {"not finished": 1}}
    trial = next(t for t in warm.trials if t.point == {"search.budget": 0.5, "optim.lr": 0.1})
    assert trial.repeat.sweep == "earlier" and trial.repeat.trial.startswith("repnas_trial_")
    assert trial.repeat.metrics["val_acc"] == pytest.approx(0.65) and trial.repeat.run_id
    searcher = make_searcher(cfg.search, param_space(cfg.space, "optuna"), warm.trials)
    assert searcher.set_search_properties(None, None, param_space(cfg.space, "optuna"))
    study = searcher.searcher._ot_study  # OptunaSearch's real study (test-only look inside)
    assert len(study.trials) == 12 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert sorted(t.values[1] for t in study.trials) == sorted(30 * b for b in BUDGETS for _ in LRS)
    first = searcher.suggest("a")
    assert REPEAT_KEY in first  # every configuration of the space was trained before: nothing trains again


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
    assert warmed[0] == {"search.budget": 0.75, "optim.lr": 0.15}  # TPE goes for the best region it was shown


@pytest.mark.parametrize(("change", "why"), [
    ({"search": {"epochs": 3}}, "with another search.epochs"),  # the base trial differs: results not comparable
])
def test_trials_of_another_base_are_not_used(tmp_path: Path, kit: Any, change: dict[str, Any], why: str) -> None:
    _earlier(tmp_path, kit)
    sweep = kit.tiny_sweep(tmp_path, "later", space=_space(), search={"objectives": OBJECTIVES, "warm_start": ["earlier"]})
    sweep["trial"]["search"].update(change["search"])
    warm = resolve_warm_start(parse_sweep(sweep))
    assert warm.used == {"earlier": 0} and warm.skipped["earlier"][why] == 12


def test_values_outside_the_space_are_not_used(tmp_path: Path, kit: Any) -> None:
    _earlier(tmp_path, kit)
    sweep = kit.tiny_sweep(tmp_path, "later", search={"objectives": OBJECTIVES, "warm_start": ["earlier"]})
    sweep["space"] = {"search.budget": {"choice": [0.5]}, "optim.lr": {"choice": LRS}}
    warm = resolve_warm_start(parse_sweep(sweep))
    assert warm.used == {"earlier": 4} and warm.skipped["earlier"]["outside the space at search.budget"] == 8


def test_a_sweep_file_names_the_earlier_sweep_too(tmp_path: Path, kit: Any, write_sweep: Any) -> None:
    earlier = _earlier(tmp_path, kit)
    raw = kit.tiny_sweep(tmp_path, earlier.name, space=_space(), search={"objectives": OBJECTIVES})
    write_sweep(raw, "earlier.yaml")
    later = write_sweep(kit.tiny_sweep(tmp_path, "later", space=_space(),
                                       search={"objectives": OBJECTIVES, "warm_start": ["earlier.yaml"]}), "later.yaml")
    from orchestrator.sweep import load_sweep

    assert resolve_warm_start(load_sweep(later, env={})).used == {"earlier": 12}


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
