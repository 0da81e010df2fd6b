"""Deterministic trial failures: a loss that is no longer finite.

A NaN/inf loss recurs when the trial is retried from its last checkpoint (every epoch
is reseeded from ``(seed, epoch)``), so retrying it is pointless. The Tune trainable
therefore does not hand it to Ray's ``FailureConfig``: it reports one last result with
``failed = 1.0`` and the reason in ``error`` and returns (see docs/failure-modes.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..config.metrics import EPOCH_METRICS
from ..errors import NonFiniteLossError

__all__ = ["check_finite", "failure_metrics", "failure_reason", "FAILED_KEY", "ERROR_KEY"]

FAILED_KEY, ERROR_KEY = "failed", "error"


def check_finite(loss: torch.Tensor | float, epoch: int, step: int | None = None, what: str = "training loss") -> None:
    """Raise :class:`NonFiniteLossError` unless ``loss`` is finite (one host sync for a tensor)."""
    value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(value, epoch, step, what)


def failure_metrics(error: NonFiniteLossError) -> dict[str, float | str]:
    """The last result a diverged trial reports: epoch metrics NaN, ``failed``, ``error``."""
    metrics: dict[str, float | str] = {name: math.nan for name in EPOCH_METRICS}
    metrics["epoch"] = float(error.epoch)
    metrics[FAILED_KEY] = 1.0
    metrics[ERROR_KEY] = f"{type(error).__name__}: {error}"
    return metrics


def failure_reason(metrics: Mapping[str, Any]) -> str | None:
    """The ``error`` of a result that :func:`failure_metrics` made (None for any other result)."""
    if metrics.get(FAILED_KEY) != 1.0:
        return None
    return str(metrics.get(ERROR_KEY) or "failed")
