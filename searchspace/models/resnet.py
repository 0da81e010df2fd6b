"""ResNet-18/34 hosts (DBB's host): every KxK conv of a BasicBlock and of the stem is an ODBB.

The ODBBs here default to ``identity=False``: a BasicBlock already has a residual
shortcut, and an identity BN on top of it would change the architecture (DBB's ResNet
has none either). The 1x1 downsample of the shortcut is a ``ConvBN`` (folds, not searched).
Stems: ``"imagenet"`` (7x7 stride-2 ODBB + 3x3 max-pool) or ``"small"`` (3x3 stride-1
ODBB, no pool) for 32x32, 28x28 or 8x8 inputs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from functools import partial

from torch import Tensor, nn

from ..branches import BRANCH_TYPES, ConvBN
from ..forms import odbb_class
from .common import classifier_head, stage_plan
from .registry import register_model

__all__ = ["ResNet", "BasicBlock"]

STEMS = ("imagenet", "small")


class BasicBlock(nn.Module):
    """``relu(conv2(relu(conv1(x))) + shortcut(x))`` with ODBB convs."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, kernel_size: int,
        branches: tuple[str, ...], identity: bool, reparam: str = "offline",
    ) -> None:
        super().__init__()
        block = odbb_class(reparam)
        self.conv1 = block(in_channels, out_channels, kernel_size, stride, branches=branches, identity=identity)
        self.act1 = nn.ReLU()
        self.conv2 = block(out_channels, out_channels, kernel_size, 1, branches=branches, identity=identity)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = ConvBN(in_channels, out_channels, 1, stride)
        self.act2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act2(self.conv2(self.act1(self.conv1(x))) + shortcut)


class ResNet(nn.Module):
    """ResNet of BasicBlocks: ``stem`` -> ``stages.<s>.<b>`` -> head (GAP -> dropout -> FC)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        branches: Iterable[str] = BRANCH_TYPES,
        widths: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 2, 2),
        strides: Sequence[int] | None = None,
        width_multiplier: float = 1.0,
        stem: str = "imagenet",
        identity: bool = False,
        dropout: float = 0.0,
        kernel_size: int = 3,
        reparam: str = "offline",
    ) -> None:
        super().__init__()
        branches = tuple(branches)
        block = odbb_class(reparam)
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; allowed: {', '.join(STEMS)}")
        plan = stage_plan(widths, depths, strides if strides is not None else [1] + [2] * (len(depths) - 1),
                          width_multiplier)
        channels = plan[0][0]
        if stem == "imagenet":
            self.stem = nn.Sequential(OrderedDict(
                conv=block(in_channels, channels, 7, 2, branches=branches, identity=identity),
                act=nn.ReLU(),
                pool=nn.MaxPool2d(3, 2, 1),
            ))
        else:
            self.stem = nn.Sequential(OrderedDict(
                conv=block(in_channels, channels, kernel_size, 1, branches=branches, identity=identity),
                act=nn.ReLU(),
            ))
        stages = []
        for width, depth, stride in plan:
            blocks = []
            for i in range(depth):
                blocks.append(BasicBlock(channels, width, stride if i == 0 else 1, kernel_size, branches, identity, reparam))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = classifier_head(channels, num_classes, dropout)

    def forward(self, x: Tensor) -> Tensor:
        for module in self.stem:  # iterate rather than call containers (CPU call overhead, see RepVGG)
            x = module(x)
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.head(x)


register_model(partial(ResNet, depths=(2, 2, 2, 2)), name="resnet18")
register_model(partial(ResNet, depths=(3, 4, 6, 3)), name="resnet34")
# Small host for tests and CPU quickstarts: 3 stages of one block, small stem.
register_model(partial(ResNet, widths=(16, 32, 64), depths=(1, 1, 1), stem="small"), name="resnet_tiny")
