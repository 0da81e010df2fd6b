"""End of a trial: fuse, verify fused == supernet, measure, and export loadable models.

Exported files (each loads with plain torch / onnxruntime, no project code needed):
``model.pt2`` (``torch.export.load(...).module()``), ``model.ts`` (``torch.jit.load``),
``model.onnx`` (checked against the fused model with onnxruntime), ``fused_state_dict.pt``
and ``architecture.json`` (``searchspace.build_from_architecture`` + reparameterize).
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from searchspace import architecture_of, odbb_layers, reparameterize

from ..errors import FusionMismatchError

__all__ = [
    "ExportResult",
    "verify_fused",
    "count_params",
    "count_flops",
    "measure_latency",
    "export_model",
]

LOGIT_TOLERANCE = 1e-3
"""Allowed max |fused - supernet| logit difference, relative to max(1, |logits|)."""


@dataclass
class ExportResult:
    """Metrics for the final report and the files written (name -> path) or failed (name -> error)."""

    metrics: dict[str, float]
    files: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    onnx_max_diff: float | None = None


@contextmanager
def _strict_fp32() -> Iterator[None]:
    """Disable TF32 (on by default for cuDNN convs), whose ~1e-3 error would mask fusion bugs."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


@torch.no_grad()
def verify_fused(supernet: nn.Module, fused: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """(fused accuracy, max abs logit difference) on ``loader``; raises FusionMismatchError.

    Raises when logits differ beyond ``LOGIT_TOLERANCE`` or when a prediction flips on a
    sample whose supernet top-2 margin is clearly larger than the numeric difference.
    Runs in strict float32 (no TF32 on GPU).
    """
    supernet.eval()
    fused.eval()
    max_diff, scale, correct, seen = 0.0, 1.0, 0, 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        with _strict_fp32():
            a, b = supernet(inputs), fused(inputs)
        diff = float((a - b).abs().max())
        max_diff, scale = max(max_diff, diff), max(scale, float(a.abs().max()))
        top2 = a.topk(min(2, a.shape[1]), dim=1).values
        margin = top2[:, 0] - top2[:, -1]
        flipped = (a.argmax(1) != b.argmax(1)) & (margin > 4 * diff + 1e-6)
        if bool(flipped.any()):
            raise FusionMismatchError(f"fused model changes {int(flipped.sum())} clear predictions (max logit diff {diff:.3g})")
        correct += int((b.argmax(1) == targets).sum())
        seen += len(targets)
    if max_diff > LOGIT_TOLERANCE * scale:
        raise FusionMismatchError(f"fused logits differ from the supernet by {max_diff:.3g} (> {LOGIT_TOLERANCE} x {scale:.3g})")
    return correct / max(seen, 1), max_diff


def count_params(model: nn.Module) -> int:
    """Parameters used in the forward pass: inactive ODBB branches are not counted."""
    total = sum(p.numel() for p in model.parameters())
    for _, block in odbb_layers(model):
        for name, on in zip(block.branch_names, block.active.tolist()):
            if not on:
                total -= sum(p.numel() for p in block.branches[name].parameters())
    return total


@torch.no_grad()
def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``example`` (FlopCounterMode: 2 per multiply-add)."""
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(example)
    return int(counter.get_total_flops())


@torch.no_grad()
def measure_latency(model: nn.Module, example: torch.Tensor, min_run_time: float) -> float:
    """Median forward latency in ms (torch.utils.benchmark, CUDA-synchronised on GPU)."""
    from torch.utils import (
        benchmark,  # imported here: it imports cpp_extension, which warns on CPU-only hosts
    )

    model.eval()
    timer = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": example},
                            num_threads=torch.get_num_threads())
    return float(timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)


def _onnx(fused: nn.Module, example: torch.Tensor, path: Path) -> float:
    """Export ONNX (TorchScript-based exporter) and return max |onnxruntime - torch|."""
    import onnxruntime

    cpu_model, cpu_example = fused.cpu(), example.cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(cpu_model, (cpu_example,), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": cpu_example.numpy()})[0])
    with torch.no_grad():
        diff = float((got - cpu_model(cpu_example)).abs().max())
    if diff > LOGIT_TOLERANCE:
        path.unlink(missing_ok=True)
        raise FusionMismatchError(f"onnxruntime output differs from torch by {diff:.3g}")
    return diff


def _write_formats(fused: nn.Module, example: torch.Tensor, out: Path, formats: list[str], result: ExportResult) -> None:
    """Write each requested format; a failing format is recorded in ``result.errors``."""

    def write_onnx(path: Path) -> None:
        result.onnx_max_diff = _onnx(fused, example, path)

    writers = {
        "state_dict": ("fused_state_dict.pt", lambda p: torch.save(fused.state_dict(), p)),
        "torch_export": ("model.pt2", lambda p: torch.export.save(
            torch.export.export(fused, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},)), p)),
        "torchscript": ("model.ts", lambda p: torch.jit.save(torch.jit.trace(fused, example), str(p))),
        "onnx": ("model.onnx", write_onnx),
    }
    for fmt in formats:
        if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
            result.errors[fmt] = "onnxruntime is not installed (pip install 'repnas-tune[onnx]')"
            continue
        filename, write = writers[fmt]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
                write(out / filename)
            result.files[fmt] = str(out / filename)
        except Exception as err:  # noqa: BLE001 - one bad format must not lose the trial
            result.errors[fmt] = f"{type(err).__name__}: {err}"
    fused.to(example.device)


def export_model(
    supernet: nn.Module,
    val_loader: DataLoader,
    example_shape: tuple[int, ...],
    out: Path,
    *,
    device: torch.device,
    formats: list[str],
    latency_batch_size: int,
    latency_min_run_time: float,
) -> tuple[nn.Module, ExportResult]:
    """Fuse ``supernet`` (its active branches), verify, measure and write ``out``.

    Returns the fused model and the final metrics (``fused_val_acc``,
    ``fused_max_logit_diff``, ``params_*``, ``flops_*``, ``latency_*_ms``).
    """
    out.mkdir(parents=True, exist_ok=True)
    supernet.eval()
    fused = reparameterize(supernet).to(device).eval()
    fused_acc, max_diff = verify_fused(supernet, fused, val_loader, device)
    one = torch.randn(1, *example_shape, device=device)
    batch = torch.randn(latency_batch_size, *example_shape, device=device)
    result = ExportResult(metrics={
        "fused_val_acc": fused_acc,
        "fused_max_logit_diff": max_diff,
        "params_fused": float(count_params(fused)),
        "params_unfused": float(count_params(supernet)),
        "flops_fused": float(count_flops(fused, one)),
        "flops_unfused": float(count_flops(supernet, one)),
        "latency_fused_ms": measure_latency(fused, batch, latency_min_run_time),
        "latency_unfused_ms": measure_latency(supernet, batch, latency_min_run_time),
    })
    architecture_of(supernet).save(out / "architecture.json")
    result.files["architecture"] = str(out / "architecture.json")
    _write_formats(fused, torch.randn(2, *example_shape, device=device), out, formats, result)
    return fused, result

