"""Real sweeps: local Ray through the CLI, MLflow on sqlite and on an `mlflow server`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
from _servers import MlflowServer, free_port
from mlflow.tracking import MlflowClient

from orchestrator.results.pareto import dominates
from orchestrator.tracking.parent_run import fluent_tracking_uri

pytestmark = pytest.mark.slow
EPOCH_KEYS = ("val_acc", "train_loss", "branches_kept", "epoch")


def _check_sweep(uri: str, experiment: str, n_trials: int, epochs: int, model_name: str) -> None:
    """One parent, n children with params/metrics/artifacts/models; Pareto; registry."""
    client = MlflowClient(uri)
    parent, kids = _children(client, experiment)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["repnas.sweep"] == experiment
    assert parent.data.tags["repnas.objectives"] == "val_acc:max,branches_kept:min"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} >= {"sweep/sweep.yaml", "sweep/resolved_sweep.yaml"}
    assert len(kids) == n_trials
    assert len({k.data.tags["repnas.trial_name"] for k in kids}) == n_trials
    for kid in kids:
        assert kid.info.status == "FINISHED", kid.data.tags.get("repnas.error")
        assert kid.info.run_name == kid.data.tags["repnas.trial_name"]
        assert {"search.budget", "optim.lr", "model.name", "data.dataset"} <= set(kid.data.params)
        for key in EPOCH_KEYS:  # continuous history: one point per epoch, no duplicates
            assert [m.step for m in client.get_metric_history(kid.info.run_id, key)] == list(range(1, epochs + 1)), key
        assert {"fused_val_acc", "latency_fused_ms", "params_fused"} <= set(kid.data.metrics)
        assert {a.path for a in client.list_artifacts(kid.info.run_id)} >= {"architecture.json", "alpha.png", "alpha.json"}
    # the fused model of one child loads and runs
    kid = kids[0]
    with fluent_tracking_uri(uri):  # not mlflow.set_tracking_uri: it would leak into later tests
        model = mlflow.pytorch.load_model(kid.data.tags["repnas.model_uri"])
    import torch

    out = model(torch.zeros(2, 1, 8, 8))
    assert out.shape == (2, 10)
    # Pareto artifact: the flagged points are non-dominated, the others dominated
    local = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="pareto", tracking_uri=uri)
    table = json.loads((Path(local) / "pareto.json").read_text())
    modes = [o["mode"] for o in table["objectives"]]
    metrics = [o["metric"] for o in table["objectives"]]
    points = {t["trial_name"]: [t["metrics"][m] for m in metrics] for t in table["trials"]}
    flagged = {t["trial_name"] for t in table["trials"] if t["pareto"]}
    assert flagged and len(points) == n_trials
    for name, p in points.items():
        beaten = any(dominates(q, p, modes) for other, q in points.items() if other != name)
        assert (name in flagged) == (not beaten)
    assert (Path(local) / "pareto.png").stat().st_size > 10_000
    # registry: every Pareto trial registered, aliases point at the right runs
    runs = {k.info.run_id: k.data.tags["repnas.trial_name"] for k in kids}
    best_acc = max(points[n][0] for n in flagged)
    for alias in ("pareto-1", "best-val_acc"):
        version = client.get_model_version_by_alias(model_name, alias)
        assert runs[version.run_id] in flagged and points[runs[version.run_id]][0] == best_acc
    fewest = client.get_model_version_by_alias(model_name, "best-branches_kept")
    assert points[runs[fewest.run_id]][1] == min(p[1] for p in points.values())
    versions = client.search_model_versions(f"name = '{model_name}'")
    assert {runs[v.run_id] for v in versions} == flagged


def _children(client: MlflowClient, experiment: str) -> tuple[Any, list[Any]]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    return parents[0], [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]


def test_sweep_sqlite_then_refuse_rerun(tmp_path: Path, write_sweep: Any, kit: Any) -> None:
    path = write_sweep(kit.tiny_sweep(tmp_path, name="tiny"))
    proc = kit.run_cli([str(path)], cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Pareto front" in proc.stdout and "mlflow ui --backend-store-uri sqlite:///" in proc.stdout
    assert (tmp_path / "ray_results" / "tiny" / "pareto" / "pareto.csv").is_file()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _check_sweep(uri, "tiny", n_trials=3, epochs=2, model_name="repnas-tiny")
    before = sorted((tmp_path / "ray_results" / "tiny").iterdir())
    again = kit.run_cli([str(path)], cwd=tmp_path, timeout=120)
    assert again.returncode == 2
    assert "already exists" in again.stderr and "--resume" in again.stderr and "--set name=" in again.stderr
    assert "Traceback" not in again.stderr
    assert sorted((tmp_path / "ray_results" / "tiny").iterdir()) == before
    assert len(_children(MlflowClient(uri), "tiny")[1]) == 3


def _first_result(trial_root: Path) -> bool:
    return any(f.stat().st_size > 0 for f in trial_root.glob("*/result.json"))


def test_driver_killed_then_resumed(tmp_path: Path, write_sweep: Any, kit: Any) -> None:
    epochs = 4
    sweep = kit.tiny_sweep(tmp_path, name="killed")
    sweep["trial"]["search"].update({"epochs": epochs, "random_epochs": 1, "search_epochs": 1})
    path = write_sweep(sweep)
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.run", str(path)], cwd=tmp_path,
                              env=kit.cli_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    root = tmp_path / "ray_results" / "killed"
    try:
        deadline = time.monotonic() + 240
        while not _first_result(root):
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial result within 240 s"
            time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
    time.sleep(2)
    results = [f for f in root.glob("*/result.json") if f.stat().st_size > 0]
    assert results, "killed before any trial reported"
    resumed = kit.run_cli([str(path), "--resume"], cwd=tmp_path, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    _check_sweep(f"sqlite:///{tmp_path / 'mlflow.db'}", "killed", n_trials=3, epochs=epochs,
                 model_name="repnas-killed")


def test_sweep_against_mlflow_server(tmp_path: Path, write_sweep: Any, kit: Any) -> None:
    server = MlflowServer(tmp_path, free_port())
    server.start()
    uri = server.uri
    try:
        sweep = kit.tiny_sweep(tmp_path, name="served")
        sweep["search"]["num_samples"] = 2
        sweep["space"]["search.budget"] = {"choice": [0.2, 0.75]}
        proc = kit.run_cli([str(write_sweep(sweep))], cwd=tmp_path, timeout=400, MLFLOW_TRACKING_URI=uri)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        assert f"MLflow: {uri}" in proc.stdout
        _check_sweep(uri, "served", n_trials=2, epochs=2, model_name="repnas-served")
        assert not (tmp_path / "mlflow.db").exists()  # the env var won over the file's sqlite URI
        assert any((tmp_path / "server_artifacts").rglob("MLmodel"))
    finally:
        server.stop()


def test_grid_of_methods_over_seeds_then_report(tmp_path: Path, write_sweep: Any, kit: Any) -> None:
    """A method x seed grid (mapping-valued grid entries), then ``python -m orchestrator.report``."""
    sweep = kit.tiny_sweep(tmp_path, name="methods", search={"algorithm": "grid", "num_samples": 1})
    sweep["space"] = {"search": {"grid": [{"method": "plain"}, {"method": "odbb", "budget": 5}]},
                      "seed": {"grid": [0, 1]}, "optim.lr": 0.1}
    path = write_sweep(sweep)
    proc = kit.run_cli([str(path)], cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    def report(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator.report", str(path), "--out", str(tmp_path / "report"),
                               *extra], cwd=tmp_path, env=kit.cli_env(), capture_output=True, text=True, timeout=300,
                              check=False)

    bad = report("--versus", "dbb")
    assert bad.returncode == 2 and "--versus" in bad.stderr and "expected one of: plain" in bad.stderr
    done = report("--versus", "plain")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    payload = json.loads((tmp_path / "report" / "report.json").read_text())
    assert payload["metric"] == "fused_val_acc"  # digits has no test split
    assert {(g["method"], g["n"], g["target_branches"]) for g in payload["selected"]} == {("plain", 2, 5), ("odbb k=5", 2, 5)}
    kept = {t["trial_name"]: t["metrics"]["branches_kept"] for t in payload["trials"]}
    assert len(kept) == 4 and all(k >= 5 for k in kept.values())
    (verdict,) = payload["verdicts"]
    assert (verdict["searched"], verdict["fixed"], verdict["branches"]) == ("odbb k=5", "plain", 5)
    odbb = next(g for g in payload["selected"] if g["method"] == "odbb k=5")
    plain = next(g for g in payload["selected"] if g["method"] == "plain")
    assert verdict["difference"] == pytest.approx(odbb["mean"]["fused_val_acc"] - plain["mean"]["fused_val_acc"])
    assert payload["reference_verdicts"] == {"plain": [verdict]}
    assert payload["fusion"]["ok"] and payload["fusion"]["max_logit_diff"] < 1e-4
    assert payload["pareto_front_matches"] == {"methods": True}
    assert "odbb k=5 vs plain at 5 branches" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "report.png").stat().st_size > 10_000
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent, _ = _children(client, "methods")
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {
        "report/report.md", "report/report.json", "report/report.png"}


def test_a_sweep_on_a_users_model_from_its_weights_registers_the_users_class(tmp_path: Path, write_sweep: Any,
                                                                             kit: Any) -> None:
    """A torchvision model from a relative weights path: each child run's MLflow model and each
    registered version holds weights that load strictly into an unmodified torchvision
    MobileNetV2, which then computes exactly what the logged model computes."""
    import torch
    import torchvision

    def fresh() -> torch.nn.Module:
        return torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25)

    torch.manual_seed(0)
    torch.save(fresh().state_dict(), tmp_path / "w.pt")
    sweep = kit.tiny_sweep(tmp_path, "users", space={"search.budget": {"choice": [0.5, 0.75]}})
    sweep["search"]["num_samples"] = 2
    sweep["trial"]["model"] = {"name": "torchvision.mobilenet_v2", "options": {"width_mult": 0.25}, "weights": "w.pt"}
    sweep["trial"]["data"].update({"channels": 3, "image_size": 16, "limit_train": 128})
    proc = kit.run_cli([str(write_sweep(sweep))], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    _, kids = _children(client, "users")
    assert len(kids) == 2 and all(k.info.status == "FINISHED" for k in kids)
    x = torch.randn(2, 3, 16, 16)
    with fluent_tracking_uri(uri):
        uris = [k.data.tags["repnas.model_uri"] for k in kids]
        uris += [f"models:/repnas-users/{v.version}" for v in client.search_model_versions("name = 'repnas-users'")]
        assert len(uris) > 2  # the Pareto trials were registered
        for model_uri in uris:
            logged = mlflow.pytorch.load_model(model_uri)  # MLflow's pt2 format: the exported graph
            mine = fresh().eval()
            mine.load_state_dict(logged.state_dict(), strict=True)  # the graph holds torchvision's own keys
            with torch.no_grad():
                assert torch.equal(mine(x), logged(x))


def test_a_sweep_on_a_timm_model_from_its_weights_loads_into_timms_class(tmp_path: Path, write_sweep: Any,
                                                                          kit: Any) -> None:
    """``model.name: timm.lcnet_035`` (BatchNormAct2d, depthwise, squeeze-excite) from a weights file:
    each child run's MLflow model holds weights that load strictly into a fresh timm LCNet, which
    then computes exactly what the logged model computes."""
    import torch

    timm = pytest.importorskip("timm")

    def fresh() -> torch.nn.Module:
        return timm.create_model("lcnet_035", num_classes=10)

    torch.manual_seed(0)
    torch.save(fresh().state_dict(), tmp_path / "w.pt")
    sweep = kit.tiny_sweep(tmp_path, "timm", space={"search.budget": {"choice": [0.5, 0.75]}})
    sweep["search"]["num_samples"] = 2
    sweep["trial"]["model"] = {"name": "timm.lcnet_035", "weights": "w.pt"}
    sweep["trial"]["data"].update({"channels": 3, "image_size": 16, "limit_train": 128})
    proc = kit.run_cli([str(write_sweep(sweep))], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, kids = _children(MlflowClient(uri), "timm")
    assert len(kids) == 2 and all(k.info.status == "FINISHED" for k in kids)
    x = torch.randn(2, 3, 16, 16)
    with fluent_tracking_uri(uri):
        for kid in kids:
            logged = mlflow.pytorch.load_model(kid.data.tags["repnas.model_uri"])
            mine = fresh().eval()
            mine.load_state_dict(logged.state_dict(), strict=True)  # timm's own keys, BatchNormAct2d included
            with torch.no_grad():
                assert torch.equal(mine(x), logged(x))
