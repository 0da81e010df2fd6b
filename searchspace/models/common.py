"""Pieces shared by the host networks: option checks, width scaling, classifier head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["stage_plan", "classifier_head"]


def stage_plan(
    widths: Sequence[int], depths: Sequence[int], strides: Sequence[int], width_multiplier: float
) -> list[tuple[int, int, int]]:
    """Validated ``(width, depth, stride)`` per stage, widths scaled by ``width_multiplier``."""
    if not (len(widths) == len(depths) == len(strides)) or not widths:
        raise ValueError(
            f"widths={list(widths)}, depths={list(depths)} and strides={list(strides)} must be non-empty "
            f"and of equal length; allowed: one entry per stage"
        )
    if isinstance(width_multiplier, bool) or not isinstance(width_multiplier, (int, float)) or width_multiplier <= 0:
        raise ValueError(f"width_multiplier={width_multiplier!r} is invalid; allowed: a number > 0")
    for label, values in (("widths", widths), ("depths", depths), ("strides", strides)):
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"{label}={list(values)} is invalid; allowed: integers >= 1")
    return [(max(1, round(w * width_multiplier)), d, s) for w, d, s in zip(widths, depths, strides)]


def classifier_head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Global average pool -> dropout -> linear (RepNAS's RepVGG head)."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r} is invalid; allowed: 0 <= dropout < 1")
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(dropout), nn.Linear(in_features, num_classes)
    )
