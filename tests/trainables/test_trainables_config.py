"""TrialConfig validation: types, ranges, unknown keys, overrides, model-dependent checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision

from trainables import ConfigError, TrialConfig, apply_overrides, check_trial_key, parse_override
from trainables.run.build import build_trial_model
from trainables.run.data import build_data


def test_defaults_are_the_paper_values_and_round_trip() -> None:
    cfg = TrialConfig()
    assert (cfg.search.budget, cfg.search.epochs, cfg.search.random_epochs, cfg.search.search_epochs) == (0.34, 150, 15, 35)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.grad_clip) == (0.1, 0.9, 1e-4, 5.0)
    assert (cfg.search.arch_lr, tuple(cfg.search.arch_betas), cfg.search.arch_weight_decay) == (1e-4, (0.5, 0.999), 5e-4)
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("overrides", "path", "fragment"),
    [
        ({"search.budget": "lots"}, "trial.search.budget", "expected integer or number"),
        ({"search.budget": 0}, "trial.search.budget", ">= 1"),
        ({"search.budget": 0.0}, "trial.search.budget", "(0, 1]"),
        ({"search.budget": -0.2}, "trial.search.budget", "(0, 1]"),
        ({"search.budget": -3}, "trial.search.budget", ">= 1"),
        ({"search.epochs": 2.5}, "trial.search.epochs", "expected integer"),
        ({"data.batch_size": True}, "trial.data.batch_size", "expected integer"),
        ({"optim.lr": "1e-4"}, "trial.optim.lr", "write 1.0e-4"),
        ({"search.bugdet": 0.3}, "trial.search.bugdet", "did you mean 'budget'"),
        ({"data.dataset": "fashion-mnist"}, "trial.data.dataset", "did you mean 'fashion_mnist'"),
        ({"model.name": "repvgg_tinyy"}, "trial.model.name", "did you mean 'repvgg_tiny'"),
        ({"search.method": "dbbb"}, "trial.search.method", "did you mean 'dbb'"),
        ({"search.candidates": ["kxk", "3x3"]}, "trial.search.candidates[1]", "unknown branch type"),
        ({"search.random_epochs": 100}, "trial.search.search_epochs", "exceeds epochs"),
        ({"search.arch_betas": [0.5]}, "trial.search.arch_betas", "expected 2 items"),
        ({"data.val_fraction": 1.0}, "trial.data.val_fraction", "expected a value in (0.0, 1.0)"),
        ({"search.method": "/nonexistent/arch.json"}, "trial.search.method", "not found"),
        ({"model.new_branch_start": -0.1}, "trial.model.new_branch_start", "expected a value in [0.0, inf)"),
        ({"model.new_branch_start": 0.1}, "trial.model.new_branch_start", "without weights"),
        ({"optim.new_branch_lr_scale": 0.0}, "trial.optim.new_branch_lr_scale", "expected a value in (0.0, inf)"),
        ({"optim.new_branch_lr_scale": -2.0}, "trial.optim.new_branch_lr_scale", "expected a value in (0.0, inf)"),
    ],
)
def test_bad_values_name_the_key(overrides: dict[str, Any], path: str, fragment: str, tiny_dict: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_dict(apply_overrides(tiny_dict, overrides))
    assert info.value.path == path
    assert fragment in str(info.value)


def test_the_new_branch_options_parse_round_trip_and_reach_the_model(tmp_path: Path,
                                                                     tiny_dict: dict[str, Any]) -> None:
    weights = tmp_path / "w.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    cfg = TrialConfig.from_overrides(tiny_dict, {"model.name": "torchvision.resnet18", "model.weights": str(weights),
                                                 "model.new_branch_start": 0.1, "optim.new_branch_lr_scale": 10,
                                                 "data.channels": 3, "data.image_size": 16})
    assert (cfg.model.new_branch_start, cfg.optim.new_branch_lr_scale) == (0.1, 10)
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    assert (TrialConfig().model.new_branch_start, TrialConfig().optim.new_branch_lr_scale) == (0.0, 1.0)
    block = build_trial_model(cfg, 10, 3).layer1[0].conv1  # an ODBB with an identity
    assert torch.equal(block.identity.weight, torch.full_like(block.identity.weight, 0.1))


def test_from_overrides_applies_dotted_keys_groups_and_a_trial_prefix(tiny_dict: dict[str, Any]) -> None:
    cfg = TrialConfig.from_overrides(tiny_dict, {"search.budget": 5, "trial.optim.lr": 0.05,
                                                 "trial.search": {"method": "dbb"}})
    assert (cfg.search.budget, cfg.optim.lr, cfg.search.method) == (5, 0.05, "dbb")
    assert cfg.search.epochs == tiny_dict["search"]["epochs"]  # a group sets its keys, the rest stay
    assert TrialConfig.from_overrides(tiny_dict, {}) == TrialConfig.from_dict(tiny_dict)
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_overrides(tiny_dict, {"search": {"bugdet": 1}})
    assert info.value.path == "trial.search.bugdet"


@pytest.mark.parametrize(("key", "fragment"), [
    ("search.bugdet", "search has no 'bugdet' (did you mean 'budget'?)"),
    ("optim.lr.x", "optim.lr is a value, not a mapping"),
    ("trial.seed", "trial has no 'trial'"),
])
def test_check_trial_key_names_what_is_wrong(key: str, fragment: str) -> None:
    check_trial_key("model.options.width_multiplier", "space.x")  # below a free-form mapping
    with pytest.raises(ConfigError) as info:
        check_trial_key(key, "space.k")
    assert info.value.path == "space.k" and fragment in str(info.value)


def test_int_budget_stays_absolute_and_float_is_a_ratio(tiny_dict: dict[str, Any]) -> None:
    assert TrialConfig.from_dict(apply_overrides(tiny_dict, {"search.budget": 5})).search.budget == 5
    assert isinstance(TrialConfig.from_dict(apply_overrides(tiny_dict, {"search.budget": 1.0})).search.budget, float)


def test_budget_above_candidate_count_is_caught_once_the_model_exists(tiny) -> None:
    cfg = tiny(**{"search.budget": 31})  # repvgg_tiny: 5 layers x 6 = 30 candidates
    with pytest.raises(ConfigError) as info:
        build_trial_model(cfg, 10, 1)
    assert info.value.path == "trial.search.budget" and "only 30 candidates" in str(info.value)


def test_bad_model_option_names_options(tiny) -> None:
    with pytest.raises(ConfigError) as info:
        build_trial_model(tiny(**{"model.options": {"widht_multiplier": 2}}), 10, 1)
    assert info.value.path == "trial.model.options"


def test_missing_data_names_path_and_fix(tmp_path: Path, tiny) -> None:
    cfg = tiny(**{"data.dataset": "fashion_mnist", "data.root": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError) as info:
        build_data(cfg.data, 0)
    assert info.value.path == "trial.data.root"
    assert str(tmp_path / "nowhere") in str(info.value) and "apt-get install" in str(info.value)
    with pytest.raises(ConfigError, match="train/<class>"):
        build_data(tiny(**{"data.dataset": "imagefolder", "data.root": str(tmp_path)}).data, 0)


def test_apply_overrides_and_parse_override() -> None:
    base = {"search": {"budget": 0.34}, "optim": {"lr": 0.1}}
    out = apply_overrides(base, {"search.budget": 7, "model.name": "repvgg_a0"})
    assert out == {"search": {"budget": 7}, "optim": {"lr": 0.1}, "model": {"name": "repvgg_a0"}}
    assert base["search"]["budget"] == 0.34  # input untouched
    assert parse_override("search.candidates=[kxk, 1x1]") == ("search.candidates", ["kxk", "1x1"])
    assert parse_override("optim.lr=0.05") == ("optim.lr", 0.05)
    with pytest.raises(ConfigError):
        parse_override("no-equals-sign")
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_overrides(base, {"optim.lr.x": 1})
