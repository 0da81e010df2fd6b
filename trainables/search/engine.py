"""SearchEngine: the RepNAS one-stage search (DESIGN.md section 3) on one process.

Phases by epoch: random (alpha frozen, a uniformly random k-subset every step) -> search
(alpha learned through the straight-through gate of noisy top-k) -> fixed (mask :=
noise-free top-k(alpha), all BN running statistics reset, alpha frozen). A fixed
architecture (a baseline) runs the same loop in the fixed phase from epoch 0, without alpha.
The recipe options of ``SearchConfig`` (issue #13; paper behaviour by default) change
these steps: fair random-phase sampling, a per-layer floor in every top-k, annealed noise,
an auto-sized alpha lr, a restarted fixed-phase lr, BN recalibration at the fix, or a
two-stage retrain from scratch (``trainables.search.recipe``). ``keep_kxk`` (a search from trained
weights) puts every layer's ``kxk`` first in every top-k. ``optim.new_branch_lr_scale`` gives the
new branches (all but ``kxk``) their own lr (``_param_groups``).

Reproducibility: every epoch reseeds torch's global RNG, the data order and the mask
noise from ``(seed, epoch)``, so a run resumed from an epoch-boundary checkpoint is
bit-identical to an uninterrupted one (fp16's loss scale is checkpointed too). A checkpoint
written mid-epoch (``train_epoch``'s ``after_step``) also holds the epoch's progress
(``trainables.search.midepoch``), and the resumed run finishes that epoch as the uninterrupted one did.

Runtime (``RuntimeConfig``): ``precision`` autocasts the training forward and loss and the
supernet's evaluation (``trainables.search.amp``; the fused model is always evaluated in float32);
``channels_last`` puts the model and every input batch in that memory format; ``compile``
runs the training forward through ``torch.compile`` while the architecture is fixed (a
baseline throughout, a search in its fixed phase). The random and search phases stay eager:
their mask changes every step, and every new mask is a new graph (dynamo recompiles until
its recompile limit, then runs that code eagerly for the rest of the process, the fixed
phase included; docs/sweep-config.md).

Masks: ``masks`` (a :class:`~trainables.search.masks.MaskSampler`) draws each step's mask and
gates and holds what they are drawn over (layers, budget ``k``, kept slots, fallbacks).

DDP seam: ``sync`` (an :class:`~trainables.search.sync.EngineSync`) broadcasts every sampled mask and the search
noise from rank 0, averages alpha's gradient, sums the epoch's loss/accuracy counts and
aligns BN buffers before evaluation; ``train_model`` is what the training forward calls
(the DDP wrapper). ``trainables.ray_tune.distributed`` sets both; the defaults are single-process
no-ops. Ranks > 0 seed their noise differently on purpose: the broadcast, not the seeding,
makes every rank use rank 0's mask.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from searchspace import new_branch_parameters, odbb_layers

from ..config.metrics import PHASE_FIXED, PHASE_RANDOM, PHASE_SEARCH
from ..config.sections import OptimConfig, RuntimeConfig, SearchConfig
from ..config.seeds import Stream, derive_seed
from .amp import MixedPrecision
from .failures import check_finite
from .gates import (
    cosine,
)
from .masks import MaskSampler
from .midepoch import EpochProgress
from .recipe import (
    arch_lr,
    average_bn_stats,
    lr_lambda,
    recalibrate_bn,
    reinitialise,
    reset_bn_stats,
)
from .sync import EngineSync

__all__ = ["SearchEngine"]


def _decay_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only, not on biases or BN parameters (ndim <= 1)."""
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


