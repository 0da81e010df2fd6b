"""MLflow unreachable at start (fast exit) and in the middle of a sweep (sync afterwards)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _faults import (Driver, MlflowServer, assert_mlflow_complete, cli, free_port, mlflow_children, result_grid,
                     sweep, write)

pytestmark = pytest.mark.reliability
SECRET = "s3cr3t-pw"


@pytest.mark.parametrize("uri", ["http://127.0.0.1:{port}", "http://bob:" + SECRET + "@127.0.0.1:{port}",
                                 "sqlite:////proc/repnas/mlflow.db", "sqlite:////proc/mlflow.db"])
def test_unreachable_tracking_at_start_exits_fast(uri: str, tmp_path: Path) -> None:
    uri = uri.format(port=free_port())
    path = write(tmp_path, sweep(tmp_path, "nomlflow"))
    started = time.monotonic()
    proc = cli("orchestrator.run", [str(path)], tmp_path, timeout=60, MLFLOW_TRACKING_URI=uri)
    assert time.monotonic() - started < 15
    assert proc.returncode == 1, proc.stderr
    assert uri.replace(f"bob:{SECRET}@", "***@") in proc.stderr and SECRET not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "ray_results").exists()  # no Ray, no trial, no experiment folder


@pytest.mark.slow
def test_server_down_mid_sweep_then_sync(tmp_path: Path, mlflow_server: MlflowServer,
                                         start_driver: Callable[..., Driver]) -> None:
    """The server stops after the first results: trials still finish and Ray keeps everything;
    the driver exits 1 naming the sync command; once the server is back, the sync fills every
    child run in (continuous history, model, Pareto, registry) and a second sync changes nothing.
    The URI carries credentials, which must appear nowhere."""
    secret_uri = mlflow_server.uri.replace("http://", f"http://bob:{SECRET}@")
    data = sweep(tmp_path, "outage")
    data["space"] = {"search.budget": {"grid": [0.2, 0.75]}}
    path = write(tmp_path, data)
    exp = tmp_path / "ray_results" / "outage"
    driver = start_driver([str(path)], MLFLOW_TRACKING_URI=secret_uri)
    driver.wait_for(lambda: any(f.stat().st_size for f in exp.glob("*/result.json")), "a trial result")
    mlflow_server.stop()
    driver.proc.wait(timeout=400)
    out = driver.output()
    assert driver.proc.returncode == 1, out[-5000:]
    assert "python -m orchestrator.sync" in out and "training continues" in out
    grid = list(result_grid(exp))
    assert len(grid) == 2 and all(r.error is None and r.metrics["epoch"] == 4 for r in grid)  # Ray has it all
    mlflow_server.start()
    synced = cli("orchestrator.sync", [str(path)], tmp_path, timeout=300, MLFLOW_TRACKING_URI=secret_uri)
    assert synced.returncode == 0, synced.stdout[-3000:] + synced.stderr[-3000:]
    names = {Path(r.path).name for r in grid}
    assert_mlflow_complete(mlflow_server.uri, "outage", names)
    again = cli("orchestrator.sync", [str(path)], tmp_path, timeout=300, MLFLOW_TRACKING_URI=secret_uri)
    assert again.returncode == 0 and "0 child run(s) created, 0 metric point(s) logged" in again.stdout
    assert_mlflow_complete(mlflow_server.uri, "outage", names)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    assert client.get_model_version_by_alias("repnas-outage", "pareto-1").run_id
    parent, kids = mlflow_children(mlflow_server.uri, "outage")
    texts = [out, synced.stdout, synced.stderr, (exp / "repnas_sweep.json").read_text()]
    for run in (parent, *kids):
        texts += [json.dumps(run.data.params), json.dumps(run.data.tags)]
    texts.append(Path(client.download_artifacts(parent.info.run_id, "sweep/resolved_sweep.yaml", str(tmp_path))).read_text())
    leaks = [t[max(0, t.index(SECRET) - 200):t.index(SECRET) + 50] for t in texts if SECRET in t]
    assert not leaks, leaks
    assert parent.data.params["mlflow.tracking_uri"].startswith("http://***@127.0.0.1")
