"""Every random stream of a trial, in one table, so that no two consumers share a seed.

A trial's randomness is derived from ``(trial.seed, [epoch,] stream[, rank])`` by
:func:`derive_seed`, so a run resumed from a checkpoint draws exactly what an uninterrupted one
draws. Each consumer names its :class:`Stream`; ``tests/trainables/test_trainables_seeds.py``
fails when a stream number is used twice or a ``derive_seed`` call names a raw number.
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["Stream", "derive_seed", "CONSUMERS"]


@enum.unique
class Stream(enum.IntEnum):
    """The seed streams of a trial; the values are part of every stored result (do not renumber)."""

    INIT = 0       # the supernet's weight initialisation (trainables.run.trial)
    DATA = 1       # each epoch's training-data order (trainables.search.engine)
    TORCH = 2      # torch's global RNG during each epoch's training (dropout, random masks)
    MASK = 3       # the search's logistic noise, per epoch and rank
    CALIBRATE = 4  # BN recalibration at the fix: torch's RNG and the batches' order
    REBUILD = 5    # the two-stage re-initialisation at the fix
    SHARD = 6      # a DDP worker's shard order, per epoch (trainables.ray_tune.distributed)


CONSUMERS: dict[Stream, str] = {
    Stream.INIT: "trainables.run.trial",
    Stream.DATA: "trainables.search.engine",
    Stream.TORCH: "trainables.search.engine",
    Stream.MASK: "trainables.search.engine",
    Stream.CALIBRATE: "trainables.search.engine",
    Stream.REBUILD: "trainables.search.engine",
    Stream.SHARD: "trainables.ray_tune.distributed",
}
"""The module that draws from each stream."""


def derive_seed(seed: int, *keys: int) -> int:
    """An independent 63-bit seed for ``(seed, *keys)`` (numpy SeedSequence hashing); ``keys``
    hold one :class:`Stream` and, where the stream is per epoch or per rank, those."""
    return int(np.random.SeedSequence([seed, *map(int, keys)]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))
