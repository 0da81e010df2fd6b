"""Pure fusion math of structural re-parameterization (DBB's transformations T1-T6).

Every function takes tensors and returns tensors: no modules, no state. The modules in
``branches.py`` and ``odbb.py`` read their parameters and running statistics and call
these functions, so the math can be tested on its own and reused by other code.

Conventions: a conv kernel has shape ``[out, in // groups, kh, kw]``; a (kernel, bias)
pair describes ``conv(x, kernel, padding=kh//2, kw//2) + bias`` in eval semantics;
BatchNorm is ``gamma * (z - mean) / sqrt(var + eps) + beta`` per channel.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bn_affine",
    "fold_bn",
    "identity_kernel",
    "avg_pool_kernel",
    "avg_pool_after_1x1",
    "merge_1x1_kxk",
    "chain_1x1_kxk",
    "scaled_chain_1x1_kxk",
    "scale_kernel",
    "pad_kernel_to",
    "sum_kernels",
]


def bn_affine(
    running_mean: Tensor, running_var: Tensor, weight: Tensor, bias: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``scale * z + shift`` per channel.

    ``shift`` is also the BN's output for a zero input, the value DBB pads with (T3).
    """
    scale = weight / torch.sqrt(running_var + eps)
    return scale, bias - running_mean * scale


