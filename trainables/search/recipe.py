"""Recipe options beyond the paper's one-stage schedule (issue #13): the pieces with state.

``SearchEngine`` calls these at construction (alpha's lr, the weight-lr schedule) and at
the fix (BN recalibration, the two-stage re-initialisation). The pure math (schedules,
floored top-k, fair sampling) lives in ``trainables.search.gates``. Every option's default in
``SearchConfig`` is the paper's behaviour, for which these return exactly what the engine
did before they existed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..config.sections import SearchConfig
from .gates import auto_arch_lr, cosine, lr_factor

__all__ = ["arch_lr", "lr_lambda", "fixed_start_step", "reset_bn_stats",
           "recalibrate_bn", "average_bn_stats", "reinitialise"]


def arch_lr(search: SearchConfig, steps_per_epoch: int) -> float:
    """Alpha's Adam lr: ``search.arch_lr``, or for ``auto`` :func:`trainables.search.gates.auto_arch_lr`
    over the search phase's ``search_epochs * steps_per_epoch`` steps."""
    if search.arch_lr == "auto":
        return auto_arch_lr(search.search_epochs * steps_per_epoch, search.arch_lr_travel)
    return float(search.arch_lr)


def fixed_start_step(search: SearchConfig, steps_per_epoch: int) -> int:
    """First step of the fixed phase (0 for a fixed architecture, which is fixed throughout)."""
    return (search.random_epochs + search.search_epochs) * steps_per_epoch if search.searching else 0


def lr_lambda(search: SearchConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The weight-lr multiplier per global step, for ``LambdaLR``.

    ``continue`` (default): one cosine over all ``epochs``. ``restart`` (and always with
    ``two_stage``): the same cosine until the fixed phase, then a fresh cosine from 1 over
    the fixed phase after ``fixed_warmup_epochs`` of linear warmup.
    """
    total = max(1, search.epochs * steps_per_epoch)
    if search.fixed_lr_schedule == "restart" or (search.two_stage and search.searching):
        restart = fixed_start_step(search, steps_per_epoch)
        warmup = search.fixed_warmup_epochs * steps_per_epoch
        return lambda step: lr_factor(step, total, restart, warmup)
    return lambda step: cosine(step, total, 1.0)


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def reset_bn_stats(model: nn.Module) -> None:
    """Reset every BatchNorm's running statistics (mean 0, var 1, no batches tracked)."""
    for module in _batch_norms(model):
        module.reset_running_stats()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Any], max_batches: int, device: torch.device) -> int:
    """Re-estimate every BatchNorm's running statistics on up to ``max_batches`` of ``batches``.

    Resets the statistics, then runs forward passes in train mode without gradient with
    ``momentum=None`` (torch's cumulative average: running mean = the mean of the batch
    means, running var = the mean of the unbiased batch variances), and restores each
    BN's momentum and the model's mode. Stops early at the end of ``batches`` (at most one
    pass). Returns the number of batches used.
    """
    norms = _batch_norms(model)
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    model.train()
    used = 0
    try:
        for inputs, *_ in batches:
            if used >= max_batches:
                break
            model(inputs.to(device, non_blocking=True))
            used += 1
    finally:
        for module, momentum in zip(norms, momenta):
            module.momentum = momentum
        model.train(was_training)
    return used


@torch.no_grad()
def average_bn_stats(model: nn.Module, world_sum: Callable[[torch.Tensor], torch.Tensor], world_size: int) -> None:
    """Replace every BN's running mean and var by their mean over ``world_size`` ranks.

    After :func:`recalibrate_bn` on each rank's shard (the same number of batches on every
    rank) this is the single-process estimate over all ranks' batches. ``world_sum`` is
    the engine sync's ``sum``; a no-op on one process.
    """
    if world_size <= 1:
        return
    for module in _batch_norms(model):
        for buffer in (module.running_mean, module.running_var):
            if buffer is not None:
                buffer.copy_(world_sum(buffer.clone()) / world_size)


def reinitialise(model: nn.Module, build: Callable[[], nn.Module], seed: int) -> None:
    """Overwrite ``model``'s parameters and buffers with a fresh ``build()`` seeded by ``seed``.

    In place (``load_state_dict``), so the optimiser and a DDP wrapper keep their references;
    ``build`` must make the same architecture (same state-dict keys). The fresh model's
    activity masks (all on) come along: the caller applies its mask again.
    """
    torch.manual_seed(seed)
    fresh = build()
    model.load_state_dict(fresh.state_dict())
