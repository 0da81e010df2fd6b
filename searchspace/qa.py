"""Quantization-aware block forms (QARepVGG arrangement; Chu et al., AAAI 2024).

A RepVGG block puts a BatchNorm on every branch. The identity's and the 1x1's BNs scale each
channel by ``gamma / sigma``, freely and independently of the KxK branch, and the fused kernel
and the block's output inherit those scales: per-channel ranges that INT8 quantization, with
one scale per tensor (activations) or per output channel (weights), resolves badly. The
quantization-aware arrangement removes them: the identity is ``x`` itself, the 1x1 branch a
bare conv, and ONE BatchNorm follows the branch sum. It still fuses exactly into one KxK conv
with bias: sum the branch kernels (T2, T6), then fold the block's BN (T1).

* :class:`QAODBB` (``reparam: offline_qa``): the other branches (``kxk``, ``1x1_kxk``,
  ``1x1_avg``, ``1xk``, ``kx1``) keep their own BNs, as the KxK branch of QARepVGG does.
* :class:`OnlineQAODBB` (``reparam: online_qa``): the online form already has one BN after
  the composed conv; here the identity's and the 1x1's per-channel scales are fixed at 1
  (constants, not parameters), the online counterpart of removing their BNs.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from .branches import IDENTITY
from .fusion import fold_bn, identity_kernel
from .odbb import ODBB
from .online import OnlineODBB, _Scaled

__all__ = ["BareConv1x1", "BareIdentity", "QAODBB", "OnlineQAODBB", "QA_BRANCHES"]

QA_BRANCHES: tuple[str, ...] = ("1x1", IDENTITY)
"""The branches that lose their normalisation (offline: BN; online: learnable scale)."""


class BareConv1x1(nn.Conv2d):
    """The ``1x1`` branch without BN: a bias-free 1x1 conv with the block's stride and groups."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int) -> None:
        super().__init__(in_channels, out_channels, 1, stride, 0, groups=groups, bias=False)

    def fuse_kernel(self) -> tuple[Tensor, Tensor]:
        """(1x1 kernel, zero bias)."""
        return self.weight, torch.zeros_like(self.weight[:, 0, 0, 0])


class BareIdentity(nn.Module):
    """The identity branch without BN: ``x``; folds as a (grouped) identity kernel."""

    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__()
        self.groups = groups
        self.eye: Tensor
        self.register_buffer("eye", identity_kernel(channels, 1, groups), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def fuse_kernel(self) -> tuple[Tensor, Tensor]:
        """(1x1 identity kernel, zero bias)."""
        return self.eye, torch.zeros_like(self.eye[:, 0, 0, 0])

    def extra_repr(self) -> str:
        return f"{self.eye.shape[0]}, groups={self.groups}"


class QAODBB(ODBB):
    """Offline quantization-aware ODBB: ``BN(x + conv1x1(x) + sum_{other i} gate_i * branch_i(x))``.

    Same constructor, mask, gates and ``fuse()`` as :class:`ODBB`; the identity (where it
    exists) and the 1x1 branch carry no BN, the block's ``bn`` follows the sum.
    """

    reparam: ClassVar[str] = "offline_qa"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.bn = nn.BatchNorm2d(self.out_channels)

    def _make_branch(self, name: str) -> nn.Module:
        if name == "1x1":
            return BareConv1x1(self.in_channels, self.out_channels, self.stride, self.groups)
        return super()._make_branch(name)

    def _make_identity(self) -> nn.Module:
        return BareIdentity(self.out_channels, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(super().forward(x))

    def fuse_kernel(self) -> tuple[Tensor, Tensor]:
        """(KxK kernel, bias): the branch sum (T2, T6), then the block BN folded in (T1)."""
        kernel, bias = super().fuse_kernel()
        bn = self.bn
        assert bn.running_mean is not None and bn.running_var is not None
        return fold_bn(kernel, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps, bias)


def _unit_scale(module: _Scaled) -> _Scaled:
    """``module`` with its learnable per-channel scale replaced by a constant 1 (a buffer, not saved)."""
    channels = module.scale.numel()
    del module.scale
    module.register_buffer("scale", torch.ones(channels), persistent=False)
    return module


class OnlineQAODBB(OnlineODBB):
    """Online quantization-aware ODBB: as :class:`OnlineODBB`, with the identity's and the 1x1's
    scales fixed at 1 (the search gate still multiplies the 1x1)."""

    reparam: ClassVar[str] = "online_qa"

    def _make_branch(self, name: str) -> nn.Module:
        branch = super()._make_branch(name)
        return _unit_scale(branch) if name == "1x1" else branch  # type: ignore[arg-type]

    def _make_identity(self) -> nn.Module:
        return _unit_scale(super()._make_identity())  # type: ignore[arg-type]
