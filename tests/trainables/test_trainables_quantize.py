"""INT8 post-training quantization of the fused model (ONNX Runtime): a real trial on digits
reports the INT8 metrics, the artifact loads in onnxruntime and reproduces them, the weights
are quantized per channel, and the keys are validated before any compute."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

from trainables import INT8_FILE, INT8_METRICS, ConfigError, TrialConfig, apply_overrides, quantize_onnx, run_trial  # noqa: E402
from trainables.run.data import build_data, make_loader  # noqa: E402
from trainables.run.export import export_onnx  # noqa: E402
from trainables.run.quantize import onnx_accuracy, session, weight_ranges  # noqa: E402


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("reparam", ["offline", "offline_qa"])
def test_int8_trial_reports_metrics_and_the_artifact_reproduces_them(tmp_path: Path, tiny, reparam: str) -> None:
    cfg = tiny(**{"search.method": "repvgg", "search.epochs": 2, "search.random_epochs": 0, "search.search_epochs": 0,
                  "model.reparam": reparam, "export.int8.enabled": True, "export.int8.calibration_images": 64})
    result = run_trial(cfg, tmp_path / "trial")
    m = result.metrics
    reported = {n for n in INT8_METRICS if "_test_" not in n}
    assert reported <= set(m) and not {"int8_test_acc", "int8_test_drop"} & set(m)  # digits: no test split
    assert m["int8_val_drop"] == pytest.approx(m["fused_val_acc"] - m["int8_val_acc"])
    assert m["int8_val_acc"] > 0.5 and abs(m["int8_val_drop"]) < 0.1  # a trained 10-class model, barely changed
    assert m["latency_int8_ms"] > 0 and m["latency_onnx_fp32_ms"] > 0
    path = result.export_dir / INT8_FILE
    assert result.summary["files"]["int8"] == str(path) and not result.summary["export_errors"]
    # the artifact alone (onnxruntime, no project code) reproduces the reported accuracy exactly
    data = build_data(cfg.data, cfg.seed)
    val = make_loader(data.val, cfg.data.eval_batch_size, train=False)
    assert onnx_accuracy(session(path, 1), val) == m["int8_val_acc"]
    plain = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.stack([data.val[i][0] for i in range(64)]).numpy()
    int8_logits = plain.run(None, {"input": x})[0]
    # really quantized: QDQ nodes and INT8 weights, and logits close to (not equal to) float32's
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(a.dtype == np.int8 and a.ndim == 4 for a in _initializers(path).values())
    from searchspace import Architecture, build_from_architecture, reparameterize

    fused = reparameterize(build_from_architecture(Architecture.load(result.export_dir / "architecture.json")))
    fused.load_state_dict(torch.load(result.export_dir / "fused_state_dict.pt", weights_only=True))
    with torch.no_grad():
        fp32_logits = fused.eval()(torch.from_numpy(x)).numpy()
    assert m["fused_weight_range"] == pytest.approx(statistics.median(weight_ranges(fused)))
    assert not np.array_equal(int8_logits, fp32_logits)
    assert (int8_logits.argmax(1) == fp32_logits.argmax(1)).mean() >= 0.9
    assert np.abs(int8_logits - fp32_logits).mean() <= 0.25 * np.abs(fp32_logits).mean()


def test_weights_are_quantized_per_output_channel(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-2, 1, 8).reshape(8, 1, 1, 1))  # channel ranges 1000x apart
    export_onnx(model, torch.randn(2, 3, 9, 9), tmp_path / "fp32.onnx")
    calibration = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(32, 3, 9, 9),
                                                                             torch.zeros(32)), batch_size=8)
    path = quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calibration)
    init = _initializers(path)
    graph = onnx.load(str(path)).graph
    weights = [n for n in graph.node if n.op_type == "DequantizeLinear" and init.get(n.input[0]) is not None
               and init[n.input[0]].ndim == 4]
    assert len(weights) == 2
    first = next(n for n in weights if init[n.input[0]].shape[0] == 8)
    q, scale = init[first.input[0]], init[first.input[1]]
    assert q.dtype == np.int8 and scale.shape == (8,)  # one scale per output channel
    original = model[0].weight.detach().numpy()
    assert np.all(np.abs(q * scale.reshape(-1, 1, 1, 1) - original) <= scale.reshape(-1, 1, 1, 1) / 2 + 1e-7)
    assert scale.max() / scale.min() > 100  # the small channels kept their own fine grid


def test_int8_keys_are_validated(tiny_dict) -> None:
    assert TrialConfig.from_dict(tiny_dict).export.int8.enabled is False  # off by default
    with pytest.raises(ConfigError, match=r"trial\.export\.int8\.calibration_images"):
        TrialConfig.from_dict(apply_overrides(tiny_dict, {"export.int8.calibration_images": 0}))
    with pytest.raises(ConfigError, match=r"trial\.export\.int8\.enabled"):
        TrialConfig.from_dict(apply_overrides(tiny_dict, {"export.int8.enabled": "yes"}))


def test_quant_aware_forms_refuse_model_weights(tiny_dict, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    torch.save({}, weights)
    trial = apply_overrides(tiny_dict, {"model.name": "torchvision.resnet18", "model.weights": str(weights),
                                        "model.reparam": "online_qa"})
    with pytest.raises(ConfigError, match=r"trial\.model\.reparam: online_qa cannot start from model\.weights"):
        TrialConfig.from_dict(trial)