def fold_bn(
    kernel: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor,
    bias: Tensor,
    eps: float,
    conv_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """T1: fold a BatchNorm that follows a conv (bias-free unless ``conv_bias``) into (kernel, bias)."""
    scale, shift = bn_affine(running_mean, running_var, weight, bias, eps)
    if conv_bias is not None:
        shift = shift + scale * conv_bias
    return scale_kernel(kernel, scale), shift


def scale_kernel(kernel: Tensor, scale: Tensor) -> Tensor:
    """Multiply every output channel ``o`` of ``kernel`` by ``scale[o]`` (a per-channel scale after a conv)."""
    return kernel * scale.reshape(-1, 1, 1, 1)


def _grouped_eye(channels: int, groups: int, dtype: torch.dtype | None, device: torch.device | None) -> Tensor:
    """``[channels, channels // groups]`` matrix with 1 where ``c == o mod (channels // groups)``."""
    if groups < 1 or channels % groups:
        raise ValueError(f"groups={groups} must divide channels={channels}")
    per_group = channels // groups
    # made on the CPU, then moved: on the meta device (where trials are validated) the indexing
    # runs a Python decomposition that imports torch._dynamo, about 1 s per process
    target = torch.empty(0, device=device).device  # the ambient device when device is None
    cpu = torch.device("cpu")
    out_index = torch.arange(channels, device=cpu)
    eye = torch.zeros(channels, per_group, dtype=dtype, device=cpu)
    eye[out_index, out_index % per_group] = 1
    return eye.to(target)


def identity_kernel(
    channels: int,
    kernel_size: int,
    groups: int = 1,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Identity as a KxK grouped conv: 1 at the centre where ``c == o mod (C/g)``."""
    eye = _grouped_eye(channels, groups, dtype, device)
    return pad_kernel_to(eye[:, :, None, None], kernel_size)


def avg_pool_kernel(
    channels: int,
    kernel_size: int,
    groups: int = 1,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """T5: ``AvgPool2d(K)`` (``count_include_pad=True``) as a KxK grouped conv kernel."""
    eye = _grouped_eye(channels, groups, dtype, device)
    window = torch.full((kernel_size, kernel_size), 1.0 / kernel_size**2, dtype=eye.dtype, device=device)
    return eye[:, :, None, None] * window


def avg_pool_after_1x1(kernel1: Tensor, kernel_size: int) -> Tensor:
    """T3+T5 in closed form: a 1x1 conv, then ``AvgPool2d(K)`` as one KxK kernel.

    Average pooling is per channel, so the merge is the 1x1 kernel spread uniformly over
    KxK; the 1x1's bias passes through unchanged (the window weights sum to 1), provided
    the pooled map is padded with that bias (``BNAndPad``). Equal to
    ``merge_1x1_kxk(kernel1, b1, avg_pool_kernel(...), 0, groups)`` without its dense
    ``[O, O/g, K, K]`` intermediate.
    """
    return kernel1.expand(-1, -1, kernel_size, kernel_size) / kernel_size**2


def chain_1x1_kxk(kernel1: Tensor, kernel2: Tensor, groups: int = 1) -> Tensor:
    """T3/T4 without biases: a 1x1 conv then a KxK conv as one KxK kernel, per group.

    ``kernel1`` is ``[T, C/g, 1, 1]``, ``kernel2`` is ``[O, T/g, K, K]``. Exact with zero
    padding when nothing between the two convs adds a bias (the online blocks); with a
    bias in between see :func:`merge_1x1_kxk`. Costs ``O * T * C * K^2 / g^2`` multiply-adds.
    """
    mid, in_per_group = kernel1.shape[:2]
    out, mid_per_group, kh, kw = kernel2.shape
    if mid != mid_per_group * groups or out % groups:
        raise ValueError(
            f"kernel shapes {tuple(kernel1.shape)} and {tuple(kernel2.shape)} do not chain with groups={groups}"
        )
    k1 = kernel1.reshape(groups, mid_per_group, in_per_group)
    k2 = kernel2.reshape(groups, out // groups, mid_per_group, kh, kw)
    return torch.einsum("gotyx,gtc->gocyx", k2, k1).reshape(out, in_per_group, kh, kw)


class _ScaledChain(torch.autograd.Function):
    """``scale_kernel(chain_1x1_kxk(k1, k2, g), s)`` that saves only its inputs for backward.

    Autograd of the two-step form keeps the ``[O, C/g, K, K]`` chained kernel until backward
    (for the scale's gradient), one kernel per block of every training step. All three
    gradients follow from ``M = dL/dK . k1`` (the contraction over C), which backward needs
    anyway: ``dk2 = s * M``, ``ds = <M, k2>`` per output channel, ``dk1 = <s * dL/dK, k2>``.
    """

    @staticmethod
    def forward(ctx, kernel1: Tensor, kernel2: Tensor, scale: Tensor, groups: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(kernel1, kernel2, scale)
        ctx.groups = groups
        return scale_kernel(chain_1x1_kxk(kernel1, kernel2, groups), scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        kernel1, kernel2, scale = ctx.saved_tensors
        g = ctx.groups
        in_per_group = kernel1.shape[1]
        out, mid_per_group, kh, kw = kernel2.shape
        k1 = kernel1.reshape(g, mid_per_group, in_per_group)
        k2 = kernel2.reshape(g, out // g, mid_per_group, kh, kw)
        s = scale.reshape(g, out // g, 1, 1, 1)
        grad_r = grad.reshape(g, out // g, in_per_group, kh, kw)
        need1, need2, need_s = ctx.needs_input_grad[:3]
        grad1 = grad2 = grad_s = None
        if need2 or need_s:
            m = torch.einsum("gocyx,gtc->gotyx", grad_r, k1)
            grad2 = (m * s).reshape(kernel2.shape) if need2 else None
            grad_s = (m * k2).sum((2, 3, 4)).reshape(out) if need_s else None
        if need1:
            grad1 = torch.einsum("gocyx,gotyx->gtc", grad_r * s, k2).reshape(kernel1.shape)
        return grad1, grad2, grad_s, None


def scaled_chain_1x1_kxk(kernel1: Tensor, kernel2: Tensor, scale: Tensor, groups: int = 1) -> Tensor:
    """:func:`chain_1x1_kxk` with every output channel ``o`` multiplied by ``scale[o]``.

    Differentiable in all three tensors, and keeps no ``[O, C/g, K, K]`` intermediate for
    backward (the online 1x1->KxK branch's kernel, composed at every training step).
    """
    return _ScaledChain.apply(kernel1, kernel2, scale, groups)


def merge_1x1_kxk(
    kernel1: Tensor, bias1: Tensor, kernel2: Tensor, bias2: Tensor, groups: int = 1
) -> tuple[Tensor, Tensor]:
    """T3/T4: a 1x1 conv (``kernel1``, ``bias1``) followed by a KxK conv as one KxK conv.

    Exact only if the intermediate map is padded with ``bias1`` (not zeros) before the
    KxK conv runs with padding 0, as ``BNAndPad`` does. With groups the merge is done per
    group: ``kernel1`` is ``[T, C/g, 1, 1]``, ``kernel2`` is ``[O, T/g, K, K]``.
    """
    kernel = chain_1x1_kxk(kernel1, kernel2, groups)
    out, mid_per_group = kernel2.shape[:2]
    k2 = kernel2.reshape(groups, out // groups, mid_per_group, *kernel2.shape[2:])
    bias = bias2 + torch.einsum("gotyx,gt->go", k2, bias1.reshape(groups, mid_per_group)).reshape(out)
    return kernel, bias


def pad_kernel_to(kernel: Tensor, kernel_size: int | tuple[int, int]) -> Tensor:
    """T6: embed a centred ``kh x kw`` kernel (odd sizes) into ``kernel_size`` (``K`` or ``(KH, KW)``)."""
    kh, kw = kernel.shape[-2:]
    th, tw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    dh, dw = th - kh, tw - kw
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot centre a {kh}x{kw} kernel in {th}x{tw}; sizes must be odd")
    if not dh and not dw:
        return kernel  # already that size: no copy (autograd would keep it)
    return F.pad(kernel, [dw // 2, dw // 2, dh // 2, dh // 2])


def sum_kernels(pairs: Iterable[tuple[Tensor, Tensor]], kernel_size: int) -> tuple[Tensor, Tensor]:
    """T2: parallel branches as one conv: embed each kernel to KxK (T6), sum kernels and biases."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("sum_kernels needs at least one (kernel, bias) pair")
    kernel = sum(pad_kernel_to(k, kernel_size) for k, _ in pairs)
    bias = sum(b for _, b in pairs)
    return kernel, bias  # type: ignore[return-value]
