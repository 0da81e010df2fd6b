"""``run_trial``: one whole trial (data -> model -> epochs with checkpoints -> export).

The single entry that the CLI (``trainables.cli``) and the Ray Tune trainable
(``trainables.ray_tune.tune``) both call. Layout of ``workdir``::

    metrics.jsonl      one JSON line of flat metrics per epoch
    alpha.json         alpha and the current mask, layers x branch types (every epoch)
    checkpoint/        latest epoch's checkpoint (atomic); the last one also holds export/
    export/            architecture.json, model.pt2, model.ts, model.onnx,
                       fused_state_dict.pt, alpha.json, alpha.png, summary.json,
                       model_int8.onnx (with ``export.int8.enabled``)
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config.identity import identity_difference, trial_identity
from ..config.metrics import EPOCH_METRICS
from ..config.schema import flatten_overrides
from ..config.sections import TrialConfig
from ..config.seeds import Stream, derive_seed
from ..errors import ConfigError, TrialPreempted
from ..search.engine import SearchEngine
from ..search.failures import check_finite
from .alpha import alpha_table, plot_alpha, save_alpha
from .build import build_trial_model
from .checkpoint import load_checkpoint, save_checkpoint
from .data import LoaderSettings, build_data, make_loader
from .export import ExportResult, export_model, export_onnx
from .hooks import TrialHook
from .memory import PeakMemory
from .placement import Placement, trial_cpus
from .preemption import PreemptionNotice
from .quantize import calibration_set, quantize_int8, weight_ranges

__all__ = ["CHECKPOINT_DIR", "EXPORT_DIR", "ReportFn", "TrialResult", "run_trial"]

CHECKPOINT_DIR, EXPORT_DIR = "checkpoint", "export"
ReportFn = Callable[[dict[str, float], Path], None]
"""``report(metrics, checkpoint_dir)``: called after every epoch's checkpoint is written."""


@dataclass
class TrialResult:
    """What a finished trial leaves: final metrics, per-epoch history, folders, summary."""

    metrics: dict[str, float]
    history: list[dict[str, float]]
    export_dir: Path
    checkpoint_dir: Path
    summary: dict[str, Any]


def _check_resumable(saved: dict[str, Any], config: TrialConfig) -> None:
    """Refuse to resume a checkpoint written under another trial identity
    (``trainables.config.identity``): a key that decides the result changed.

    The saved config is read through ``TrialConfig`` first, so keys added since it was
    written (with their defaults, the old behaviour) do not count as a difference.
    """
    try:
        written = flatten_overrides(TrialConfig.from_dict(saved).to_dict())
    except ConfigError:
        written = flatten_overrides(saved)  # compare as written: the key that differs is named below
    key = identity_difference(config, written) or next(
        (k for k in trial_identity(config) if k not in written), None)
    if key is not None:
        raise ConfigError(f"trial.{key}", f"differs from the checkpoint's config ({written.get(key)!r}); "
                                          "resuming needs the same settings")


