"""Shared helpers for the trainables tests: tiny digits trials that run in seconds on CPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from trainables import TrialConfig, apply_overrides

TINY: dict[str, Any] = {
    "seed": 0,
    "model": {"name": "repvgg_tiny"},
    "data": {"dataset": "digits", "batch_size": 32, "limit_train": 320},
    "search": {"budget": 0.34, "epochs": 3, "random_epochs": 1, "search_epochs": 1},
    "runtime": {"device": "cpu", "num_threads": 1},
    "export": {"formats": ["state_dict"], "latency_min_run_time": 0.01},
}


def _tiny(**dotted: Any) -> TrialConfig:
    return TrialConfig.from_dict(apply_overrides(TINY, dotted))


@pytest.fixture
def tiny() -> Callable[..., TrialConfig]:
    """Factory: the tiny trial with dotted overrides (``tiny(**{"search.budget": 5})``)."""
    return _tiny


@pytest.fixture
def tiny_dict() -> dict[str, Any]:
    """A fresh copy of the tiny trial section."""
    return apply_overrides(TINY, {})
