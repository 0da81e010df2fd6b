"""Where one trial's search runs: ``Placement`` is one process; DDP overrides it.

``run_trial`` asks its placement for the device, the data loaders and to attach itself to
the engine, so the same loop runs on one process or on every rank of a DDP group
(``trainables.ray_tune.distributed.DDPPlacement``): no second copy of the trial loop exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ..config.sections import DataConfig, RuntimeConfig
from ..errors import ConfigError
from ..search.engine import SearchEngine
from .data import DataBundle, LoaderSettings, make_loader

__all__ = ["Placement", "Loaders", "resolve_device", "trial_cpus"]


def trial_cpus(runtime: RuntimeConfig) -> int:
    """The CPUs this trial (or DDP worker) computes on: ``runtime.num_threads`` (which Ray Tune
    fills in from the trial's resources), else the CPUs this process may run on."""
    return runtime.num_threads or len(os.sched_getaffinity(0))


def resolve_device(runtime: RuntimeConfig) -> torch.device:
    """CUDA when asked for or available (``auto``), else CPU; limits torch's CPU threads."""
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trial.runtime.device", "cuda requested but torch sees no GPU; use auto or cpu")
    use_cuda = runtime.device == "cuda" or (runtime.device == "auto" and torch.cuda.is_available())
    torch.set_num_threads(trial_cpus(runtime))
    return torch.device("cuda" if use_cuda else "cpu")


@dataclass(frozen=True)
class Loaders:
    """Training loader, the per-epoch validation loader, and the full validation loader
    that the final fuse-and-verify step uses (the same object on one process)."""

    train: DataLoader
    val: DataLoader
    export: DataLoader


class Placement:
    """One process on the configured device; rank 0 of a world of 1."""

    rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints and exports and calls the hooks."""
        return self.rank == 0

    def device(self, runtime: RuntimeConfig) -> torch.device:
        """The device to train on (and the CPU threads to use)."""
        return resolve_device(runtime)

    def loaders(self, data: DataBundle, cfg: DataConfig, settings: LoaderSettings) -> Loaders:
        """Seeded shuffling training loader and one validation loader for both uses."""
        val = make_loader(data.val, cfg.eval_batch_size, train=False, settings=settings)
        return Loaders(make_loader(data.train, cfg.batch_size, train=True, settings=settings), val, val)

    def attach(self, engine: SearchEngine) -> None:
        """Wire the engine's collectives and training forward (nothing to do on one process)."""
