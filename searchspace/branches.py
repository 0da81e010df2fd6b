"""Branch modules of an ODBB block, each ending in BatchNorm and able to fold itself.

Every branch maps ``[N, C_in, H, W]`` to the output of the block's KxK conv (stride s,
padding K//2) and exposes ``fuse_kernel() -> (kernel, bias)``: a centred kernel of size
at most KxK (``1x1``, ``1xK``, ``Kx1`` or ``KxK``) and a bias, in eval semantics. The
block embeds the smaller kernels into KxK with :func:`searchspace.fusion.pad_kernel_to`.

Structures follow DBB's ``diversebranchblock.py``; see DESIGN.md section 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fusion import avg_pool_after_1x1, avg_pool_kernel, bn_affine, fold_bn, identity_kernel, merge_1x1_kxk

__all__ = [
    "BRANCH_TYPES",
    "IDENTITY",
    "ConvBN",
    "BNAndPad",
    "IdentityBN",
    "IdentityBasedConv1x1",
    "OneByOneKxK",
    "OneByOneAvg",
    "build_branch",
    "first_1x1",
    "first_1x1_kernel",
    "is_depthwise",
]


BRANCH_TYPES: tuple[str, ...] = ("1x1", "1x1_avg", "kxk", "1x1_kxk", "1xk", "kx1")
"""The searchable branch types, in RepNAS order."""

IDENTITY = "identity"
"""Name of the BN-only identity branch (never searched; present where stride 1 and C_in == C_out)."""


def is_depthwise(in_channels: int, out_channels: int, groups: int) -> bool:
    """True for a depthwise conv (``groups == in == out > 1``), where DBB changes branches."""
    return groups > 1 and groups == in_channels == out_channels


def _fold(kernel: Tensor, bn: nn.BatchNorm2d, conv_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """T1 with the statistics and affine parameters of a BatchNorm module."""
    assert bn.running_mean is not None and bn.running_var is not None
    return fold_bn(kernel, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps, conv_bias)


class ConvBN(nn.Module):
    """Bias-free conv followed by BatchNorm; folds into a conv with bias (T1)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))

    def fuse_kernel(self) -> tuple[Tensor, Tensor]:
        """Folded (kernel, bias) in the conv's own kernel size."""
        return _fold(self.conv.weight, self.bn)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """A conv with bias and the same geometry, equal to this module in eval mode."""
        c = self.conv
        fused = nn.Conv2d(
            c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, groups=c.groups, bias=True,
            device=c.weight.device, dtype=c.weight.dtype,
        )
        kernel, bias = self.fuse_kernel()
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)  # type: ignore[union-attr]
        return fused


class BNAndPad(nn.BatchNorm2d):
    """BatchNorm whose output is padded by ``pad`` pixels with the BN's zero-input value.

    The pad value comes from the running statistics, detached, in training too (as DBB's
    ``BNAndPadLayer``), so that a following KxK conv with padding 0 merges exactly with
    the preceding 1x1 conv (T3): the border then equals what the merged conv computes on
    the zero-padded input.
    """

    def __init__(self, num_features: int, pad: int) -> None:
        super().__init__(num_features)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        if self.pad == 0:
            return out
        assert self.running_mean is not None and self.running_var is not None
        _, value = bn_affine(
            self.running_mean, self.running_var, self.weight.detach(), self.bias.detach(), self.eps
        )
        value = value.reshape(1, -1, 1, 1)
        p = self.pad
        out = F.pad(out, [p, p, p, p])
        out[:, :, :p, :] = value
        out[:, :, -p:, :] = value
        out[:, :, :, :p] = value
        out[:, :, :, -p:] = value
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pad={self.pad}"


class IdentityBN(nn.BatchNorm2d):
    """The ``identity`` branch: BatchNorm only; folds as a grouped identity kernel (T1)."""

    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__(channels)
        self.groups = groups

    def fuse_kernel(self) -> tuple[Tensor, Tensor]:
        """Folded (1x1 kernel, bias): 1 where ``c == o mod (C/g)``, times the BN scale."""
        eye = identity_kernel(self.num_features, 1, self.groups, dtype=self.weight.dtype, device=self.weight.device)
        return _fold(eye, self)


class IdentityBasedConv1x1(nn.Module):
    """1x1 conv whose kernel is ``identity + weight`` with ``weight`` initialised to 0 (DBB).

    Starts as the identity, so the 1x1->KxK branch starts as a plain KxK; weight decay
    pulls it back towards the identity rather than towards zero.
    """

    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.zeros(channels, channels // groups, 1, 1))
        self.register_buffer("id_kernel", identity_kernel(channels, 1, groups), persistent=False)

    def kernel(self) -> Tensor:
        """The effective 1x1 kernel."""
        return self.weight + self.id_kernel

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.kernel(), groups=self.groups)


