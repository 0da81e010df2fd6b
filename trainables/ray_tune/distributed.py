"""Several workers per trial: the inner search on a Ray Train ``TorchTrainer`` (DDP).

A Tune trial with ``runtime.workers > 1`` calls :func:`run_distributed` (Ray 2.60's
Train-inside-Tune pattern): it launches a ``TorchTrainer`` whose storage lives under the
trial's own folder and whose workers each run ``run_trial`` with a :class:`DDPPlacement`.
Rank 0 writes the checkpoint and reports it with ``ray.train.report``; a Train
``UserCallback`` (on the Train controller) hands each report to the Tune function through
a ``ray.util.queue.Queue``, and the Tune function re-reports it with ``tune.report``, so
Tune and MLflow see exactly what a one-worker trial reports and resume works the same.

Consistency across ranks (DESIGN.md section 3): every mask and the search noise are
broadcast from rank 0 (ranks > 0 seed theirs differently, so agreement never comes from
seeding); alpha's gradient is averaged explicitly (alpha is not a DDP parameter); DDP runs
with ``find_unused_parameters=True`` (inactive branches get no gradient); the data is
sharded per global batch; the supernet is evaluated on validation shards with rank 0's BN
buffers and the sums all-reduced. After every epoch the ranks compare a digest of every
mask and alpha they used and of their weights, and stop with :class:`RankDivergenceError`
if they differ.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler, Subset

from ..config.sections import DataConfig, RuntimeConfig, TrialConfig
from ..config.seeds import Stream, derive_seed
from ..errors import ConfigError, RankDivergenceError
from ..run.data import DataBundle, LoaderSettings, make_loader
from ..run.hooks import TrialHook
from ..run.placement import Loaders, Placement
from ..run.restore import restore_checkpoint
from ..run.trial import run_trial
from ..search import EngineSync, SearchEngine
from . import adapter

if TYPE_CHECKING:
    import pyarrow.fs
    from ray.train import Checkpoint

__all__ = ["WorkerResources", "run_distributed", "DDPPlacement", "DDPSync", "ShardSampler",
           "convert_sync_bn", "TRACE_FILE", "NODE_KEY"]

TRACE_FILE = "sync_trace_rank{rank}.jsonl"
NODE_KEY = "node_id"  # result key: the Ray node that trained the trial (rank 0's)
_POLL_S = 0.5


@dataclass(frozen=True)
class WorkerResources:
    """Ray resources of one DDP worker."""

    cpus: float = 1.0
    gpus: float = 0.0

    def use_gpu(self, runtime: RuntimeConfig) -> bool:
        """Train on GPUs: some were requested and the trial is not pinned to the CPU."""
        return self.gpus > 0 and runtime.device != "cpu"


# --------------------------------------------------------------------------- ranks
class ShardSampler(Sampler[int]):
    """Rank ``rank``'s slice of every global batch of a seeded per-epoch permutation.

    Global batch ``b`` is ``perm[b*B:(b+1)*B]`` (the tail that fills no batch is dropped,
    as a one-process loader does); rank ``r`` takes its ``r``-th ``B/world`` part, so each
    sample is used at most once per epoch and every rank runs the same number of steps.
    """

    def __init__(self, size: int, batch_size: int, world_size: int, rank: int, seed: int) -> None:
        self.size, self.batch_size, self.world_size, self.rank, self.seed = size, batch_size, world_size, rank, seed
        self.local = batch_size // world_size
        self.steps = max(1, size // batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The engine calls this before every epoch (the order depends on (seed, epoch))."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, Stream.SHARD))
        perm = torch.randperm(self.size, generator=generator).tolist()
        for b in range(self.steps):
            start = b * self.batch_size + self.rank * self.local
            yield from perm[start:start + self.local]

    def __len__(self) -> int:
        return self.steps * self.local


class DDPSync(EngineSync):
    """The engine's collectives over torch.distributed; records a digest of every mask."""

    def __init__(self, device: torch.device, world_size: int, rank: int, engine: SearchEngine,
                 trace_dir: Path | None = None) -> None:
        self.device, self.world_size, self.rank, self.engine = device, world_size, rank, engine
        self.digest = hashlib.sha256()
        self.trace_dir = trace_dir
        self.records: list[dict[str, Any]] = []

    def broadcast(self, tensor: Tensor) -> Tensor:
        buf = tensor.to(self.device, torch.uint8 if tensor.dtype == torch.bool else tensor.dtype).contiguous()
        dist.broadcast(buf, src=0)
        out = buf.to(tensor.device, tensor.dtype)
        if tensor.dtype == torch.bool:
            self._record(tensor, out)
        return out

    def sum(self, tensor: Tensor) -> Tensor:
        buf = tensor.to(self.device).contiguous()
        dist.all_reduce(buf)
        return buf.to(tensor.device)

    def average_grad(self, grad: Tensor) -> None:
        dist.all_reduce(grad)
        grad.div_(self.world_size)

    def sync_buffers(self, model: nn.Module) -> None:
        for buffer in model.buffers():
            if buffer.dtype != torch.bool:  # ODBB masks are set from the broadcast mask already
                dist.broadcast(buffer, src=0)

    def _record(self, local: Tensor, mask: Tensor) -> None:
        """Fold the mask in use and the alpha it was drawn from into the running digest."""
        alpha = self.engine.alpha
        alpha_bytes = b"" if alpha is None else alpha.detach().cpu().numpy().tobytes()
        mask_bytes = mask.numpy().tobytes()
        self.digest.update(mask_bytes + alpha_bytes)
        if self.trace_dir is not None:
            self.records.append({"step": self.engine.step, "epoch": self.engine.epoch,
                                 "mask": hashlib.sha1(mask_bytes).hexdigest(),
                                 "alpha": hashlib.sha1(alpha_bytes).hexdigest(),
                                 "own_draw_differs": bool((local != mask).any())})

    def verify(self, model: nn.Module) -> None:
        """Collective: raise :class:`RankDivergenceError` unless all ranks agree; write the trace."""
        weights = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu().numpy().tobytes()
        state = {"masks_alpha": self.digest.hexdigest(), "weights": hashlib.sha1(weights).hexdigest()}
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, state)
        if self.trace_dir is not None:
            with open(self.trace_dir / TRACE_FILE.format(rank=self.rank), "a", encoding="utf-8") as f:
                f.writelines(json.dumps(row) + "\n" for row in self.records)
            self.records.clear()
        if any(other != gathered[0] for other in gathered):
            raise RankDivergenceError(f"DDP ranks diverged by epoch {self.engine.epoch}: {gathered}")


