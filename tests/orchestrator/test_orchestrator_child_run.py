"""One MLflow writer: the child run the trial's hook writes live equals the one ``sync``
rebuilds from Ray's results alone (real Ray in this process, real MLflow on sqlite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pytest
import ray
from mlflow.tracking import MlflowClient

from orchestrator.tracking.child_run import MLflowTrialHook
from orchestrator.sweep import parse_sweep
from orchestrator.tracking.from_ray import sync_mlflow
from orchestrator.tracking.parent_run import (TAG_MODEL_URI, TAG_PARENT, TAG_TRIAL, SweepState, child_runs,
                                              fluent_tracking_uri, start_parent_run)
from orchestrator.ray_tune.tuner import build_tuner

pytestmark = pytest.mark.slow
# tags naming the run itself or where its model went: different for two runs of one trial
_RUN_TAGS = {TAG_PARENT, TAG_MODEL_URI, "mlflow.log-model.history"}


def _content(client: MlflowClient, run: Any) -> dict[str, Any]:
    """Everything a child run shows, without ids and times."""
    run_id = run.info.run_id
    history = {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
               for key in run.data.metrics}
    model = []
    if TAG_MODEL_URI in run.data.tags:
        with fluent_tracking_uri(client.tracking_uri):  # a models:/ URI resolves through the fluent registry URI
            model = mlflow.artifacts.list_artifacts(artifact_uri=run.data.tags[TAG_MODEL_URI])
    files = {a.path: Path(client.download_artifacts(run_id, a.path)).read_bytes()
             for a in client.list_artifacts(run_id) if a.path.endswith(".json")}
    return {"status": run.info.status, "name": run.info.run_name, "params": run.data.params,
            "tags": {k: v for k, v in run.data.tags.items() if k not in _RUN_TAGS}, "metrics": history,
            "artifacts": sorted(a.path for a in client.list_artifacts(run_id)), "json": files,
            "model": sorted(a.path for a in model)}


def test_hook_and_sync_write_the_same_child_run(tmp_path: Path, kit: Any) -> None:
    broken = tmp_path / "images"
    (broken / "val" / "cls").mkdir(parents=True)  # no train/: the trial fails in its worker, not on the driver
    data = kit.tiny_sweep(tmp_path, "twins", search={"algorithm": "grid", "num_samples": 1},
                          ray={"num_cpus": 2, "num_gpus": 0})
    data["space"] = {"optim.weight_decay": {"grid": [1.0e-4, 1.0e+6]},  # finishes / diverges
                     "data.dataset": {"grid": ["digits", "imagefolder"]}}  # imagefolder: ConfigError in the worker
    data["trial"]["data"]["root"] = str(broken)
    cfg = parse_sweep(data)
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        live = start_parent_run(cfg, resume=False)
        hook = MLflowTrialHook(live.tracking_uri, live.experiment_id, live.parent_run_id)
        results = build_tuner(cfg, [hook]).fit()  # the hook alone: no sync here
    finally:
        ray.shutdown()
    client = MlflowClient(live.tracking_uri)
    rebuilt = SweepState(cfg.name, live.tracking_uri, live.experiment_id,
                         client.create_run(live.experiment_id, run_name="rebuilt").info.run_id)
    report = sync_mlflow(cfg, rebuilt, results)
    assert (report.created, report.completed, report.failed) == (4, 1, 3), report
    hooked, synced = child_runs(live), child_runs(rebuilt)
    assert sorted(hooked) == sorted(synced) and len(hooked) == 4
    statuses = sorted(run.info.status for run in hooked.values())
    assert statuses == ["FAILED", "FAILED", "FAILED", "FINISHED"]
    for name, run in hooked.items():
        assert run.data.tags[TAG_TRIAL] == name
        assert _content(client, run) == _content(client, synced[name]), name
    finished = next(r for r in hooked.values() if r.info.status == "FINISHED")
    assert {"done", "fused_val_acc", "latency_fused_ms"} <= set(finished.data.metrics)
    assert _content(client, finished)["model"] and _content(client, finished)["json"]
    again = sync_mlflow(cfg, live, results)  # the hook left nothing for sync to do
    assert (again.created, again.steps_logged, again.completed, again.failed) == (0, 0, 0, 0), again
