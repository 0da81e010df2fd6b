"""Which branches train at each step: the masks of the RepNAS search (DESIGN.md section 3).

:class:`MaskSampler` holds what the masks are drawn over (the supernet's ODBB layers, the
budget ``k``, the slots every mask keeps and each layer's fallback) and draws them: a random
k-subset per step in the random phase (uniform or fair), the straight-through gate of noisy
top-k of alpha in the search phase, and the noise-free top-k (the architecture as it stands).
Every mask is completed with each stride-2 layer's fallback and broadcast from rank 0 under
DDP (``sync``), so every rank trains the same subnet. The math is in ``trainables.search.gates``;
the engine owns alpha, the phases and the fixed mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..config.metrics import PHASE_RANDOM, PHASE_SEARCH
from ..config.sections import SearchConfig
from .gates import (
    apply_fallback,
    budget_to_k,
    fair_mask,
    fair_update,
    floored_topk,
    keep_slots,
    logistic_noise,
    min_kept,
    noise_temperature,
    random_mask,
    straight_through,
)
from .sync import EngineSync

__all__ = ["MaskSampler"]


class MaskSampler:
    """Draws and applies the masks of a search over ``layers`` (``(name, ODBB)`` pairs)."""

    def __init__(self, layers: Sequence[tuple[str, nn.Module]], search: SearchConfig, keep_kxk: bool = False) -> None:
        """``keep_kxk``: every mask keeps every layer's ``kxk`` inside the budget."""
        self.layers = list(layers)
        self.search = search
        self.sizes = [len(block.branch_names) for _, block in self.layers]
        self.num_candidates = sum(self.sizes)
        self.sync = EngineSync()
        self.k = self.num_candidates
        self.kept: Tensor | None = None  # slots every mask keeps (keep_kxk: each layer's kxk)
        self.fair_counts: Tensor | None = None  # random_sampling: fair, activations so far minus their minimum
        if search.searching:
            self.k = budget_to_k(search.budget, self.num_candidates)
            if min_kept(self.sizes, search.layer_floor) > self.k:
                raise ValueError(f"layer_floor {search.layer_floor} keeps {min_kept(self.sizes, search.layer_floor)} "
                                 f"branches, more than the budget's {self.k}")
            if keep_kxk:
                self.kept = self._kxk_slots()
                if int(self.kept.sum()) > self.k:
                    raise ValueError(f"keep_kxk keeps the kxk of all {int(self.kept.sum())} layers, more than the "
                                     f"budget's {self.k}")
            if search.random_sampling == "fair":
                self.fair_counts = torch.zeros(self.num_candidates, dtype=torch.long)
        self.fallback = self._fallback_slots()

    def _kxk_slots(self) -> Tensor:
        """Bool mask over the candidates: every layer's ``kxk`` slot."""
        return torch.tensor([name == "kxk" for _, block in self.layers for name in block.branch_names])

    def _fallback_slots(self) -> Tensor:
        """Flat ``kxk`` slot of each layer without identity (-1 where it has identity)."""
        slots, offset = [], 0
        for (_, block), size in zip(self.layers, self.sizes):
            has_kxk = "kxk" in block.branch_names
            slots.append(-1 if block.has_identity or not has_kxk else offset + block.branch_names.index("kxk"))
            offset += size
        return torch.tensor(slots, dtype=torch.long)

    def active(self) -> Tensor:
        """The mask the blocks hold now (what they were built with, for a fixed architecture)."""
        return torch.cat([block.active.cpu() for _, block in self.layers])

    def complete(self, mask: Tensor) -> Tensor:
        """``mask`` with each layer's fallback where it kept nothing, as rank 0 drew it."""
        return self.sync.broadcast(apply_fallback(mask.cpu(), self.sizes, self.fallback))

    def topk(self, scores: Tensor) -> Tensor:
        """Global top-k of ``scores`` with the per-layer floor (``search.layer_floor``), the kept slots first."""
        return floored_topk(keep_slots(scores, self.kept), self.k, self.sizes, self.search.layer_floor)

    def best(self, alpha: Tensor) -> Tensor:
        """The noise-free top-k of ``alpha``, completed: the architecture as it stands."""
        return self.complete(self.topk(alpha.detach()))

    def apply(self, mask: Tensor, gates: Tensor | None = None) -> None:
        """Write the (CPU) mask and the (device) gates into every block; no host sync."""
        mask = mask.cpu()
        offset = 0
        for (_, block), size in zip(self.layers, self.sizes):
            block.set_active(mask[offset : offset + size])
            block.set_gates(None if gates is None else gates[offset : offset + size])
            offset += size

    def sample(self, phase: int, generator: torch.Generator, alpha: Tensor | None, step: int,
               steps_per_epoch: int) -> None:
        """Draw this step's mask (and, in the search phase, the gates on ``alpha``) into the blocks;
        ``step`` is the trial's global step (the noise schedule runs over the search phase)."""
        floor = self.search.layer_floor
        if phase == PHASE_RANDOM:
            if self.fair_counts is not None:  # broadcast first: every rank updates its counts alike
                pick = self.sync.broadcast(fair_mask(self.fair_counts, self.k, generator, self.sizes, floor, self.kept))
                self.fair_counts = fair_update(self.fair_counts, pick)
            elif floor or self.kept is not None:
                pick = self.topk(torch.rand(self.num_candidates, generator=generator))
            else:
                pick = random_mask(self.num_candidates, self.k, generator)
            self.apply(self.complete(pick))
        elif phase == PHASE_SEARCH:
            assert alpha is not None
            noise = self.sync.broadcast(logistic_noise(self.num_candidates, generator))
            start = self.search.random_epochs * steps_per_epoch
            tau = noise_temperature(step - start, self.search.search_epochs * steps_per_epoch,
                                    self.search.noise_schedule, self.search.noise_final)
            logits = alpha + (noise if tau == 1.0 else noise * tau).to(alpha.device)
            mask = self.complete(self.topk(logits))
            self.apply(mask, straight_through(mask.to(alpha.device), logits))
