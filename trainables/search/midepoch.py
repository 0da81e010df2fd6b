"""A part-trained epoch: what a mid-epoch checkpoint holds so the epoch continues exactly.

An epoch's data order, torch's global RNG and the mask noise are seeded from ``(seed, epoch)``
at its start (``SearchEngine._reseed``), so continuing after ``steps`` steps means: reseed as
the epoch did, draw (without training on) its first ``steps`` batches, which replays the loader's
order and whatever RNG its workers or transforms use, then restore torch's RNG and the noise
generator as they were after step ``steps``, and the running loss/accuracy sums. The rest of the
epoch then sees the same batches, masks and random numbers as an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["EpochProgress"]


@dataclass
class EpochProgress:
    """The running state of the epoch in progress (live while it trains; saved mid-epoch)."""

    steps: int  # steps of this epoch done
    lr: float  # the learning rate at the epoch's first step (what the epoch reports)
    loss_sum: Tensor
    correct: Tensor
    seen: int
    noise: torch.Generator

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(tensors, meta)`` for a checkpoint: torch's RNG as it is now, after step ``steps``."""
        tensors: dict[str, Any] = {"noise": self.noise.get_state(), "loss_sum": self.loss_sum.detach().cpu(),
                                   "correct": self.correct.detach().cpu(), "rng_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            tensors["rng_cuda"] = torch.cuda.get_rng_state_all()
        return tensors, {"steps": self.steps, "lr": self.lr, "seen": self.seen}

    @staticmethod
    def restore(progress: EpochProgress, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
        """Bring ``progress`` (just started, its batches skipped) to the saved state."""
        progress.steps, progress.lr, progress.seen = int(meta["steps"]), float(meta["lr"]), int(meta["seen"])
        progress.noise.set_state(tensors["noise"])
        progress.loss_sum.copy_(tensors["loss_sum"])
        progress.correct.copy_(tensors["correct"])
        torch.set_rng_state(tensors["rng_cpu"])
        if "rng_cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(tensors["rng_cuda"])
