"""``trainables.config.identity.inert_keys``: each rule that a ``search.*`` key cannot change a trial's
training given the others is checked by training both of its values (same bits), and the same
two values under the opposite condition (they differ, so the check can fail). A sweep's repeat
check relies on these rules (``orchestrator.ray_tune.repeats``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _metrics import computed

from trainables import RECIPE_PRESETS, TrialConfig, load_checkpoint, run_trial
from trainables.config.identity import inert_keys, trial_identity

NO_RANDOM = {"search.random_epochs": 0, "search.search_epochs": 1}
# rule: (inert key, its two values, the condition under which it is inert, the opposite condition)
RULES: dict[str, tuple[str, tuple[Any, Any], dict[str, Any], dict[str, Any]]] = {
    "random_sampling without a random phase": (
        "search.random_sampling", ("uniform", "fair"), NO_RANDOM, {"search.random_epochs": 1}),
    "fix_bn under two_stage": (
        "search.fix_bn", ("reset", "recalibrate"), {"search.two_stage": True}, {"search.two_stage": False}),
    "fixed_lr_schedule under two_stage": (
        "search.fixed_lr_schedule", ("continue", "restart"), {"search.two_stage": True}, {"search.two_stage": False}),
    "fix_bn_batches without recalibration": (
        "search.fix_bn_batches", (1, 4), {"search.fix_bn": "reset"}, {"search.fix_bn": "recalibrate"}),
    "noise_final with constant noise": (
        "search.noise_final", (0.0, 0.5), {"search.noise_schedule": "constant"}, {"search.noise_schedule": "linear"}),
    "arch_lr_travel without arch_lr auto": (
        "search.arch_lr_travel", (1.0, 30.0), {"search.arch_lr": 1.0e-4}, {"search.arch_lr": "auto"}),
    "budget of a fixed architecture": (  # e.g. the plain controls of an Optuna sweep that samples the budget
        "search.budget", (0.34, 0.67), {"search.method": "dbb", **NO_RANDOM}, {"search.method": "odbb"}),
    "layer_floor of a fixed architecture": (
        "search.layer_floor", (1, 2), {"search.method": "dbb", **NO_RANDOM},
        {"search.method": "odbb", "search.budget": 0.67}),
}


def _train(tiny: Any, tmp_path: Path, name: str, overrides: dict[str, Any]) -> tuple[list[dict[str, float]], dict]:
    cfg = tiny(**{"data.limit_train": 96, **overrides})
    result = run_trial(cfg, tmp_path / name)
    tensors, _ = load_checkpoint(result.checkpoint_dir)
    return [computed(m) for m in result.history], {"model": tensors["model"], "alpha": tensors.get("alpha")}


def _same(a: dict, b: dict) -> bool:
    alphas = a["alpha"] is b["alpha"] is None or (  # a fixed architecture has none
        a["alpha"] is not None and b["alpha"] is not None and torch.equal(a["alpha"], b["alpha"]))
    return alphas and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.parametrize("rule", list(RULES))
def test_an_inert_key_trains_the_same_bits_and_matters_otherwise(rule: str, tiny: Any, tmp_path: Path) -> None:
    key, (one, other), inert_when, active_when = RULES[rule]
    assert key in inert_keys(tiny(**inert_when).search) and key not in inert_keys(tiny(**active_when).search)
    runs = {(when, value): _train(tiny, tmp_path, f"{when}-{i}", {**(inert_when if when == "inert" else active_when),
                                                                 key: value})
            for when in ("inert", "active") for i, value in enumerate((one, other))}
    (history_a, state_a), (history_b, state_b) = runs["inert", one], runs["inert", other]
    assert history_a == history_b and _same(state_a, state_b)
    (history_c, state_c), (history_d, state_d) = runs["active", one], runs["active", other]
    assert history_c != history_d or not _same(state_c, state_d)


def test_a_preset_is_inert_once_layered(tiny_dict: dict[str, Any]) -> None:
    """``search.preset: short`` over a trial, and ``paper`` with short's keys written out, are one
    trial once layered: the preset's values are in the other keys."""
    short = TrialConfig.from_overrides(tiny_dict, {"search.preset": "short"})
    written = TrialConfig.from_overrides(tiny_dict, {f"search.{k}": v for k, v in RECIPE_PRESETS["short"].items()})
    assert short != written and short.search.preset == "short" and "search.preset" in inert_keys(short.search)
    assert trial_identity(short) == trial_identity(written)
    assert trial_identity(short) != trial_identity(TrialConfig.from_overrides(tiny_dict, {}))  # paper differs


def test_a_fixed_architecture_ignores_only_its_preset_and_the_search_budget(tiny: Any) -> None:
    assert inert_keys(tiny(**{"search.method": "dbb", **NO_RANDOM}).search) == {
        "search.preset", "search.budget", "search.layer_floor"}
