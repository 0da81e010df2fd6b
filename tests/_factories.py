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


def named_net(name: str, num_classes: int, branches: int = 8, reparam: str = "relu") -> nn.Module:
    """A builder whose parameters share their names with the project's own builder arguments
    (``name``, ``branches``, ``reparam``): options reach it whatever their names."""
    act = {"relu": nn.ReLU, "hardswish": nn.Hardswish}[reparam]
    assert name == "tiny", name
    return nn.Sequential(
        Conv2dNormActivation(3, branches, 3, activation_layer=act),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(branches, num_classes),
    )