def first_1x1(in_channels: int, out_channels: int, groups: int) -> IdentityBasedConv1x1 | nn.Conv2d:
    """The 1x1 that starts a ``1x1_kxk`` branch: identity-based, width C_in; depthwise: a plain 1x1, 2*C_in wide (DBB)."""
    if is_depthwise(in_channels, out_channels, groups):
        return nn.Conv2d(in_channels, 2 * in_channels, 1, groups=groups, bias=False)
    return IdentityBasedConv1x1(in_channels, groups)


def first_1x1_kernel(conv: IdentityBasedConv1x1 | nn.Conv2d) -> Tensor:
    """The effective ``[T, C/g, 1, 1]`` kernel of a :func:`first_1x1` module."""
    return conv.kernel() if isinstance(conv, IdentityBasedConv1x1) else conv.weight


class OneByOneKxK(nn.Module):
    """``1x1_kxk`` branch: 1x1 -> BNAndPad(K//2) -> KxK (stride s, padding 0) -> BN.

    Internal width is C_in (identity-based 1x1) or 2*C_in for depthwise (a plain 1x1
    conv, as DBB). The stride goes on the KxK conv, so stride 2 is supported exactly
    rather than replaced by a second KxK as RepNAS does.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.conv1 = first_1x1(in_channels, out_channels, groups)
        mid = self.conv1.weight.shape[0]  # the kernel's width, without computing it
        self.bn1 = BNAndPad(mid, kernel_size // 2)
        self.conv2 = nn.Conv2d(mid, out_channels, kernel_size, stride, 0, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(self.bn1(self.conv1(x))))

    def fuse_kernel(self) -> tuple[Tensor, Tensor]:
        """T1 on both convs, then T3/T4 merge into one KxK (kernel, bias)."""
        k1, b1 = _fold(first_1x1_kernel(self.conv1), self.bn1)
        k2, b2 = _fold(self.conv2.weight, self.bn2)
        return merge_1x1_kxk(k1, b1, k2, b2, self.groups)


class OneByOneAvg(nn.Module):
    """``1x1_avg`` branch: 1x1 -> BNAndPad(K//2) -> AvgPool(K, s) -> BN.

    For depthwise (DBB) there is no 1x1 conv: AvgPool(K, s, padding K//2) -> BN.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.kernel_size = kernel_size
        self.conv: nn.Conv2d | None = None
        self.bn: BNAndPad | None = None
        pad = kernel_size // 2
        if not is_depthwise(in_channels, out_channels, groups):
            self.conv = nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=False)
            self.bn = BNAndPad(out_channels, pad)
            pad = 0
        self.avg = nn.AvgPool2d(kernel_size, stride, pad, count_include_pad=True)
        self.avgbn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is not None and self.bn is not None:
            x = self.bn(self.conv(x))
        return self.avgbn(self.avg(x))

    def fuse_kernel(self) -> tuple[Tensor, Tensor]:
        """Depthwise: T5 then T1. Otherwise T1 on the 1x1, the closed-form T3+T5, T1 on the pool's BN."""
        if self.conv is None or self.bn is None:
            w = self.avgbn.weight
            avg = avg_pool_kernel(w.shape[0], self.kernel_size, self.groups, dtype=w.dtype, device=w.device)
            return _fold(avg, self.avgbn)
        k1, b1 = _fold(self.conv.weight, self.bn)
        return _fold(avg_pool_after_1x1(k1, self.kernel_size), self.avgbn, b1)


def build_branch(
    name: str, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int
) -> nn.Module:
    """The branch module called ``name`` (one of ``BRANCH_TYPES``) for a KxK conv layer."""
    k, p = kernel_size, kernel_size // 2
    geometry: dict[str, tuple[int | tuple[int, int], int | tuple[int, int]]] = {
        "1x1": (1, 0), "kxk": (k, p), "1xk": ((1, k), (0, p)), "kx1": ((k, 1), (p, 0)),
    }
    if name in geometry:
        kernel, padding = geometry[name]
        return ConvBN(in_channels, out_channels, kernel, stride, padding, groups)
    if name == "1x1_kxk":
        return OneByOneKxK(in_channels, out_channels, k, stride, groups)
    if name == "1x1_avg":
        return OneByOneAvg(in_channels, out_channels, k, stride, groups)
    raise ValueError(f"unknown branch {name!r}; allowed: {', '.join(BRANCH_TYPES)}")
