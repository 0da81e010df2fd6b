"""``run_trial``: one whole trial (data -> model -> epochs with checkpoints -> export).

The single entry that the CLI (``trainables.cli``) and the Ray Tune trainable
(``trainables.ray_tune.tune``) both call. Layout of ``workdir``::

    metrics.jsonl      one JSON line of flat metrics per epoch
    alpha.json         alpha and the current mask, layers x branch types (every epoch)
    checkpoint/        latest epoch's checkpoint (atomic); the last one also holds export/
    export/            architecture.json, model.pt2, model.ts, model.onnx,
                       fused_state_dict.pt, alpha.json, alpha.png, summary.json
"""

from __future__ import annotations

import json
import shutil
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
from ..errors import ConfigError
from ..search.engine import SearchEngine
from ..search.failures import check_finite
from .alpha import alpha_table, plot_alpha, save_alpha
from .build import build_trial_model
from .checkpoint import load_checkpoint, save_checkpoint
from .data import LoaderSettings, build_data, make_loader
from .export import export_model
from .hooks import TrialHook
from .memory import PeakMemory
from .placement import Placement, trial_cpus

__all__ = ["run_trial", "TrialResult", "ReportFn", "CHECKPOINT_DIR", "EXPORT_DIR"]

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
    if data.test is not None:
        test_loader = make_loader(data.test, config.data.eval_batch_size, train=False, settings=loading)
        metrics["test_acc"] = engine.evaluate(test_loader, model=fused)[1]
    table = alpha_table(engine.masks.layers, engine.alpha, engine.eval_mask())
    save_alpha(table, out / "alpha.json")
    plot_alpha(table, out / "alpha.png")
    metrics["done"] = 1.0
    extra = {"files": result.files, "export_errors": result.errors, "onnx_max_diff": result.onnx_max_diff,
             "input_shape": list(data.example_shape), "loader_workers": loading.num_workers}
    return metrics, extra


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
) -> TrialResult:
    """Run (or resume) one trial in ``workdir``; see the module doc for what it writes.

    ``placement``: one process by default; a ``trainables.ray_tune.distributed.DDPPlacement`` runs
    this on every rank of a DDP group, where only rank 0 exports and writes checkpoints.
    ``durable_checkpoints``: fsync every checkpoint; off when ``report`` copies it to the
    run's storage right away (Ray Tune, Ray Train): that copy is what a restart reads.
    ``gpus_held``: the GPUs the whole trial holds (``gpu_seconds`` = ``train_seconds`` times it;
    0.25 for a quarter of a GPU); None: one on a CUDA device, none on the CPU.

    Raises ``ConfigError`` for user errors (bad data path, budget above the candidate
    count, ...), ``CheckpointError`` for an unreadable ``resume_from``.
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
        while engine.epoch < config.search.epochs:
            tick = time.perf_counter()
            train = engine.train_epoch(train_loader)
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
            tensors, engine_meta = engine.state_dict()
            meta = {"engine": engine_meta, "history": history, "config": config.to_dict(), "start": start,
                    "hooks": [hook.state_dict() for hook in hooks], "trial_name": trial_name}
            if place.is_main:
                save_checkpoint(ckpt_dir, tensors, meta, extra, durable=durable_checkpoints)
            if report is not None:
                report(metrics, ckpt_dir)
    except BaseException as err:
        for hook in hooks:
            hook.on_error(err)
        raise
    summary_path = export_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return TrialResult(history[-1] if history else {}, history, export_dir, ckpt_dir, summary)


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
