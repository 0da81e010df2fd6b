"""How a trial runs and what it writes: the ``trial.runtime``, ``trial.export`` and
``trial.checkpoint`` sections (``TrialConfig`` in ``trainables.config.sections`` holds them)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from .schema import at_least, between, join_path, rule

__all__ = ["RuntimeConfig", "ExportConfig", "Int8Config", "CheckpointConfig", "EXPORT_FORMATS"]

EXPORT_FORMATS = ("state_dict", "torch_export", "torchscript", "onnx")
_Format = Literal["state_dict", "torch_export", "torchscript", "onnx"]


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the trial runs."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = field(default=None, metadata=rule(at_least(1)))
    workers: int = field(default=1, metadata=rule(at_least(1)))
    sync_bn: bool = False
    latency_batch_size: int = field(default=1, metadata=rule(at_least(1)))
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast dtype of the training and evaluation forwards (``fp16`` with a gradient scaler);
    weights, optimiser state, alpha, gates and all fusion math stay float32 (``trainables.search.amp``)."""
    channels_last: bool = False
    """Model and inputs in ``torch.channels_last`` memory format (faster convs on tensor cores)."""
    compile: bool = False
    """``torch.compile`` the training forward while the architecture is fixed (baselines, and the
    fixed phase of a search); the random and search phases stay eager (a new mask every step)."""

    def validate(self, path: str) -> None:
        if self.sync_bn and self.workers > 1 and self.device == "cpu":
            raise ConfigError(join_path(path, "sync_bn"), "needs GPU workers (torch's SyncBatchNorm is CUDA-only); "
                                                          "set it to false or train on cuda")


@dataclass(frozen=True)
class Int8Config:
    """INT8 post-training static quantization of the fused model (ONNX Runtime, ``trainables.run.quantize``).

    Off by default: it adds an ONNX export, calibration and two accuracy passes in ONNX Runtime
    to every trial (seconds on small hosts, more on large ones). ``calibration_images``: the
    first that many training images of the trial's split calibrate the activation ranges.
    """

    enabled: bool = False
    calibration_images: int = field(default=256, metadata=rule(at_least(1)))

    def validate(self, path: str) -> None:
        if self.enabled and importlib.util.find_spec("onnxruntime") is None:
            raise ConfigError(join_path(path, "enabled"), "quantizes with onnxruntime, which is not installed "
                                                          "(pip install 'repnas-tune[onnx]')")


@dataclass(frozen=True)
class ExportConfig:
    """What the end of a trial writes, and how long latency is measured per model."""

    formats: list[_Format] = field(default_factory=lambda: list(EXPORT_FORMATS))
    latency_min_run_time: float = field(default=0.5, metadata=rule(between(0.0, 60.0, low_open=True)))
    int8: Int8Config = field(default_factory=Int8Config)


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints inside an epoch (every epoch always ends with one): for nodes that vanish
    without notice, a trial then loses at most this much work. A preemption notice (SIGTERM)
    checkpoints at once regardless (``trainables.run.preemption``). Both unset: epoch ends only."""

    every_steps: int | None = field(default=None, metadata=rule(at_least(1)))
    every_seconds: float | None = field(default=None, metadata=rule(between(0.0, 1e9, low_open=True)))
