"""The documented way to run a sweep on a cluster: ``ray job submit`` to the job server of a
two-node Ray cluster on 127.0.0.1 (``ray start --head`` with its dashboard, and a second
``ray start --address``), as docs/cluster.md says. The job server lives in Ray's dashboard,
which needs ``ray[default]`` (the project's ``cluster`` extra)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _cluster import LocalCluster
from _servers import free_port
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]


def _wait_job_server(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=5).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"no job server at {url}"
            time.sleep(1)


@pytest.mark.slow
def test_a_sweep_submitted_to_the_job_server_runs_on_both_nodes(kit: Any, tmp_path: Path,
                                                                 write_sweep: Callable[..., Path]) -> None:
    pytest.importorskip("aiohttp_cors", reason="Ray's job server needs ray[default]: pip install -e '.[cluster]'")
    dashboard = free_port()
    cluster = LocalCluster(kit.cli_env(RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT)))  # on 127.0.0.1 only
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]
    try:
        cluster.head(dashboard_port=dashboard)
        cluster.add()
        url = f"http://127.0.0.1:{dashboard}"
        _wait_job_server(url)

        shared = tmp_path / "shared"
        sweep = kit.tiny_sweep(tmp_path, name="job", storage_path=str(shared), storage_shared=True,
                               ray={"num_cpus": None}, resources={"cpus": 1}, search={"num_samples": 2, "max_concurrent": 2})
        path = write_sweep(sweep)
        command = [*ray_cli, "job", "submit", "--address", url,
                   "--runtime-env-json", json.dumps({"env_vars": {"PYTHONPATH": str(ROOT)}}), "--",
                   sys.executable, "-m", "orchestrator.run", str(path)]
        for _ in range(10):  # the head's dashboard agent starts after the job server answers
            submit = subprocess.run(command, env=cluster.env, capture_output=True, text=True, timeout=600, check=False)
            if "No available agent to submit job" not in submit.stdout + submit.stderr:
                break
            time.sleep(2)
        out = submit.stdout + submit.stderr
        assert submit.returncode == 0 and "succeeded" in out, out[-5000:]
        assert "running sweep 'job': 2 trials" in out  # the driver's output, streamed back by the job server
        nodes = set()
        for result in (shared / "job").glob("repnas_trial_*/result.json"):
            nodes |= {json.loads(line)["node_id"] for line in result.read_text().splitlines()}
        assert len(nodes) == 2, nodes
        _, kids = kit.children(MlflowClient(sweep["mlflow"]["tracking_uri"]), "job")
        assert len(kids) == 2 and all(k.info.status == "FINISHED" for k in kids)
    finally:
        cluster.stop()
