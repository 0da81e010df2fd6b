"""The one trial identity (``trainables.config.identity``): every ``runtime.*`` key has its place,
decided by training. The keys left out (:data:`NOT_DECIDING`) train the same bits with either
value; the runtime keys kept in change the numbers (where this machine can run both values)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _metrics import computed

from trainables import RuntimeConfig, TrialConfig, load_checkpoint, run_trial
from trainables.config.identity import NOT_DECIDING, identity_difference, identity_key, trial_identity

RUNTIME_KEYS = {f"runtime.{name}" for name in RuntimeConfig.__dataclass_fields__}
KEPT_RUNTIME = {"runtime.device", "runtime.workers", "runtime.sync_bn", "runtime.precision",
                "runtime.channels_last", "runtime.compile", "runtime.num_threads"}


def _train(tiny: Any, tmp_path: Path, name: str, overrides: dict[str, Any]) -> tuple[list[dict[str, float]], dict]:
    cfg = tiny(**{"data.limit_train": 96, **overrides})
    result = run_trial(cfg, tmp_path / name)
    tensors, _ = load_checkpoint(result.checkpoint_dir)
    return [computed(m) for m in result.history], tensors["model"]


def _same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_runtime_key_has_a_decided_place() -> None:
    """A new runtime key must be placed on purpose: in the identity, or left out with a test below."""
    assert RUNTIME_KEYS == KEPT_RUNTIME | (NOT_DECIDING & RUNTIME_KEYS)
    identity = trial_identity(TrialConfig())
    assert KEPT_RUNTIME <= identity.keys() and not (NOT_DECIDING & identity.keys())


@pytest.mark.parametrize(("key", "values"), [("data.num_workers", (0, 1))])
def test_a_key_left_out_trains_the_same_bits(key: str, values: tuple[Any, Any], tiny: Any, tmp_path: Path) -> None:
    (history_a, state_a), (history_b, state_b) = (_train(tiny, tmp_path, f"v{i}", {key: v})
                                                  for i, v in enumerate(values))
    assert history_a == history_b and _same_bits(state_a, state_b)
    assert identity_key(tiny(**{key: values[0]})) == identity_key(tiny(**{key: values[1]}))


def test_precision_changes_the_result_and_the_identity(tiny: Any, tmp_path: Path) -> None:
    (history_a, state_a), (history_b, state_b) = (_train(tiny, tmp_path, p, {"runtime.precision": p})
                                                  for p in ("fp32", "bf16"))
    assert history_a != history_b or not _same_bits(state_a, state_b)
    assert identity_difference(tiny(**{"runtime.precision": "bf16"}), trial_identity(tiny())) == "runtime.precision"


def test_identity_difference_names_the_first_deciding_key_and_takes_missing_ones_as_defaults(tiny: Any) -> None:
    trial = tiny()
    logged = trial_identity(trial)
    assert identity_difference(trial, logged) is None
    assert identity_difference(trial, {**logged, "optim.lr": trial.optim.lr * 2}) == "optim.lr"
    assert identity_difference(trial, {**logged, "data.num_workers": 8}) is None  # not deciding
    assert identity_difference(trial, {**logged, "runtime.num_threads": 64}) == "runtime.num_threads"
    older = {k: v for k, v in logged.items() if k != "optim.new_branch_lr_scale"}  # logged before the key existed
    assert identity_difference(trial, older) is None  # it trained at the default, 1.0
    assert identity_difference(tiny(**{"optim.new_branch_lr_scale": 10.0}), older) == "optim.new_branch_lr_scale"


def test_the_new_branch_options_decide_the_identity(tiny: Any, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    weights.touch()  # validation needs the file only; the identity never reads it
    base = {"model.name": "torchvision.resnet18", "model.weights": str(weights), "data.channels": 3}
    trial = tiny(**base)
    assert {"model.new_branch_start", "optim.new_branch_lr_scale"} <= trial_identity(trial).keys()
    for key, value in (("model.new_branch_start", 0.1), ("optim.new_branch_lr_scale", 10.0)):
        assert identity_difference(tiny(**base, **{key: value}), trial_identity(trial)) == key
