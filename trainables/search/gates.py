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
    "LOGISTIC_STD",
    "auto_arch_lr",
    "noise_temperature",
    "lr_factor",
    "min_kept",
    "floored_topk",
    "fair_mask",
    "fair_update",
    "keep_slots",
]

LOGISTIC_STD = math.pi / math.sqrt(3.0)
"""Standard deviation of the standard logistic noise ``g1 - g2`` (about 1.814)."""

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


# ------------------------------------------------------------------ recipe options (issue #13)
def auto_arch_lr(search_steps: int, travel: float = 1.0) -> float:
    """Alpha's Adam lr for ``search.arch_lr: auto``: ``travel * (pi / sqrt(3)) / S``.

    Adam's step is about ``lr`` per step whatever the gradient's scale, so over the ``S``
    search steps alpha can move by at most about ``lr * S``; this lr lets it move by
    ``travel`` standard deviations of the logistic noise (pi / sqrt(3) = 1.814). The paper
    (1e-4 over ~175k ImageNet steps) corresponds to a travel of about 9.6.
    """
    return travel * LOGISTIC_STD / max(1, search_steps)


def noise_temperature(step: int, total: int, schedule: str, final: float = 0.0) -> float:
    """Multiplier of the logistic noise at search step ``step`` of ``total`` (0-based).

    ``constant``: 1. ``linear`` / ``cosine``: from 1 at the first search step to ``final``
    at the last one (``step = total - 1``; progress ``p = step / (total - 1)``, clamped to
    [0, 1]), linearly or along half a cosine.
    """
    if schedule == "constant":
        return 1.0
    p = 1.0 if total <= 1 else min(max(step / (total - 1), 0.0), 1.0)
    if schedule == "linear":
        return 1.0 + (final - 1.0) * p
    if schedule == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown noise schedule {schedule!r}; expected constant, linear or cosine")


def lr_factor(step: int, total: int, restart_at: int | None = None, warmup: int = 0) -> float:
    """Weight-lr multiplier at global ``step`` of ``total``.

    ``restart_at=None``: one cosine from 1 to 0 over all ``total`` steps (the paper).
    Otherwise that same cosine until ``restart_at``, then a restart: a linear warmup
    ``(i + 1) / warmup`` over the first ``warmup`` steps ``i`` after ``restart_at``, and a
    fresh cosine from 1 to 0 over the rest, ending at ``total``.
    """
    if restart_at is None or step < restart_at:
        return cosine(step, total, 1.0)
    i = step - restart_at
    if i < warmup:
        return (i + 1) / warmup
    return cosine(i - warmup, total - restart_at - warmup, 1.0)


def min_kept(sizes: Sequence[int], floor: int) -> int:
    """Branches a per-layer floor forces: ``sum(min(floor, size))`` over the layers."""
    return sum(min(floor, size) for size in sizes)


def floored_topk(scores: torch.Tensor, k: int, sizes: Sequence[int], floor: int = 0) -> torch.Tensor:
    """Global top-``k`` of the flat ``scores`` in which every layer keeps its best ``floor`` slots.

    Each layer's ``min(floor, size)`` highest-scoring slots are taken first, then the rest
    of the budget is filled globally by score; the total is exactly ``k`` (ties: lower
    index wins). ``floor = 0`` is :func:`topk_mask`. Raises ValueError when the floor alone
    needs more than ``k`` slots.
    """
    if floor <= 0:
        return topk_mask(scores, k)
    flat = scores.detach().reshape(-1).float()
    forced_count = min_kept(sizes, floor)
    if not forced_count <= k <= flat.numel():
        raise ValueError(f"cannot keep {k} of {flat.numel()} candidates with a floor of {floor} per layer "
                         f"(the floor alone keeps {forced_count})")
    layer = layer_index(sizes).to(flat.device)
    order = torch.sort(flat, descending=True, stable=True).indices  # best first, ties by index
    grouped = order[torch.sort(layer[order], stable=True).indices]  # by layer, best first within
    starts = torch.cumsum(torch.tensor([0, *sizes[:-1]], device=flat.device), 0)
    rank = torch.empty_like(grouped)
    rank[grouped] = torch.arange(flat.numel(), device=flat.device) - starts[layer[grouped]]
    mask = rank < floor
    rest = order[~mask[order]][: k - forced_count]
    mask[rest] = True
    return mask


def keep_slots(scores: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """``scores`` with the ``kept`` slots (bool mask) at +inf, so that every top-k takes them first."""
    return scores if kept is None else scores.masked_fill(kept.to(scores.device), float("inf"))


def fair_mask(counts: torch.Tensor, k: int, generator: torch.Generator, sizes: Sequence[int] = (),
              floor: int = 0, kept: torch.Tensor | None = None) -> torch.Tensor:
    """The ``k`` slots activated least often so far (``counts``), ties broken uniformly at random.

    FairNAS-style strict fairness: started from equal counts and updated with
    :func:`fair_update`, every slot's count stays within 1 of every other's after every
    step (with ``k | N``, each slot is active exactly once in each ``N / k`` steps). A
    per-layer ``floor`` may override the order (fairness then only approximate). ``kept``
    slots are always taken (:func:`keep_slots`); fairness holds among the others.
    """
    tie = torch.rand(counts.numel(), generator=generator)
    scores = keep_slots(0.5 * tie - counts.to(torch.float64), kept)
    return floored_topk(scores, k, sizes, floor) if floor > 0 else topk_mask(scores, k)


def fair_update(counts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``counts + mask`` shifted so its minimum is 0 (only the differences matter)."""
    out = counts + mask.to(counts.device, torch.long)
    return out - out.min()
