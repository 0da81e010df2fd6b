"""Shared helpers for the searchspace tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from searchspace import IdentityBasedConv1x1


def _randomize_bn(model: nn.Module, generator: torch.Generator, warmup: torch.Tensor | None = None,
                  spread: float = 1.0) -> None:
    """Move BN statistics with training forwards, then set random ones far from identity.

    Also perturbs identity-based 1x1 kernels so they are no longer the identity.
    ``spread`` scales how far statistics go (1.0: far; small values keep deep nets tame).
    """
    if warmup is not None:
        model.train()
        with torch.no_grad():
            for _ in range(2):
                model(warmup)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            opts = {"generator": generator, "dtype": m.weight.dtype}
            sign = torch.where(torch.rand(c, **opts) < 0.5, -1.0, 1.0).to(m.weight.dtype)
            with torch.no_grad():
                m.weight.copy_(sign * (1 + spread * (torch.rand(c, **opts) * 1.5 - 0.5)))
                m.bias.copy_(spread * 2 * torch.randn(c, **opts))
                m.running_mean.copy_(spread * 2 * torch.randn(c, **opts))
                m.running_var.copy_(1 + spread * (torch.rand(c, **opts) * 4 - 0.9))
        if isinstance(m, IdentityBasedConv1x1):
            with torch.no_grad():
                m.weight.copy_(0.3 * torch.randn(m.weight.shape, generator=generator, dtype=m.weight.dtype))
    model.eval()


@pytest.fixture
def randomize_bn() -> Callable[..., None]:
    """``randomize_bn(model, generator, warmup=None, spread=1.0)``: see ``_randomize_bn``."""
    return _randomize_bn


def _assert_fuses_exactly(block: nn.Module, generator: torch.Generator, kernel_size: int, stride: int,
                          groups: int, tol: float = 1e-9) -> None:
    """``block.fuse()`` is one KxK conv of the block's geometry computing what the float64 block
    computes (eval mode), on inputs of odd height and width, to ``tol``."""
    fused = block.fuse()
    assert (fused.kernel_size, fused.stride, fused.padding, fused.groups) == (
        (kernel_size, kernel_size), (stride, stride), (kernel_size // 2,) * 2, groups)
    cin = fused.in_channels
    for h, w in ((7, 9), (11, 13)):
        x = torch.randn(2, cin, h, w, generator=generator, dtype=torch.float64) * 3
        with torch.no_grad():
            ref, out = block(x), fused(x)
        assert out.shape == ref.shape
        assert 1.0 <= ref.abs().max() <= 1000.0  # outputs of a meaningful magnitude
        assert (out - ref).abs().max() <= tol, (out - ref).abs().max()


@pytest.fixture
def assert_fuses_exactly() -> Callable[..., None]:
    """``assert_fuses_exactly(block, generator, kernel_size, stride, groups)``: see ``_assert_fuses_exactly``."""
    return _assert_fuses_exactly
