"""A user's own model builder, importable as ``_factories:small_net`` (tests put ``tests/`` on sys.path)."""

from __future__ import annotations

from torch import nn
from torchvision.ops import Conv2dNormActivation


def small_net(num_classes: int, in_channels: int = 3, width: int = 8) -> nn.Module:
    """Two conv -> BN -> ReLU layers (3x3, then a stride-2 depthwise 3x3), a 1x1, then a linear head."""
    return nn.Sequential(
        Conv2dNormActivation(in_channels, width, 3),
        Conv2dNormActivation(width, width, 3, stride=2, groups=width),
        Conv2dNormActivation(width, width, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(width, num_classes),
    )


NOT_CALLABLE = 3
