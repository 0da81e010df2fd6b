"""RepVGG-style plain hosts (RepNAS's host): a stack of ODBB + ReLU layers, then a head.

Paper widths (RepVGG, Ding et al. 2021): ``min(64, 64a), 64a, 128a, 256a, 512b`` with
A0 a=0.75 b=2.5, A1 a=1 b=2.5, A2 a=1.5 b=2.75, B1 a=2 b=4; depths 1,2,4,14,1 (A) and
1,4,6,16,1 (B); the first layer of every stage has stride 2. Each layer is an ODBB
(identity branch where stride 1 and C_in == C_out) followed by ReLU; the head is
GAP -> dropout 0.1 -> FC as in RepNAS.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from functools import partial

from torch import Tensor, nn

from ..branches import BRANCH_TYPES
from ..forms import odbb_class
from .common import classifier_head, stage_plan
from .registry import register_model

__all__ = ["RepVGG", "repvgg_widths"]

A_DEPTHS = (1, 2, 4, 14, 1)
B_DEPTHS = (1, 4, 6, 16, 1)


def repvgg_widths(a: float, b: float) -> tuple[int, ...]:
    """Stage widths of RepVGG with width multipliers ``a`` (stages 0-3) and ``b`` (last)."""
    return (min(64, int(64 * a)), int(64 * a), int(128 * a), int(256 * a), int(512 * b))


class RepVGG(nn.Module):
    """Plain stack of ``ODBB -> ReLU`` layers in stages (``stages.<s>.<i>.conv``), then a head."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        branches: Iterable[str] = BRANCH_TYPES,
        widths: Sequence[int] = repvgg_widths(0.75, 2.5),
        depths: Sequence[int] = A_DEPTHS,
        strides: Sequence[int] | None = None,
        width_multiplier: float = 1.0,
        identity: bool = True,
        dropout: float = 0.1,
        kernel_size: int = 3,
        reparam: str = "offline",
    ) -> None:
        super().__init__()
        branches = tuple(branches)
        block = odbb_class(reparam)
        plan = stage_plan(widths, depths, strides if strides is not None else [2] * len(depths), width_multiplier)
        stages = []
        channels = in_channels
        for width, depth, stride in plan:
            layers = []
            for i in range(depth):
                conv = block(channels, width, kernel_size, stride if i == 0 else 1, branches=branches,
                            identity=identity)
                layers.append(nn.Sequential(OrderedDict(conv=conv, act=nn.ReLU())))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = classifier_head(channels, num_classes, dropout)

    def forward(self, x: Tensor) -> Tensor:
        # Iterate instead of calling the containers: at batch 1 their call overhead is ~2%
        # of a deploy RepVGG-A0 on CPU, which would show up against a flat plain network.
        for stage in self.stages:
            for layer in stage:
                x = layer.act(layer.conv(x))
        return self.head(x)


register_model(partial(RepVGG, widths=repvgg_widths(0.75, 2.5), depths=A_DEPTHS), name="repvgg_a0")
register_model(partial(RepVGG, widths=repvgg_widths(1.0, 2.5), depths=A_DEPTHS), name="repvgg_a1")
register_model(partial(RepVGG, widths=repvgg_widths(1.5, 2.75), depths=A_DEPTHS), name="repvgg_a2")
register_model(partial(RepVGG, widths=repvgg_widths(2.0, 4.0), depths=B_DEPTHS), name="repvgg_b1")
# Small host for tests, 8x8 digits and 28x28 (Fashion-)MNIST on CPU: 5 layers, 3 stages.
register_model(partial(RepVGG, widths=(16, 32, 64), depths=(1, 2, 2), strides=(1, 2, 2)), name="repvgg_tiny")
