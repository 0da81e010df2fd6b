"""Helpers of the reliability suite: sweeps, drivers, Ray results, MLflow checks and servers."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from _servers import MlflowServer, free_port, kill_session
from mlflow.tracking import MlflowClient

EPOCHS = 4
BUDGETS = [0.2, 0.5, 0.75]
# what must be bit-identical between an interrupted and an uninterrupted sweep (CPU, fixed seeds)
EXACT = ("val_acc", "val_loss", "train_loss", "train_acc", "branches_kept", "fused_val_acc",
         "params_fused", "flops_fused")
EPOCH_KEYS = ("epoch", "val_acc", "train_loss", "branches_kept")


def sweep(tmp_path: Path, name: str, **sections: Any) -> dict[str, Any]:
    """3 trials (a grid over search.budget, so every sweep has the same trials), 4 epochs, 2 at a time."""
    data: dict[str, Any] = {
        "name": name,
        "storage_path": str(tmp_path / "ray_results"),
        "ray": {"num_cpus": 2},
        "resources": {"cpus": 1},
        "search": {"algorithm": "grid", "num_samples": 1, "seed": 0},
        "failure": {"max_failures": 0},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "space": {"search.budget": {"grid": BUDGETS}},
        "trial": {
            "seed": 0,
            "model": {"name": "repvgg_tiny"},
            "data": {"dataset": "digits", "batch_size": 64, "limit_train": 600},
            "search": {"epochs": EPOCHS, "random_epochs": 1, "search_epochs": 1},
            "runtime": {"device": "cpu"},
            "export": {"formats": ["state_dict", "torch_export"], "latency_min_run_time": 0.02},
        },
    }
    data.update(sections)
    return data


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def env(**extra: str) -> dict[str, str]:
    """A driver's environment: no inherited Ray/MLflow addresses, short MLflow retries."""
    out = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    out.update({"PYTHONUNBUFFERED": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "5", **extra})
    return out


def cli(module: str, args: list[str], cwd: Path, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` to completion, output captured."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env(**extra),
                          capture_output=True, text=True, timeout=timeout, check=False)


@dataclass
class Driver:
    """A sweep driver running in the background (its own session, output in a log file)."""

    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"driver ended before {what}:\n{self.output()[-4000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s"
            time.sleep(0.05)

    def sigkill_when(self, ready: Callable[[], bool], what: str, timeout: float = 240) -> None:
        """kill -9 the driver at a moment ``ready`` holds, with no race: the driver is paused
        (SIGSTOP) while ``ready`` is checked again, so the files it writes (results, the
        experiment state) are those ``ready`` saw; if it no longer holds, it runs on."""
        deadline = time.monotonic() + timeout
        while True:
            self.wait_for(ready, what, max(deadline - time.monotonic(), 0.0))
            os.kill(self.proc.pid, signal.SIGSTOP)
            if ready():
                self.sigkill()
                return
            os.kill(self.proc.pid, signal.SIGCONT)

    def sigkill(self) -> None:
        """kill -9 of the driver process alone (what a crash or an OOM kill does), then
        clean up any Ray helper it leaves behind."""
        assert self.proc.poll() is None, "the driver had already ended"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        time.sleep(1.0)  # what the orphaned Ray processes do in the second after a crash
        kill_session(self.proc.pid)


@pytest.fixture
def start_driver(tmp_path: Path) -> Iterator[Callable[..., Driver]]:
    """Start ``python -m orchestrator.run ARGS`` in the background; killed at teardown."""
    started: list[Driver] = []

    def _start(args: list[str], log_name: str = "driver.log", **extra: str) -> Driver:
        log = tmp_path / log_name
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "orchestrator.run", *args], cwd=tmp_path, env=env(**extra),
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        started.append(Driver(proc, log))
        return started[-1]

    yield _start
    for d in started:
        kill_session(d.proc.pid)
        d.proc.wait()


def result_grid(experiment: Path) -> Any:
    """Ray's results of a sweep, read from storage (no Ray cluster)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    return ResultGrid(ExperimentAnalysis(str(experiment)))


def results(experiment: Path) -> dict[float, Any]:
    """Ray's results of a sweep by search.budget."""
    return {r.config["search.budget"]: r for r in result_grid(experiment)}


def rows(trial_dir: Path) -> list[dict[str, Any]]:
    """Every result a trial reported (Ray's result.json, one JSON object a line)."""
    import json

    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def assert_same_finals(got: dict[float, Any], expected: dict[float, dict[str, float]]) -> None:
    """Final metrics of every trial identical to the uninterrupted sweep's."""
    assert sorted(got) == sorted(expected)
    for budget, result in got.items():
        assert result.error is None, result.error
        for key in EXACT:
            assert result.metrics[key] == expected[budget][key], (budget, key)


def mlflow_children(uri: str, experiment: str) -> tuple[Any, list[Any]]:
    """(parent, active child runs) of the only sweep in ``experiment``."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    return parents[0], [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]


def assert_mlflow_complete(uri: str, experiment: str, trial_names: set[str], epochs: int = EPOCHS,
                           orphans: bool = False) -> None:
    """Exactly one FINISHED child run per trial, continuous histories (one point per epoch), model.
    ``orphans``: runs of trials Ray never recorded may be left, each tagged and KILLED."""
    client = MlflowClient(uri)
    parent, kids = mlflow_children(uri, experiment)
    if orphans:
        left = [k for k in kids if "repnas.orphaned" in k.data.tags]
        assert all(k.info.status == "KILLED" for k in left), [k.info.run_name for k in left]
        kids = [k for k in kids if k not in left]
    assert sorted(k.data.tags["repnas.trial_name"] for k in kids) == sorted(trial_names)
    for kid in kids:
        assert kid.info.status == "FINISHED", (kid.info.run_name, kid.data.tags.get("repnas.error"))
        assert "repnas.model_uri" in kid.data.tags
        for key in EPOCH_KEYS:
            steps = sorted(m.step for m in client.get_metric_history(kid.info.run_id, key))
            assert steps == list(range(1, epochs + 1)), (kid.info.run_name, key, steps)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert "pareto/pareto.json" in artifacts


def finite(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value)


@pytest.fixture(scope="session")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[float, dict[str, float]]:
    """Final metrics per budget of the uninterrupted reference sweep."""
    tmp = tmp_path_factory.mktemp("baseline")
    proc = cli("orchestrator.run", [str(write(tmp, sweep(tmp, "baseline")))], tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {b: dict(r.metrics) for b, r in results(tmp / "ray_results" / "baseline").items()}


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path, free_port())
    server.start()
    yield server
    server.stop()
