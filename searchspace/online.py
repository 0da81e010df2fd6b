"""Online re-parameterization of the ODBB block (OREPA, Hu et al., CVPR 2022).

The offline block runs every active branch as its own convs and BatchNorms, so a training
step costs several convs per layer. Here each branch's BatchNorm is replaced by a learnable
per-output-channel scale, which makes every branch linear in its weights: at every step
the block composes ONE KxK kernel from the active branches (differentiably, with the
pure functions of :mod:`searchspace.fusion`) and runs one conv, then the block's single
BatchNorm (OREPA puts it there, after the composed conv). Inference folds that BatchNorm
into the kernel (T1), giving the same plain conv as the offline block.

Sequential branches compose exactly with zero padding because nothing between their two
convs adds a bias. The one composition that can cost more than the conv it saves is
1x1 -> KxK (``O * T * C * K^2 / g^2`` multiply-adds, independent of batch and image
size): on small feature maps that branch runs its two convs directly instead, computing
the same function (see :meth:`Online1x1KxK.runs_direct`). Likewise the identity is
``x * scale`` where the map has fewer positions than its kernel has weights
(:meth:`OnlineIdentity.runs_direct`). The search gate folds into each branch's scale. The
composed kernel is only as large as the active branches' footprints (a block left with its
1x1 runs a 1x1 conv); on the smallest maps each branch runs on its own and scales its output
instead (:meth:`_Scaled.runs_direct`).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .branches import BRANCH_TYPES, IDENTITY, first_1x1, first_1x1_kernel, is_depthwise
from .fusion import (
    avg_pool_after_1x1,
    avg_pool_kernel,
    fold_bn,
    identity_kernel,
    pad_kernel_to,
    scale_kernel,
    scaled_chain_1x1_kxk,
)
from .odbb import ODBB

__all__ = [
    "SCALE_INIT",
    "OnlineConv",
    "Online1x1KxK",
    "Online1x1Avg",
    "OnlineIdentity",
    "OnlineODBB",
    "build_online_branch",
]

SCALE_INIT: dict[str, float] = {
    "kxk": 0.25, "1x1_avg": 0.25, "1x1_kxk": 0.5, "1x1": 1.0, "1xk": 0.5, "kx1": 0.5, IDENTITY: 1.0,
}
"""Initial value of each branch's per-channel scale. OREPA's values for the branches it has
(origin KxK 0.25, 1x1->avg 0.25, 1x1->KxK 0.5, 1x1 1.0); 1xK/Kx1 take 1x1->KxK's 0.5 and the
identity 1.0 (RepVGG's identity BN starts at gamma = 1)."""


def _conv_weight(*shape: int) -> nn.Parameter:
    """A conv weight initialised as ``nn.Conv2d`` initialises it (as the offline branches' convs).

    Not OREPA's Kaiming init with ReLU gain: with one BN after the composed kernel the
    relative step of a branch is ``lr / |W|^2``, and the 6x larger variance of that init
    trained visibly slower here (benchmarks/README.md, "Online re-parameterization").
    """
    weight = torch.empty(*shape)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return nn.Parameter(weight)


class _Scaled(nn.Module):
    """A branch with a learnable per-output-channel scale in place of its BatchNorm.

    ``footprint`` is the smallest centred ``(kh, kw)`` kernel that holds the branch: a block
    whose active branches all fit in less than KxK composes and runs that smaller conv.
    ``stride`` and ``groups`` are the block's (the branch's own conv, where it runs directly).
    """

    def __init__(self, out_channels: int, init: float, kernel_size: int, footprint: tuple[int, int],
                 stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.kernel_size, self.footprint, self.stride, self.groups = kernel_size, footprint, stride, groups
        self.scale = nn.Parameter(torch.full((out_channels,), float(init)))

    def kernel(self, gate: Tensor | None = None, size: tuple[int, int] | None = None) -> Tensor:
        """The branch as one scaled kernel centred in ``size`` (default KxK): a pure function
        of its weights, scale and gate."""
        return pad_kernel_to(self._kernel(gate), size or self.kernel_size)

    def unscaled_kernel(self) -> Tensor:
        """The branch's kernel at its footprint, before its scale (what the default :meth:`_kernel`
        scales and :meth:`_unscaled_direct` runs; branches that override both need none)."""
        raise NotImplementedError

    def _kernel(self, gate: Tensor | None) -> Tensor:
        """The scaled kernel at its footprint."""
        return scale_kernel(self.unscaled_kernel(), self.channel_scale(gate))

    def _positions(self, x: Tensor) -> int:
        """``B * Ho * Wo``: the output positions of a conv on ``x`` (odd kernels, centred padding)."""
        batch, _, height, width = x.shape
        return batch * ((height - 1) // self.stride + 1) * ((width - 1) // self.stride + 1)

    def runs_direct(self, x: Tensor, alone: bool = False) -> bool:
        """True when computing the branch on ``x`` itself is cheaper than composing its kernel.

        ``alone`` (the block's only active term): the branch's conv is the block's conv either
        way, and running it on ``x`` moves the scale's passes (forward and backward) from the
        kernel (``C/g * kh * kw`` weights per output channel) to the output (``B*Ho*Wo``
        positions). Among other branches running directly also costs the branch's own conv,
        ``B*Ho*Wo * C/g * kh*kw`` multiply-adds per output channel, against passes over its
        kernel that cost tens of multiply-adds per element on a CPU: that pays off on maps with
        fewer positions than ``C/g`` (the late stages of a 32x32 network).
        """
        per_group = x.shape[1] // self.groups
        return self._positions(x) < per_group * (self.footprint[0] * self.footprint[1] if alone else 1)

    def direct(self, x: Tensor, gate: Tensor | None = None) -> Tensor:
        """The branch computed on ``x``, then its scale."""
        return self._unscaled_direct(x) * self.channel_scale(gate).reshape(1, -1, 1, 1)

    def _unscaled_direct(self, x: Tensor) -> Tensor:
        """The branch's own conv on ``x``, before its scale (zero padding is exact)."""
        kernel = self.unscaled_kernel()
        kh, kw = kernel.shape[-2:]
        return F.conv2d(x, kernel, stride=self.stride, padding=(kh // 2, kw // 2), groups=self.groups)

    def channel_scale(self, gate: Tensor | None) -> Tensor:
        """The per-channel scale with the search gate folded in: one ``[O]`` multiply instead
        of a pass over (and a saved copy of) the whole ``[O, C, K, K]`` kernel."""
        return self.scale if gate is None else self.scale * gate


class OnlineConv(_Scaled):
    """``kxk``, ``1x1``, ``1xk`` or ``kx1``: one conv, its kernel centred in KxK (T6)."""

    def __init__(self, in_channels: int, out_channels: int, kh: int, kw: int, kernel_size: int, stride: int,
                 groups: int, init: float) -> None:
        super().__init__(out_channels, init, kernel_size, (kh, kw), stride, groups)
        self.weight = _conv_weight(out_channels, in_channels // groups, kh, kw)

    def unscaled_kernel(self) -> Tensor:
        return self.weight  # scaled before it is embedded: the multiply runs on the small kernel


class Online1x1KxK(_Scaled):
    """``1x1_kxk``: identity-initialised 1x1 (2x wide, plain, for depthwise) then KxK, composed (T3/T4)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int,
                 init: float) -> None:
        super().__init__(out_channels, init, kernel_size, (kernel_size, kernel_size), stride, groups)
        self.conv1 = first_1x1(in_channels, out_channels, groups)
        mid = self.conv1.weight.shape[0]  # the kernel's width, without computing it
        self.weight2 = _conv_weight(out_channels, mid // groups, kernel_size, kernel_size)

    def _kernel(self, gate: Tensor | None) -> Tensor:
        return scaled_chain_1x1_kxk(first_1x1_kernel(self.conv1), self.weight2, self.channel_scale(gate), self.groups)

    def runs_direct(self, x: Tensor, alone: bool = False) -> bool:
        """True when running the two convs on ``x`` costs fewer multiply-adds than composing
        (or on the small maps of :meth:`_Scaled.runs_direct`).

        Composing costs ``O * T * C * K^2 / g^2`` whatever the input; running directly costs
        the 1x1 conv (``B*H*W * T * C/g``) plus the KxK conv (``B*Ho*Wo * O * T/g * K^2``).
        The composed kernel itself joins the block's one conv at no extra cost.
        """
        batch, channels, height, width = x.shape
        mid, out, k, g = self.weight2.shape[1] * self.groups, self.weight2.shape[0], self.kernel_size, self.groups
        compose = out * mid * channels * k * k // (g * g)
        direct = batch * height * width * mid * channels // g + self._positions(x) * out * mid * k * k // g
        return direct < compose or super().runs_direct(x, alone)

    def _unscaled_direct(self, x: Tensor) -> Tensor:
        """The branch computed conv by conv (zero padding is exact: no bias in between)."""
        return F.conv2d(self.conv1(x), self.weight2, stride=self.stride, padding=self.kernel_size // 2,
                        groups=self.groups)


class Online1x1Avg(_Scaled):
    """``1x1_avg``: 1x1 then AvgPool(K) as one kernel (T3+T5); depthwise: the pool alone (T5)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int,
                 init: float) -> None:
        super().__init__(out_channels, init, kernel_size, (kernel_size, kernel_size), stride, groups)
        self.weight: nn.Parameter | None = None
        if not is_depthwise(in_channels, out_channels, groups):
            self.weight = _conv_weight(out_channels, in_channels // groups, 1, 1)

    def _kernel(self, gate: Tensor | None) -> Tensor:
        s = self.channel_scale(gate)
        if self.weight is not None:
            return avg_pool_after_1x1(scale_kernel(self.weight, s), self.kernel_size)
        # made in the scale's dtype, not kept as a buffer: 1/K^2 in float32 is off by 1e-9 in float64
        return scale_kernel(avg_pool_kernel(s.numel(), self.kernel_size, self.groups, s.dtype, s.device), s)

    def _unscaled_direct(self, x: Tensor) -> Tensor:
        """The 1x1 conv, then the pool (``count_include_pad``, as the kernel counts the padding)."""
        z = x if self.weight is None else F.conv2d(x, self.weight, groups=self.groups)
        return F.avg_pool2d(z, self.kernel_size, self.stride, self.kernel_size // 2, count_include_pad=True)


class OnlineIdentity(_Scaled):
    """``identity``: a scaled (grouped) identity kernel, 1x1 until embedded."""

    def __init__(self, channels: int, kernel_size: int, groups: int, init: float = SCALE_INIT[IDENTITY]) -> None:
        super().__init__(channels, init, kernel_size, (1, 1), 1, groups)
        self.register_buffer("eye", identity_kernel(channels, 1, groups), persistent=False)

    def unscaled_kernel(self) -> Tensor:
        return self.eye

    def runs_direct(self, x: Tensor, alone: bool = False) -> bool:
        """True when ``x * scale`` (``B*H*W*C``) is cheaper than the scaled identity kernel
        (up to ``C * C/g * K^2``, and the same again in backward): on small feature maps."""
        return self._positions(x) < self.eye.shape[1] * self.kernel_size**2

    def _unscaled_direct(self, x: Tensor) -> Tensor:
        return x


def build_online_branch(
    name: str, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int
) -> _Scaled:
    """The online module of branch ``name`` (one of ``BRANCH_TYPES``) for a KxK conv layer.

    The stride is the block's: every branch yields an un-strided kernel for its one conv.
    """
    k = kernel_size
    shapes = {"1x1": (1, 1), "kxk": (k, k), "1xk": (1, k), "kx1": (k, 1)}
    if name in shapes:
        return OnlineConv(in_channels, out_channels, *shapes[name], k, stride, groups, SCALE_INIT[name])
    if name == "1x1_kxk":
        return Online1x1KxK(in_channels, out_channels, k, stride, groups, SCALE_INIT[name])
    if name == "1x1_avg":
        return Online1x1Avg(in_channels, out_channels, k, stride, groups, SCALE_INIT[name])
    raise ValueError(f"unknown branch {name!r}; allowed: {', '.join(BRANCH_TYPES)}")


class OnlineODBB(ODBB):
    """ODBB trained online: ``BN(conv(x, sum_{i active} gate_i * kernel_i + kernel_identity))``.

    Same constructor, mask, gates and ``fuse()`` as :class:`ODBB`; the gate of a branch
    multiplies its kernel, so alpha's gradient is ``<dL/dW, kernel_i>``. Inactive branches
    are never composed, and the composed kernel is only as large as the active branches'
    footprints need (a block whose only branch is the 1x1 runs a 1x1 conv while it trains;
    ``fuse()`` always gives the KxK deploy conv).
    """

    reparam = "online"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.bn = nn.BatchNorm2d(self.out_channels)

    def _make_branch(self, name: str) -> nn.Module:
        return build_online_branch(name, self.in_channels, self.out_channels, self.kernel_size, self.stride,
                                   self.groups)

    def _make_identity(self) -> nn.Module:
        return OnlineIdentity(self.out_channels, self.kernel_size, self.groups)

    def _conv(self, x: Tensor, kernel: Tensor) -> Tensor:
        """The block's conv with ``kernel`` centred (zero padding of a smaller kernel is exact)."""
        kh, kw = kernel.shape[-2:]
        return F.conv2d(x, kernel, stride=self.stride, padding=(kh // 2, kw // 2), groups=self.groups)

    def forward(self, x: Tensor) -> Tensor:
        gates = self._gates
        terms: list[tuple[_Scaled, Tensor | None]] = [] if self.identity is None else [(self.identity, None)]
        for i, (name, on) in enumerate(zip(self.branch_names, self._active_flags())):
            if on:
                terms.append((self.branches[name], None if gates is None else gates[i]))
        if not terms:
            raise self._no_branch_error()
        composed: list[tuple[_Scaled, Tensor | None]] = []
        direct: Tensor | None = None
        for module, gate in terms:
            if module.runs_direct(x, alone=len(terms) == 1):
                y = module.direct(x, gate)
                direct = y if direct is None else direct + y
            else:
                composed.append((module, gate))
        out = direct
        if composed:
            y = self._composed_conv(x, composed)
            out = y if out is None else y + out
        return self.bn(out)

    def _composed_conv(self, x: Tensor, composed: list[tuple[_Scaled, Tensor | None]]) -> Tensor:
        """The one conv of the composed branches, with a kernel as small as their footprints allow.

        Under autocast the kernel is still composed in the weights' dtype (float32): the
        composition is a few small einsums whatever the batch, and rounding every branch's
        kernel to bf16/fp16 before the sum would put that rounding into the gates' gradients.
        Only the conv itself runs in the autocast dtype.
        """
        size = (max(m.footprint[0] for m, _ in composed), max(m.footprint[1] for m, _ in composed))
        with torch.autocast(x.device.type, enabled=False) if torch.is_autocast_enabled(x.device.type) \
                else contextlib.nullcontext():
            kernel = composed[0][0].kernel(composed[0][1], size)
            for module, gate in composed[1:]:
                kernel = kernel + module.kernel(gate, size)
        return self._conv(x, kernel)

    def fuse_kernel(self) -> tuple[Tensor, Tensor]:
        """(KxK kernel, bias): the composed kernel of the active branches, the block BN folded in (T1)."""
        kernel = sum(m.kernel() for m in self._fused_modules())
        bn = self.bn
        assert bn.running_mean is not None and bn.running_var is not None
        return fold_bn(kernel, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)  # type: ignore[arg-type]
