"""The DDP seam of a search: the collectives the engine and the mask sampler call.

These defaults are the one-process no-ops; ``trainables.ray_tune.distributed`` supplies the
torch.distributed ones (``DDPSync``) when a trial trains on several workers.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["EngineSync"]


class EngineSync:
    """Collectives of a search spread over ranks; these defaults are the one-process no-ops."""

    world_size: int = 1

    def broadcast(self, tensor: Tensor) -> Tensor:
        """Rank 0's ``tensor`` (same dtype and device) on every rank."""
        return tensor

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over ranks."""
        return tensor

    def average_grad(self, grad: Tensor) -> None:
        """Replace ``grad`` in place by its mean over ranks."""

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BN statistics) into ``model`` on every rank."""
