"""Pure search math of RepNAS (DESIGN.md section 3): tensors in, tensors out, no state.

The candidate branches of all ODBB layers form one flat vector of length N (layer by
layer, each layer's ``branch_names`` in order). Masks are bool tensors over that vector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "budget_to_k",
    "logistic_noise",
    "topk_mask",
    "random_mask",
    "straight_through",
    "apply_fallback",
    "cosine",
    "layer_index",
]

_EPS = 1e-6


def budget_to_k(budget: int | float, num_candidates: int) -> int:
    """Branches to keep: ``floor(N * budget)`` for a float ratio, the count itself for an int.

    Raises ValueError when the result is below 1 or above ``num_candidates``.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ValueError(f"budget must be a number, got {budget!r}")
    if isinstance(budget, float):
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"a ratio budget must be in (0, 1], got {budget}")
        k = math.floor(num_candidates * budget + 1e-9)
        if k < 1:
            raise ValueError(f"ratio {budget} of {num_candidates} candidates keeps no branch; raise it to at least {1 / num_candidates:.4f}")
        return k
    if not 1 <= budget <= num_candidates:
        raise ValueError(f"{budget} branches requested but the model has only {num_candidates} candidates")
    return budget


def logistic_noise(n: int, generator: torch.Generator) -> torch.Tensor:
    """``g1 - g2`` with ``g = -log(-log U)``, U ~ Uniform(0, 1): standard logistic noise [n]."""
    u = torch.rand(2, n, generator=generator).clamp_(_EPS, 1.0 - _EPS)
    g = -torch.log(-torch.log(u))
    return g[0] - g[1]


def topk_mask(scores: torch.Tensor, k: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask of the global top-``k`` entries of ``scores`` (ties: lower index wins).

    ``valid`` (bool, same shape) excludes slots that do not exist (e.g. a depthwise layer's
    missing 1x1 in an L x 6 matrix); they are never selected.
    """
    flat = scores.detach().reshape(-1).float()
    if valid is not None:
        flat = flat.masked_fill(~valid.reshape(-1), float("-inf"))
        available = int(valid.sum())
    else:
        available = flat.numel()
    if not 0 <= k <= available:
        raise ValueError(f"cannot keep {k} of {available} candidates")
    # stable descending sort gives deterministic tie-breaking by index
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[order] = True
    return mask.reshape(scores.shape)


def random_mask(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random ``k``-subset of ``n`` slots as a bool mask (the random phase)."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:k]] = True
    return mask


def straight_through(mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Gate ``z = m + sigmoid(r) - stopgrad(sigmoid(r))``: value exactly ``m``, gradient sigmoid'(r)."""
    s = torch.sigmoid(logits)
    return mask.to(logits.dtype) + s - s.detach()


def layer_index(sizes: Sequence[int]) -> torch.Tensor:
    """Layer id of every flat slot, e.g. sizes (2, 3) -> [0, 0, 1, 1, 1]."""
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(list(sizes), dtype=torch.long))


def apply_fallback(mask: torch.Tensor, sizes: Sequence[int], fallback: torch.Tensor) -> torch.Tensor:
    """Turn on ``fallback[l]`` (a flat slot, or -1 for none) for every layer l that selected nothing.

    Used for layers without identity (stride 2 or C_in != C_out), whose output would
    otherwise be empty; their fallback is the ``kxk`` branch (DESIGN.md section 3).
    """
    counts = torch.zeros(len(sizes), dtype=torch.long).index_add_(0, layer_index(sizes), mask.long().cpu())
    need = (counts == 0) & (fallback >= 0)
    out = mask.clone()
    out[fallback[need].to(out.device)] = True
    return out


def cosine(step: int, total: int, start: float, end: float = 0.0) -> float:
    """Cosine schedule from ``start`` (step 0) to ``end`` (step ``total`` and after)."""
    if total <= 0 or step >= total:
        return end
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * step / total))