def _param_groups(model: nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """The two decay groups; with ``new_branch_lr_scale`` other than 1, two more of the new branches'
    parameters (``searchspace.new_branch_parameters``) at ``lr * new_branch_lr_scale`` (LambdaLR
    multiplies every group's own initial lr, so the ratio holds over the schedule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if optim.new_branch_lr_scale == 1.0:
        return _decay_groups(params, optim.weight_decay)
    new = {id(p) for p in new_branch_parameters(model)}
    base = _decay_groups([p for p in params if id(p) not in new], optim.weight_decay)
    scaled = _decay_groups([p for p in params if id(p) in new], optim.weight_decay)
    return base + [{**group, "lr": optim.lr * optim.new_branch_lr_scale} for group in scaled]


class SearchEngine:
    """Holds the supernet, alpha, optimisers and phase; trains and evaluates one epoch at a time."""

    def __init__(
        self,
        model: nn.Module,
        search: SearchConfig,
        optim: OptimConfig,
        *,
        steps_per_epoch: int,
        seed: int,
        device: torch.device,
        rebuild: Callable[[], nn.Module] | None = None,
        runtime: RuntimeConfig | None = None,
        keep_kxk: bool = False,
    ) -> None:
        """``rebuild``: a fresh copy of ``model``'s architecture (needed by ``search.two_stage``).
        ``runtime``: precision, memory format and compilation (default: fp32, eager).
        ``keep_kxk``: every mask keeps every layer's ``kxk`` inside the budget (``TrialConfig.keeps_kxk``)."""
        runtime = runtime or RuntimeConfig()
        self.memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
        self.model = model.to(device, memory_format=self.memory_format)
        self.search, self.optim = search, optim
        self.seed, self.device = seed, device
        self.amp = MixedPrecision(runtime.precision, device)
        self.compile = runtime.compile
        self._compiled: nn.Module | None = None  # torch.compile of train_model, made at the first fixed step
        self.masks = MaskSampler(odbb_layers(model), search, keep_kxk)
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0  # completed epochs
        self.step = 0  # completed optimisation steps
        self.progress: EpochProgress | None = None  # the epoch in progress (None between epochs)
        self._resume_epoch: tuple[dict[str, Any], dict[str, Any]] | None = None  # a mid-epoch checkpoint's
        self.train_model: nn.Module = self.model  # the training forward (a DDP wrapper under DDP)
        self.rank = 0  # ranks > 0 draw other noise, overridden by rank 0's broadcast
        self.optimizer = torch.optim.SGD(_param_groups(model, optim), lr=optim.lr, momentum=optim.momentum)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(search, steps_per_epoch))
        self.alpha: nn.Parameter | None = None
        self.arch_optimizer: torch.optim.Adam | None = None
        self.fixed_mask: Tensor | None = None
        self.rebuild = rebuild
        if search.searching:
            if search.two_stage and rebuild is None:
                raise ValueError("search.two_stage needs the engine's rebuild (a fresh model of the same architecture)")
            self.alpha = nn.Parameter(torch.zeros(self.masks.num_candidates, device=device))
            self.arch_optimizer = torch.optim.Adam(
                [self.alpha], lr=arch_lr(search, steps_per_epoch), betas=tuple(search.arch_betas),
                weight_decay=search.arch_weight_decay,
            )
        else:
            self.fixed_mask = self.masks.active()

    @property
    def sync(self) -> EngineSync:
        """The collectives of a search over ranks (the masks are broadcast through the same one)."""
        return self.masks.sync

    @sync.setter
    def sync(self, sync: EngineSync) -> None:
        self.masks.sync = sync

    @property
    def epochs_trained(self) -> int:
        """Completed epochs of the network this trial delivers: every epoch, except that
        ``two_stage`` restarts the count at its rebuild (the epochs before it trained weights that
        are thrown away). What a trial scheduler compares trials at (ASHA's rungs)."""
        if self.search.searching and self.search.two_stage:
            return max(0, self.epoch - (self.search.random_epochs + self.search.search_epochs))
        return self.epoch

    def phase(self, epoch: int | None = None) -> int:
        """Phase id of ``epoch`` (default: the next epoch to train)."""
        epoch = self.epoch if epoch is None else epoch
        if not self.search.searching or epoch >= self.search.random_epochs + self.search.search_epochs:
            return PHASE_FIXED
        return PHASE_RANDOM if epoch < self.search.random_epochs else PHASE_SEARCH

    def eval_mask(self) -> Tensor:
        """The architecture as it stands: the fixed mask, else the noise-free top-k of alpha."""
        if self.fixed_mask is not None:
            return self.fixed_mask
        assert self.alpha is not None
        return self.masks.best(self.alpha)

    def fix(self, reset_bn: bool = True, loader: DataLoader | None = None) -> None:
        """Freeze the mask at the noise-free top-k of alpha, then (``reset_bn``) the fix recipe.

        ``two_stage``: re-initialise every weight (a fresh seeded ``rebuild``, BN included)
        and clear the SGD state. Otherwise reset all BN running statistics and, with
        ``fix_bn: recalibrate``, re-estimate them on batches of ``loader``. ``reset_bn=False``
        (``finalize``) only freezes the mask.
        """
        if self.fixed_mask is not None:
            return
        self.fixed_mask = self.eval_mask().clone()
        self.masks.apply(self.fixed_mask)
        if not reset_bn:
            return
        if self.search.two_stage:  # same seed on every rank: identical fresh weights under DDP
            assert self.rebuild is not None
            reinitialise(self.model, self.rebuild, derive_seed(self.seed, Stream.REBUILD))
            self.optimizer.state.clear()
            self.masks.apply(self.fixed_mask)
        elif self.search.fix_bn == "recalibrate" and loader is not None:
            self._reseed(loader, Stream.CALIBRATE)
            with self.amp.autocast():
                recalibrate_bn(self.model, ((self._inputs(x),) for x, *_ in loader), self.search.fix_bn_batches,
                               self.device)
            average_bn_stats(self.model, self.sync.sum, self.sync.world_size)  # all ranks' batches
        else:
            reset_bn_stats(self.model)

    # ----------------------------------------------------------------- loops
    def _parameters(self) -> Iterable[Tensor]:
        yield from self.model.parameters()
        if self.alpha is not None:
            yield self.alpha

    def _reseed(self, loader: DataLoader, torch_stream: Stream, data_stream: Stream | None = None) -> None:
        """Seed torch's global RNG and ``loader``'s order from ``(seed, epoch, stream)``."""
        rank = (self.rank,) if self.rank else ()
        torch.manual_seed(derive_seed(self.seed, self.epoch, torch_stream, *rank))
        if isinstance(loader.generator, torch.Generator):
            loader.generator.manual_seed(derive_seed(self.seed, self.epoch, torch_stream if data_stream is None else data_stream))
        if callable(getattr(loader.sampler, "set_epoch", None)):
            loader.sampler.set_epoch(self.epoch)  # type: ignore[attr-defined]

    def _inputs(self, inputs: Tensor) -> Tensor:
        """A batch on the device, in the model's memory format (asynchronous from pinned memory)."""
        return inputs.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def _train_forward(self, phase: int) -> nn.Module:
        """What the training step calls: ``train_model``, compiled (``runtime.compile``) once the
        architecture is fixed. Compiled lazily, after a DDP placement has wrapped the model."""
        if not self.compile or phase != PHASE_FIXED:
            return self.train_model
        if self._compiled is None:
            self._compiled = torch.compile(self.train_model)
        return self._compiled

    def train_epoch(self, loader: DataLoader, after_step: Callable[[], bool] | None = None) -> dict[str, float] | None:
        """Train one epoch (or the rest of one a mid-epoch checkpoint started); returns phase_id,
        train_loss, train_acc, lr (at its first step). ``after_step`` runs after every step, with
        :meth:`state_dict` then describing the epoch so far (a mid-epoch checkpoint); when it
        returns True the epoch stops there and this returns None (``progress`` stays set)."""
        phase = self.phase()
        if phase == PHASE_FIXED:
            self.fix(loader=loader)
            self.masks.apply(self.fixed_mask)  # type: ignore[arg-type]
        self._reseed(loader, Stream.TORCH, Stream.DATA)
        rank = (self.rank,) if self.rank else ()
        progress = EpochProgress(
            0, float(self.optimizer.param_groups[0]["lr"]), torch.zeros((), device=self.device),
            torch.zeros((), device=self.device), 0,
            torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, Stream.MASK, *rank)))
        batches = iter(loader)
        if self._resume_epoch is not None:  # replay the epoch's order up to the checkpoint's step
            tensors, meta = self._resume_epoch
            self._resume_epoch = None
            for _ in range(int(meta["steps"])):
                next(batches)
            EpochProgress.restore(progress, tensors, meta)
        self.progress = progress
        search_start = self.search.random_epochs * self.steps_per_epoch
        search_total = self.search.search_epochs * self.steps_per_epoch
        forward = self._train_forward(phase)
        self.model.train()
        for inputs, targets in batches:
            inputs, targets = self._inputs(inputs), targets.to(self.device, non_blocking=True)
            # set to None before the forward, not before the backward: the last step's gradients
            # would otherwise stay resident beside this step's activations (the peak of a step)
            self.optimizer.zero_grad(set_to_none=True)
            if self.arch_optimizer is not None:
                self.arch_optimizer.zero_grad(set_to_none=True)
            self.masks.sample(phase, progress.noise, self.alpha, self.step, self.steps_per_epoch)
            with self.amp.autocast():
                logits = forward(inputs)
                loss = F.cross_entropy(logits.float(), targets)
            # Stop at once on NaN/inf. Not on GPU (the epoch-end check avoids a sync per step),
            # nor across ranks (one rank raising before the gradient all-reduce hangs the others).
            if self.device.type == "cpu" and self.sync.world_size == 1:
                check_finite(loss, self.epoch + 1, self.step + 1)
            self.amp.backward(loss)
            if self.alpha is not None and self.alpha.grad is not None:
                self.sync.average_grad(self.alpha.grad)
            stepping: list[torch.optim.Optimizer] = [self.optimizer]
            if phase == PHASE_SEARCH and self.arch_optimizer is not None:
                decay = cosine(self.step - search_start, search_total, self.search.arch_weight_decay)
                self.arch_optimizer.param_groups[0]["weight_decay"] = decay
                stepping.append(self.arch_optimizer)
            self.amp.step(stepping, self._parameters(), self.optim.grad_clip)
            self.scheduler.step()
            self.step += 1
            progress.steps += 1
            progress.loss_sum += loss.detach() * len(targets)
            progress.correct += (logits.detach().argmax(1) == targets).sum()
            progress.seen += len(targets)
            if after_step is not None and after_step():
                return None
        self.progress = None
        self.masks.apply(self.eval_mask())  # drop the step's gates (and their graph)
        self.epoch += 1
        totals = self.sync.sum(torch.stack([progress.loss_sum.double(), progress.correct.double(),
                                            torch.tensor(float(progress.seen), dtype=torch.float64, device=self.device)]))
        loss_total, correct_total, seen_total = totals.tolist()
        check_finite(loss_total, self.epoch)  # the reduced sum: the same verdict on every rank
        return {
            "phase_id": float(phase),
            "train_loss": loss_total / max(seen_total, 1),
            "train_acc": correct_total / max(seen_total, 1),
            "lr": progress.lr,
        }

    @torch.no_grad()
    def evaluate(self, loader: DataLoader, model: nn.Module | None = None) -> tuple[float, float]:
        """(loss, accuracy) of ``model`` (default: the supernet under ``eval_mask()``).

        The supernet's evaluation is collective: every rank evaluates its shard of ``loader``
        with rank 0's BN buffers and the sums are reduced; it runs in the trial's precision.
        Another ``model`` (the fused one, evaluated by rank 0 alone) is evaluated locally, in
        float32: what its exported files compute.
        """
        reduce = model is None
        if model is None:
            self.masks.apply(self.eval_mask())
            self.sync.sync_buffers(self.model)
            model = self.model
        model.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        for inputs, targets in loader:
            inputs, targets = self._inputs(inputs), targets.to(self.device, non_blocking=True)
            with self.amp.autocast() if reduce else contextlib.nullcontext():
                logits = model(inputs).float()
            loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(targets)
        if reduce:
            loss_sum, correct, seen = self.sync.sum(torch.tensor([loss_sum, correct, seen], dtype=torch.float64)).tolist()
        return loss_sum / max(seen, 1), correct / max(seen, 1)

    def finalize(self) -> None:
        """Make the architecture final: fix the mask if the run never reached the fix phase.

        BN statistics are kept then (they were learned under the supernet), so the
        exported model is the one just evaluated.
        """
        self.fix(reset_bn=False)
        self.masks.apply(self.fixed_mask)  # type: ignore[arg-type]

    # ----------------------------------------------------------------- state
    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(tensors, meta)``: tensors for ``torch.save``, meta JSON-serialisable."""
        tensors: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            tensors["rng_cuda"] = torch.cuda.get_rng_state_all()
        if self.alpha is not None and self.arch_optimizer is not None:
            tensors["alpha"] = self.alpha.detach().cpu()
            tensors["arch_optimizer"] = self.arch_optimizer.state_dict()
        if self.fixed_mask is not None:
            tensors["fixed_mask"] = self.fixed_mask
        if self.masks.fair_counts is not None:
            tensors["fair_counts"] = self.masks.fair_counts
        if self.amp.state_dict():
            tensors["grad_scaler"] = self.amp.state_dict()
        meta = {"epoch": self.epoch, "step": self.step, "phase_id": self.phase(), "k": self.masks.k,
                "num_candidates": self.masks.num_candidates}
        if self.progress is not None:  # mid-epoch
            tensors["epoch_progress"], meta["epoch_progress"] = self.progress.state()
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (same model/config)."""
        masks = self.masks
        if meta["num_candidates"] != masks.num_candidates or meta["k"] != masks.k:
            raise ValueError(
                f"checkpoint is for {meta['num_candidates']} candidates keeping {meta['k']}, "
                f"this run has {masks.num_candidates} keeping {masks.k}: the config changed"
            )
        self.model.load_state_dict(tensors["model"])
        self.optimizer.load_state_dict(tensors["optimizer"])
        self.scheduler.load_state_dict(tensors["scheduler"])
        if self.alpha is not None and self.arch_optimizer is not None:
            with torch.no_grad():
                self.alpha.copy_(tensors["alpha"].to(self.device))
            self.arch_optimizer.load_state_dict(tensors["arch_optimizer"])
        mask = tensors.get("fixed_mask")
        self.fixed_mask = None if mask is None else mask.bool().cpu()
        if masks.fair_counts is not None:
            if "fair_counts" not in tensors:
                raise ValueError("checkpoint has no fair-sampling counts: it was written with another random_sampling")
            masks.fair_counts = tensors["fair_counts"].long().cpu().clone()
        self.amp.load_state_dict(tensors.get("grad_scaler"))
        self.epoch, self.step = int(meta["epoch"]), int(meta["step"])
        self.progress = None
        self._resume_epoch = ((tensors["epoch_progress"], meta["epoch_progress"])
                              if "epoch_progress" in meta else None)  # train_epoch continues it
        torch.set_rng_state(tensors["rng_cpu"])
        if "rng_cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(tensors["rng_cuda"])
        self.masks.apply(self.eval_mask())

