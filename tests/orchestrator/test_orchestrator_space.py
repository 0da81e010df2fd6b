"""Outer search space -> Ray Tune domains, Optuna searchers and samplers (no Ray running)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Categorical, Float, Integer

from orchestrator.sweep import parse_sweep
from orchestrator.ray_tune.repeats import RepeatSkipper
from orchestrator.ray_tune.searchers import VariantList, make_searcher
from orchestrator.sweep.space import param_space, parse_space, sample_overrides


def test_parse_and_convert_every_distribution() -> None:
    params = parse_space({"search.budget": {"choice": [0.2, 0.5]}, "optim.lr": {"loguniform": [1e-3, 0.1]},
                          "optim.momentum": {"uniform": [0.8, 0.95]}, "search.epochs": {"randint": [2, 5]},
                          "seed": {"grid": [0, 1]}, "data.batch_size": 32})
    space = param_space(params, "random")
    assert set(space) == {"search.budget", "optim.lr", "optim.momentum", "search.epochs", "seed"}
    assert isinstance(space["search.budget"], Categorical)
    assert isinstance(space["optim.lr"], Float) and isinstance(space["search.epochs"], Integer)
    assert space["seed"] == {"grid_search": [0, 1]}
    assert params[-1].kind == "constant" and params[-1].values == (32,)
    assert params[3].probe_values() == (2, 4)  # randint excludes the high end


def test_grid_algorithm_turns_choices_into_grids() -> None:
    params = parse_space({"search.budget": {"choice": [0.2, 0.5]}, "optim.lr": {"grid": [0.1, 0.05]}})
    space = param_space(params, "grid")
    assert space == {"search.budget": {"grid_search": [0.2, 0.5]}, "optim.lr": {"grid_search": [0.1, 0.05]}}
    samples = sample_overrides(params, "grid", 10, seed=0)
    assert len({tuple(s.items()) for s in samples}) == 4


@pytest.mark.parametrize(("sampler", "cls"), [("tpe", optuna.samplers.TPESampler),
                                              ("nsgaii", optuna.samplers.NSGAIISampler),
                                              ("nsgaiii", optuna.samplers.NSGAIIISampler),
                                              ("random", optuna.samplers.RandomSampler)])
def test_optuna_searcher_multi_objective(sampler: str, cls: type, tmp_path: Path, kit: Any) -> None:
    cfg = parse_sweep(kit.tiny_sweep(tmp_path, search={"sampler": sampler, "population_size": 4}))
    searcher = make_searcher(cfg.search)
    assert isinstance(searcher, RepeatSkipper) and isinstance(searcher.searcher, OptunaSearch)  # skip_repeats: on
    assert searcher.metric == ["val_acc", "branches_kept"] and searcher.mode == ["max", "min"]
    assert isinstance(searcher.searcher._sampler, cls)
    plain = make_searcher(dataclasses.replace(cfg.search, skip_repeats=False))
    assert isinstance(plain, OptunaSearch) and isinstance(plain._sampler, cls)


def test_single_objective_and_the_random_list(tmp_path: Path, kit: Any) -> None:
    cfg = parse_sweep(kit.tiny_sweep(tmp_path, search={"objectives": [{"metric": "val_loss", "mode": "min"}]}))
    searcher = make_searcher(cfg.search)
    assert searcher.metric == "val_loss" and searcher.mode == "min"
    cfg = parse_sweep(kit.tiny_sweep(tmp_path, search={"algorithm": "random", "skip_repeats": False}))
    points = [{"optim.lr": 0.1}, {"optim.lr": 0.2}]
    listed = make_searcher(cfg.search, variants=points)  # the list --dry-run previews, repeats or not
    assert isinstance(listed, VariantList) and [listed.suggest(i) for i in "abc"] == [*points, None]


def test_seeded_samples_are_reproducible() -> None:
    params = parse_space({"optim.lr": {"loguniform": [1e-3, 0.1]}, "search.budget": {"choice": [0.2, 0.5]}})
    assert sample_overrides(params, "optuna", 3, 1) == sample_overrides(params, "optuna", 3, 1)
    assert all(1e-3 <= s["optim.lr"] <= 0.1 for s in sample_overrides(params, "optuna", 20, 0))


def test_grid_of_mappings_sets_several_trial_keys_together(tmp_path: Path, kit: Any) -> None:
    from orchestrator.sweep.space import trial_count
    from trainables import ConfigError

    methods = [{"method": "dbb"}, {"method": "odbb", "budget": 5}]
    cfg = parse_sweep(kit.tiny_sweep(tmp_path, search={"algorithm": "grid", "num_samples": 1},
                                     space={"search": {"grid": methods}, "seed": {"grid": [0, 1, 2]},
                                            "search.budget": 0.5, "optim.lr": 0.1}))
    assert trial_count(cfg.space, "grid", 1) == 6 and trial_count(cfg.space, "grid", 2) == 12
    assert trial_count(cfg.space, "optuna", 5) == 5
    dbb = cfg.trial_config({"search": methods[0], "seed": 2})
    odbb = cfg.trial_config({"trial.search": methods[1]})
    # merged into the trial's search section: epochs etc. stay, the other keys change
    assert (dbb.search.method, dbb.search.epochs, dbb.seed) == ("dbb", 2, 2)
    assert (odbb.search.method, odbb.search.budget, odbb.search.random_epochs) == ("odbb", 5, 1)
    with pytest.raises(ConfigError, match=r"space\.search.*methd.*did you mean 'method'"):
        parse_sweep(kit.tiny_sweep(tmp_path, search={"algorithm": "grid"},
                                   space={"search": {"grid": [{"methd": "dbb"}]}, "search.budget": 0.5,
                                          "optim.lr": 0.1}))


def test_flatten_overrides() -> None:
    from trainables import flatten_overrides

    nested = {"search": {"method": "odbb", "budget": 5}, "model": {"options": {"width_multiplier": 2.0}},
              "optim.lr": 0.1, "search.candidates": ["kxk"], "empty": {}}
    assert flatten_overrides(nested) == {"search.method": "odbb", "search.budget": 5,
                                         "model.options.width_multiplier": 2.0, "optim.lr": 0.1,
                                         "search.candidates": ["kxk"], "empty": {}}
