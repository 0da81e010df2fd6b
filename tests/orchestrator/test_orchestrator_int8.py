"""INT8 accuracy as a sweep objective: validated before any compute, logged to MLflow with the
quantized model as an artifact, and on the Pareto table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.sweep import load_sweep
from trainables import ConfigError

INT8_OBJECTIVES = [{"metric": "int8_val_acc", "mode": "max"}, {"metric": "branches_kept", "mode": "min"}]


def test_int8_objective_needs_the_quantization_on(tmp_path: Path, write_sweep: Any, kit: Any) -> None:
    sweep = kit.tiny_sweep(tmp_path, search={"objectives": INT8_OBJECTIVES})
    with pytest.raises(ConfigError, match=r"search\.objectives\[0\]\.metric: int8_val_acc is reported only by "
                                          r"trials with trial\.export\.int8\.enabled: true"):
        load_sweep(write_sweep(sweep))
    sweep["trial"]["export"]["int8"] = {"enabled": True}
    cfg = load_sweep(write_sweep(sweep))
    assert [o.metric for o in cfg.objectives] == ["int8_val_acc", "branches_kept"]
    sweep["space"]["export.int8.enabled"] = {"choice": [True, False]}  # some trials would not report it
    with pytest.raises(ConfigError, match=r"some trials of this space have it off"):
        load_sweep(write_sweep(sweep))


def test_int8_test_metric_needs_a_test_split(tmp_path: Path, write_sweep: Any, kit: Any) -> None:
    sweep = kit.tiny_sweep(tmp_path, search={"objectives": [{"metric": "int8_test_acc", "mode": "max"}]})
    sweep["trial"]["export"]["int8"] = {"enabled": True}
    with pytest.raises(ConfigError, match=r"int8_test_acc needs a test split, and digits has none"):
        load_sweep(write_sweep(sweep))


@pytest.mark.slow
def test_sweep_on_int8_accuracy_logs_it_and_fronts_it(tmp_path: Path, write_sweep: Any, kit: Any) -> None:
    sweep = kit.tiny_sweep(tmp_path, name="int8", search={"objectives": INT8_OBJECTIVES, "num_samples": 2})
    sweep["space"] = {"search.budget": {"choice": [0.2, 0.75]}, "model.reparam": {"choice": ["offline", "offline_qa"]}}
    sweep["trial"]["export"]["int8"] = {"enabled": True, "calibration_images": 64}
    proc = kit.run_cli([str(write_sweep(sweep))], cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "int8_val_acc" in proc.stdout  # the console's Pareto table
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent, kids = kit.children(client, "int8")
    assert parent.data.tags["repnas.objectives"] == "int8_val_acc:max,branches_kept:min"
    assert len(kids) == 2
    for kid in kids:
        assert kid.info.status == "FINISHED", kid.data.tags.get("repnas.error")
        metrics = kid.data.metrics
        assert {"int8_val_acc", "int8_val_drop", "latency_int8_ms", "latency_onnx_fp32_ms"} <= set(metrics)
        assert metrics["int8_val_drop"] == pytest.approx(metrics["fused_val_acc"] - metrics["int8_val_acc"])
        assert "model_int8.onnx" in {a.path for a in client.list_artifacts(kid.info.run_id)}
    # the logged INT8 model loads in onnxruntime
    import mlflow
    import onnxruntime

    local = mlflow.artifacts.download_artifacts(run_id=kids[0].info.run_id, artifact_path="model_int8.onnx",
                                                tracking_uri=uri)
    assert onnxruntime.InferenceSession(local, providers=["CPUExecutionProvider"]).get_inputs()[0].name == "input"
    table = json.loads((tmp_path / "ray_results" / "int8" / "pareto" / "pareto.json").read_text())
    assert [o["metric"] for o in table["objectives"]] == ["int8_val_acc", "branches_kept"]
    by_name = {k.data.tags["repnas.trial_name"]: k.data.metrics["int8_val_acc"] for k in kids}
    assert {t["trial_name"]: t["metrics"]["int8_val_acc"] for t in table["trials"]} == pytest.approx(by_name)
    assert any(t["pareto"] for t in table["trials"])