def _write_jsonl(path: Path, rows: list[dict[str, float]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(path)


def _finish(engine: SearchEngine, config: TrialConfig, data: Any, val_loader: Any, out: Path,
            loading: LoaderSettings) -> tuple[dict[str, float], dict[str, Any]]:
    """Final metrics and summary fields of a finalized engine: fuse, verify, measure, export,
    test accuracy, alpha plot."""
    fused, result = export_model(
        engine.model, val_loader, data.example_shape, out,
        device=engine.device, formats=list(config.export.formats),
        latency_batch_size=config.runtime.latency_batch_size,
        latency_min_run_time=config.export.latency_min_run_time,
    )
    metrics = dict(result.metrics)
    test_loader = None
    if data.test is not None:
        test_loader = make_loader(data.test, config.data.eval_batch_size, train=False, settings=loading)
        metrics["test_acc"] = engine.evaluate(test_loader, model=fused)[1]
    if config.export.int8.enabled:
        _int8(fused, engine.device, config, data, val_loader, test_loader, out, loading, metrics, result)
    table = alpha_table(engine.masks.layers, engine.alpha, engine.eval_mask())
    save_alpha(table, out / "alpha.json")
    plot_alpha(table, out / "alpha.png")
    metrics["done"] = 1.0
    extra = {"files": result.files, "export_errors": result.errors, "onnx_max_diff": result.onnx_max_diff,
             "input_shape": list(data.example_shape), "loader_workers": loading.num_workers}
    return metrics, extra


def _int8(fused: torch.nn.Module, device: torch.device, config: TrialConfig, data: Any, val_loader: Any,
          test_loader: Any, out: Path, loading: LoaderSettings, metrics: dict[str, float],
          result: ExportResult) -> None:
    """INT8 metrics into ``metrics`` and the quantized file into ``result`` (``trainables.run.quantize``);
    a failure is recorded in ``result.errors["int8"]``, as a failing export format is."""
    example = torch.randn(config.runtime.latency_batch_size, *data.example_shape)
    calibration = make_loader(calibration_set(data.train_eval, config.export.int8.calibration_images),
                              config.data.eval_batch_size, train=False, settings=loading)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(result.files["onnx"]) if "onnx" in result.files else Path(tmp) / "model.onnx"
            if "onnx" not in result.files:
                export_onnx(fused, example, fp32)
            int8 = quantize_int8(fp32, out, calibration=calibration, val=val_loader, test=test_loader,
                                 reference=metrics, example=example, num_threads=torch.get_num_threads(),
                                 latency_min_run_time=config.export.latency_min_run_time)
    except Exception as err:  # noqa: BLE001 - a failed quantization must not lose the trial
        result.errors["int8"] = f"{type(err).__name__}: {err}"
        return
    finally:
        fused.to(device)  # the ONNX export moved it to the CPU
    metrics.update(int8.metrics)
    metrics["fused_weight_range"] = statistics.median(weight_ranges(fused))
    result.files["int8"] = str(int8.path)


def _weights_accuracy(engine: SearchEngine, val_loader: Any, data: Any, config: TrialConfig,
                      loading: LoaderSettings) -> dict[str, float]:
    """``weights_val_acc`` (and ``weights_test_acc`` with a test split) of the model as loaded from
    ``model.weights``, before any training step."""
    out = {"weights_val_acc": float(engine.evaluate(val_loader)[1])}
    if data.test is not None:
        test_loader = make_loader(data.test, config.data.eval_batch_size, train=False, settings=loading)
        out["weights_test_acc"] = float(engine.evaluate(test_loader)[1])
    return out


def run_trial(
    config: TrialConfig,
    workdir: Path,
    hooks: Sequence[TrialHook] = (),
    resume_from: Path | None = None,
    report: ReportFn | None = None,
    trial_name: str = "trial",
    placement: Placement | None = None,
    durable_checkpoints: bool = True,
    gpus_held: float | None = None,
    notice: PreemptionNotice | None = None,
    mid_epoch_saved: Callable[[Path], None] | None = None,
) -> TrialResult:
    """Run (or resume) one trial in ``workdir``; see the module doc for what it writes.

    Args:
        config: the trial (``TrialConfig.from_dict`` / ``from_overrides``).
        workdir: its folder (metrics, alpha, checkpoints, export).
        hooks: tracking hooks (``TrialHook``; MLflow's is ``orchestrator.tracking.MLflowTrialHook``).
        resume_from: a checkpoint folder to continue from (same trial identity).
        report: called with each epoch's metrics and checkpoint folder (Ray Tune's ``tune.report``).
        trial_name: the name hooks and logs use.
        placement: one process by default; a ``trainables.ray_tune.distributed.DDPPlacement`` runs
            this on every rank of a DDP group, where only rank 0 exports and writes checkpoints.
        durable_checkpoints: fsync every checkpoint; off when ``report`` copies it to the run's
            storage right away (Ray Tune, Ray Train): that copy is what a restart reads.
        gpus_held: the GPUs the whole trial holds (``gpu_seconds`` = ``train_seconds`` times it;
            0.25 for a quarter of a GPU); None: one on a CUDA device, none on the CPU.
        notice: a preemption notice (SIGTERM): checkpoint after the step in flight, then raise
            ``TrialPreempted``; also turns on ``checkpoint.every_steps`` / ``every_seconds`` (one process only).
        mid_epoch_saved: called with the checkpoint folder after each mid-epoch checkpoint (Ray Tune
            copies it to the trial's storage: ``trainables.ray_tune.midepoch_store``).

    Returns:
        The final metrics, the per-epoch history, the export and checkpoint folders, the summary.

    Raises:
        ConfigError: a user error (bad data path, budget above the candidate count, a checkpoint of
            another trial identity, ...).
        CheckpointError: an unreadable ``resume_from``.
        NonFiniteLossError: the loss became NaN or infinite.
        FusionMismatchError: the fused model does not compute what the supernet computes.
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_dir, export_dir = workdir / CHECKPOINT_DIR, workdir / EXPORT_DIR
    history: list[dict[str, float]] = []
    saved: tuple[dict[str, Any], dict[str, Any]] | None = None
    if resume_from is not None:  # hook state (e.g. the tracking run id) is needed before on_start
        saved = load_checkpoint(Path(resume_from))
        _check_resumable(saved[1]["config"], config)
        history = saved[1]["history"]
        for hook, state in zip(hooks, saved[1].get("hooks", [])):
            hook.load_state_dict(state)
    try:
        for hook in hooks:  # before any setup, so worker-side errors (a missing data path) are tracked
            hook.on_start(config, trial_name, resume_from is not None)
        place = placement or Placement()
        device = place.device(config.runtime)
        memory = PeakMemory(device)  # this trial's window, also after a resume in a reused process
        data = build_data(config.data, config.seed)
        torch.manual_seed(derive_seed(config.seed, Stream.INIT))  # weight init is seeded too
        model = build_trial_model(config, data.num_classes, data.in_channels)
        loading = LoaderSettings.resolve(config.data, trial_cpus(config.runtime), device, data.train)
        loaders = place.loaders(data, config.data, loading)
        train_loader, val_loader = loaders.train, loaders.val
        engine = SearchEngine(model, config.search, config.optim, steps_per_epoch=len(train_loader),
                              seed=config.seed, device=device, runtime=config.runtime,
                              keep_kxk=config.keeps_kxk,
                              rebuild=lambda: build_trial_model(config, data.num_classes, data.in_channels))
        place.attach(engine)
        if saved is not None and resume_from is not None:
            engine.load_state_dict(saved[0], saved[1]["engine"])
            if (Path(resume_from) / EXPORT_DIR).is_dir() and Path(resume_from).resolve() != ckpt_dir.resolve():
                shutil.rmtree(export_dir, ignore_errors=True)
                shutil.copytree(Path(resume_from) / EXPORT_DIR, export_dir)
        start = saved[1].get("start", {}) if saved is not None else {}
        if config.model.weights is not None and not start:  # collective under DDP, as every evaluation
            start = _weights_accuracy(engine, val_loader, data, config, loading)

        def checkpoint(extra: dict[str, Path]) -> None:
            tensors, engine_meta = engine.state_dict()
            meta = {"engine": engine_meta, "history": history, "config": config.to_dict(), "start": start,
                    "hooks": [hook.state_dict() for hook in hooks], "trial_name": trial_name}
            if place.is_main:
                save_checkpoint(ckpt_dir, tensors, meta, extra, durable=durable_checkpoints)

        def mid_epoch_checkpoint() -> None:
            checkpoint({})
            if mid_epoch_saved is not None and place.is_main:
                mid_epoch_saved(ckpt_dir)

        mid_epoch = (_MidEpoch(config, notice, mid_epoch_checkpoint)
                     if notice is not None and engine.sync.world_size == 1 else None)
        while engine.epoch < config.search.epochs:
            tick = time.perf_counter()
            train = engine.train_epoch(train_loader, mid_epoch.after_step if mid_epoch else None)
            if train is None:  # only a notice stops an epoch
                assert mid_epoch is not None
                raise TrialPreempted(f"preempted ({mid_epoch.notice.reason}) in epoch {engine.epoch + 1} after step "
                                     f"{engine.progress.steps if engine.progress else 0}: checkpoint written to "
                                     f"{ckpt_dir}; continue with --resume")
            val_loss, val_acc = engine.evaluate(val_loader)
            check_finite(val_loss, engine.epoch, what="validation loss")
            mask = engine.eval_mask()
            took = time.perf_counter() - tick
            seconds = took + sum(row["epoch_time_s"] for row in history)
            values = {**train, "epoch": float(engine.epoch), "epochs_trained": float(engine.epochs_trained),
                      "val_loss": val_loss, "val_acc": val_acc, "branches_kept": float(mask.sum()),
                      "branches_total": float(engine.masks.num_candidates), "epoch_time_s": took, "train_seconds": seconds,
                      "gpu_seconds": seconds * (float(device.type == "cuda") if gpus_held is None else gpus_held),
                      "peak_memory_mb": memory.peak_mb()}
            metrics = {**{name: float(values[name]) for name in EPOCH_METRICS}, **start}
            save_alpha({"epoch": engine.epoch, **alpha_table(engine.masks.layers, engine.alpha, mask)}, workdir / "alpha.json")
            extra: dict[str, Path] = {}
            summary_extra: dict[str, Any] = {}
            last = engine.epoch == config.search.epochs
            if last:
                engine.finalize()  # on every rank: fixing the mask is collective under DDP
            if last and place.is_main:
                final, summary_extra = _finish(engine, config, data, loaders.export, export_dir, loading)
                metrics.update(final)
            history.append(metrics)
            _write_jsonl(workdir / "metrics.jsonl", history)
            for hook in hooks:
                hook.on_epoch(metrics, engine.epoch)
            if last and place.is_main:
                summary = _summary(config, trial_name, history, device, started, summary_extra)
                (export_dir / "summary.json").write_text(json.dumps(summary, indent=1))
                for hook in hooks:
                    hook.on_end(metrics, export_dir)
                extra = {EXPORT_DIR: export_dir}
            checkpoint(extra)
            if report is not None:
                report(metrics, ckpt_dir)
            if mid_epoch is not None:
                mid_epoch.saved()
                if notice is not None and notice.requested and not last:  # the notice came outside a step
                    raise TrialPreempted(f"preempted ({notice.reason}) after epoch {engine.epoch}: checkpoint written to "
                                         f"{ckpt_dir}; continue with --resume")
    except BaseException as err:
        for hook in hooks:
            hook.on_error(err)
        raise
    summary_path = export_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return TrialResult(history[-1] if history else {}, history, export_dir, ckpt_dir, summary)


class _MidEpoch:
    """When to write a checkpoint inside an epoch: on a preemption notice (then stop) or on the
    ``checkpoint.every_steps`` / ``every_seconds`` interval since the last one."""

    def __init__(self, config: TrialConfig, notice: PreemptionNotice, write: Callable[[], None]) -> None:
        self.every_steps, self.every_seconds = config.checkpoint.every_steps, config.checkpoint.every_seconds
        self.notice, self.write = notice, write
        self.saved()

    def saved(self) -> None:
        """A checkpoint was just written: the intervals start again."""
        self.steps, self.since = 0, time.monotonic()

    def after_step(self) -> bool:
        """Called by the engine after every step; True stops the epoch (preempted)."""
        self.steps += 1
        due = (self.every_steps is not None and self.steps >= self.every_steps) or (
            self.every_seconds is not None and time.monotonic() - self.since >= self.every_seconds)
        if self.notice.requested or due:
            self.write()
            self.saved()
        return self.notice.requested


def _summary(config: TrialConfig, trial_name: str, history: list[dict[str, float]], device: torch.device,
             started: float, extra: dict[str, Any]) -> dict[str, Any]:
    """JSON summary of a finished trial (what a person or the orchestrator reads first)."""
    return {
        "trial_name": trial_name,
        "final": history[-1],
        "best_val_acc": max(row["val_acc"] for row in history),
        "epochs": len(history),
        "device": str(device),
        "num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "elapsed_s": time.perf_counter() - started,
        "config": config.to_dict(),
        **extra,
    }
