"""INT8 post-training static quantization of a fused model with ONNX Runtime.

Why ONNX Runtime and not PyTorch's pt2e flow: INT8 here is for CPU deployment, and ONNX
Runtime is that runtime (its QDQ graphs also run on TensorRT and other execution providers);
the project already ships ONNX export checked with it (the ``onnx`` extra), and the quantized
file loads with ``onnxruntime`` alone, no torch or project code. pt2e's quantized models run
in PyTorch, whose CPU INT8 kernels are not what an edge deployment uses.

Recipe (DESIGN.md section 14): ``quant_pre_process`` (shape inference, graph optimisation)
on the float32 ONNX, then ``quantize_static`` in QDQ format, per-channel weights, signed
INT8 weights and activations (S8S8: ONNX Runtime's default for QDQ; U8S8 can saturate on
AVX2 CPUs, which would mix a kernel artefact into the accuracy), MinMax calibration on the
first ``calibration_images`` training images of the trial's split (fixed for a split seed,
without augmentation). Float32 and INT8 run in sessions with the same options.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["INT8_FILE", "Int8Result", "session", "onnx_accuracy", "onnx_latency", "quantize_onnx", "calibration_set",
           "weight_ranges", "quantize_int8"]

INT8_FILE = "model_int8.onnx"
"""The quantized model's file name in the export folder (logged to the trial's MLflow run)."""
_INPUT = "input"  # the input name ``trainables.run.export`` gives the ONNX graph


def session(path: Path, num_threads: int) -> onnxruntime.InferenceSession:
    """A CPU session; float32 and INT8 models get the same options (threads, full graph optimisation)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _batches(loader: DataLoader) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    for inputs, targets in loader:
        yield inputs.float().numpy(), targets


def onnx_accuracy(sess: onnxruntime.InferenceSession, loader: DataLoader) -> float:
    """Top-1 accuracy of an ONNX session on ``loader``."""
    correct = seen = 0
    for inputs, targets in _batches(loader):
        logits = sess.run(None, {_INPUT: inputs})[0]
        correct += int((torch.from_numpy(logits).argmax(1) == targets).sum())
        seen += len(targets)
    return correct / max(seen, 1)


def onnx_latency(sess: onnxruntime.InferenceSession, example: np.ndarray, min_run_time: float) -> float:
    """Median latency of one ``run`` in ms (torch.utils.benchmark, as ``export.measure_latency``)."""
    from torch.utils import benchmark

    feed = {_INPUT: example}
    timer = benchmark.Timer(stmt="sess.run(None, feed)", globals={"sess": sess, "feed": feed})
    return float(timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)


@torch.no_grad()
def weight_ranges(model: torch.nn.Module) -> list[float]:
    """Per conv of ``model``: the largest ``max|w| / std(w)`` over its output channels.

    The span, in standard deviations, that a per-channel INT8 weight grid must cover: 2-3 for
    a plain trained conv, several times more where a fused identity or 1x1 put a large centre
    tap into the kernel (the outlier weights QARepVGG blames for RepVGG's INT8 loss).
    """
    spans = []
    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        w = conv.weight.flatten(1).double()
        spans.append(float((w.abs().amax(1) / w.std(1).clamp_min(1e-12)).max()))
    return spans


class _Reader:
    """``CalibrationDataReader``: the calibration images, one batch per ``get_next``."""

    def __init__(self, loader: DataLoader) -> None:
        self._batches = (inputs for inputs, _ in _batches(loader))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {_INPUT: batch}


def quantize_onnx(fp32: Path, out: Path, calibration: DataLoader) -> Path:
    """Write the INT8 (QDQ, per-channel, S8S8) model of the float32 ONNX ``fp32`` to ``out``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(_Reader, CalibrationDataReader):  # ORT checks the base class
        pass

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(prepared, out, Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)
    return out


@dataclass
class Int8Result:
    """The INT8 metrics of a trial and the quantized file."""

    metrics: dict[str, float]
    path: Path


def calibration_set(train: Dataset, images: int) -> Dataset:
    """The first ``images`` items of the training split (all of it when smaller)."""
    return Subset(train, range(min(images, len(train))))  # type: ignore[arg-type]


def quantize_int8(
    fp32: Path,
    out: Path,
    *,
    calibration: DataLoader,
    val: DataLoader,
    test: DataLoader | None,
    reference: dict[str, float],
    example: torch.Tensor,
    num_threads: int,
    latency_min_run_time: float,
) -> Int8Result:
    """Quantize ``fp32`` into ``out / INT8_FILE`` and measure it beside the float32 model.

    ``reference``: the float32 fused model's ``fused_val_acc`` (and ``test_acc``), the drops'
    baselines. ``example``: the latency batch; both models run it in sessions with the same
    options. Metrics: ``int8_val_acc``, ``int8_val_drop`` (float32 minus INT8, a fraction),
    ``int8_test_acc`` / ``int8_test_drop`` with a test loader, ``latency_onnx_fp32_ms``,
    ``latency_int8_ms``, ``int8_seconds`` (the whole step). ``fused_weight_range`` (the median of
    :func:`weight_ranges` over the fused model's convs) is the caller's: it needs the torch model.
    """
    started = time.perf_counter()
    path = quantize_onnx(fp32, out / INT8_FILE, calibration)
    fp32_sess, int8_sess = session(fp32, num_threads), session(path, num_threads)
    metrics = {"int8_val_acc": onnx_accuracy(int8_sess, val)}
    metrics["int8_val_drop"] = reference["fused_val_acc"] - metrics["int8_val_acc"]
    if test is not None and "test_acc" in reference:
        metrics["int8_test_acc"] = onnx_accuracy(int8_sess, test)
        metrics["int8_test_drop"] = reference["test_acc"] - metrics["int8_test_acc"]
    batch = example.float().cpu().numpy()
    metrics["latency_onnx_fp32_ms"] = onnx_latency(fp32_sess, batch, latency_min_run_time)
    metrics["latency_int8_ms"] = onnx_latency(int8_sess, batch, latency_min_run_time)
    metrics["int8_seconds"] = time.perf_counter() - started
    return Int8Result(metrics, path)


