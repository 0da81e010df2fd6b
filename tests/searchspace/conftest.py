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