class _SyncBN(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are synchronised across ranks (torch's
    SyncBatchNorm forward on the same parameters and buffers; CUDA only)."""

    process_group = None
    forward = nn.SyncBatchNorm.forward
    _check_non_zero_input_channels = nn.SyncBatchNorm._check_non_zero_input_channels


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """Make every BatchNorm2d of ``model`` synchronised, in place, keeping its own class.

    ``nn.SyncBatchNorm.convert_sync_batchnorm`` would replace the branch BNs (``BNAndPad``,
    ``IdentityBN``) by plain SyncBatchNorms, losing their padding and ``fuse_kernel``;
    here each keeps its class with the synchronised forward mixed in beneath it.
    """
    for module in model.modules():
        cls = type(module)
        if isinstance(module, nn.BatchNorm2d) and not isinstance(module, _SyncBN):
            module.__class__ = _SyncBN if cls is nn.BatchNorm2d else type(f"Sync{cls.__name__}", (cls, _SyncBN), {})
    return model


class DDPPlacement(Placement):
    """Rank ``rank`` of a DDP group: device, sharded loaders, DDP wrapper and collectives."""

    def __init__(self, rank: int, world_size: int, device: torch.device, seed: int, *,
                 sync_bn: bool = False, trace_dir: Path | None = None) -> None:
        self.rank, self.world_size, self._device, self.seed = rank, world_size, device, seed
        self.sync_bn, self.trace_dir = sync_bn, trace_dir
        self.sync: DDPSync | None = None
        self.engine: SearchEngine | None = None

    def device(self, runtime: RuntimeConfig) -> torch.device:
        if runtime.num_threads:
            torch.set_num_threads(runtime.num_threads)
        return self._device

    def loaders(self, data: DataBundle, cfg: DataConfig, settings: LoaderSettings) -> Loaders:
        sampler = ShardSampler(len(data.train), cfg.batch_size, self.world_size, self.rank, self.seed)
        train = DataLoader(data.train, batch_size=sampler.local, sampler=sampler,
                           **settings.loader_kwargs(train=True))
        shard = Subset(data.val, range(self.rank, len(data.val), self.world_size))
        val = make_loader(shard, cfg.eval_batch_size, train=False, settings=settings)
        full = make_loader(data.val, cfg.eval_batch_size, train=False, settings=settings)
        return Loaders(train, val, full)

    def attach(self, engine: SearchEngine) -> None:
        from torch.nn.parallel import DistributedDataParallel

        if self.sync_bn and self._device.type != "cuda":
            raise ConfigError("trial.runtime.sync_bn", f"needs GPU workers (torch's SyncBatchNorm is CUDA-only), "
                                                       f"this worker trains on {self._device}")
        if self.sync_bn:
            convert_sync_bn(engine.model)
        ids = [self._device.index] if self._device.type == "cuda" else None
        engine.train_model = DistributedDataParallel(engine.model, device_ids=ids, find_unused_parameters=True)
        self.sync = DDPSync(self._device, self.world_size, self.rank, engine, self.trace_dir)
        engine.sync, engine.rank, self.engine = self.sync, self.rank, engine

    def verify(self) -> None:
        """Collective consistency check (every rank, once per epoch)."""
        assert self.sync is not None and self.engine is not None
        self.sync.verify(self.engine.model)


# --------------------------------------------------------------------------- worker
def _worker_loop(loop: dict[str, Any]) -> None:
    """What each Ray Train worker runs: ``run_trial`` under a :class:`DDPPlacement`."""
    import ray
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    cfg: TrialConfig = loop["trial"]
    placement = DDPPlacement(rank, world, ray.train.torch.get_device(), cfg.seed,
                             sync_bn=cfg.runtime.sync_bn, trace_dir=loop["trace_dir"])
    workdir = Path(tempfile.mkdtemp(prefix=f"repnas-rank{rank}-"))
    try:
        resume_from = restore_checkpoint(loop["resume"], workdir / "restored")

        def report(metrics: dict[str, float], checkpoint_dir: Path) -> None:
            placement.verify()
            if placement.is_main:
                node = ray.get_runtime_context().get_node_id()
                checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir))
                ray.train.report({**metrics, NODE_KEY: node}, checkpoint=checkpoint)
            else:  # every rank reports (a barrier); only rank 0's metrics and checkpoint count
                ray.train.report({}, checkpoint=None)

        run_trial(cfg, workdir, hooks=loop["hooks"] if placement.is_main else (), resume_from=resume_from,
                  report=report, trial_name=loop["trial_name"], placement=placement, durable_checkpoints=False,
                  gpus_held=loop["gpus_held"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- driver
def _forwarder(items: Any, acks: Any) -> Any:
    """A Train ``UserCallback`` handing each report to the Tune function, then waiting for
    its acknowledgement (so a stopped Tune trial stops the Train run too)."""

    class _Forward(adapter.user_callback_class()):  # type: ignore[misc]
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
            items.put((metrics[0], checkpoint))
            if not acks.get():
                raise RuntimeError("the Tune trial stopped; ending its Train run")

    return _Forward()


def _remove_run(storage_path: str, name: str, filesystem: pyarrow.fs.FileSystem | None) -> None:
    """Delete a finished Train run's folder (its checkpoints were copied into the trial's)."""
    if filesystem is None:
        shutil.rmtree(Path(storage_path) / name, ignore_errors=True)
        return
    try:
        filesystem.delete_dir(f"{storage_path.rstrip('/')}/{name}")
    except OSError:  # already gone, or storage unreachable: only disk space is at stake
        pass


def run_distributed(
    config: TrialConfig,
    report: Callable[[dict[str, float], Checkpoint], None],
    *,
    workers: WorkerResources,
    storage_path: str,
    storage_filesystem: pyarrow.fs.FileSystem | None = None,
    hooks: Sequence[TrialHook] = (),
    trial_name: str = "trial",
    resume: Checkpoint | None = None,
    trace_dir: Path | None = None,
) -> None:
    """Run one trial on ``config.runtime.workers`` DDP workers; blocks until it ends.

    ``report(metrics, checkpoint)`` is called here, in the caller's thread, once per epoch
    with rank 0's metrics and its checkpoint (persisted under ``storage_path``).
    ``resume``: the checkpoint to continue from. ``trace_dir``: each rank appends one JSON
    line per mask (digests of mask and alpha) to ``sync_trace_rank<r>.jsonl`` there.
    Raises the lowest failing rank's exception.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    use_gpu = workers.use_gpu(config.runtime)
    run_name = f"ddp-{uuid.uuid4().hex[:8]}"
    items, acks = Queue(maxsize=1, actor_options={"num_cpus": 0}), Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"trial": config, "hooks": list(hooks), "trial_name": trial_name,
                           "resume": resume, "trace_dir": trace_dir,
                           "gpus_held": workers.gpus * config.runtime.workers if use_gpu else 0.0},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.runtime.workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": workers.cpus, **({"GPU": workers.gpus} if use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path, storage_filesystem=storage_filesystem,
            callbacks=[_forwarder(items, acks)], failure_config=ray.train.FailureConfig(max_failures=0),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)),
    )
    outcome: dict[str, BaseException] = {}

    def _fit() -> None:
        try:
            trainer.fit()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=_fit, name="repnas-ddp-fit", daemon=True)
    thread.start()
    acked = False
    try:
        while thread.is_alive() or not items.empty():
            try:
                metrics, checkpoint = items.get(timeout=_POLL_S)
            except Empty:
                continue
            report(metrics, checkpoint)
            acks.put(True)
        acked = True
    finally:  # also when Tune ends the trial inside report() (its last result says done)
        if not acked:
            acks.put(False)
            thread.join(timeout=60)
        if not thread.is_alive():
            _remove_run(storage_path, run_name, storage_filesystem)  # the caller holds copies
    if acked and "error" in outcome:
        raise adapter.worker_exception(outcome["error"]) from outcome["error"]
