"""Fixtures for the orchestrator tests: tiny sweep files, the CLI in a subprocess, MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

TINY_TRIAL: dict[str, Any] = {
    "seed": 0,
    "model": {"name": "repvgg_tiny"},
    "data": {"dataset": "digits", "batch_size": 64, "limit_train": 600},
    "search": {"epochs": 2, "random_epochs": 1, "search_epochs": 1},
    "runtime": {"device": "cpu"},
    "export": {"formats": ["state_dict", "torch_export"], "latency_min_run_time": 0.05},
}


def tiny_sweep(tmp_path: Path, name: str = "tiny", **sections: Any) -> dict[str, Any]:
    """A 3-trial sweep on digits (2 epochs each, 2 at a time) with everything under tmp_path."""
    sweep: dict[str, Any] = {
        "name": name,
        "storage_path": str(tmp_path / "ray_results"),
        "ray": {"num_cpus": 2},
        "resources": {"cpus": 1},
        "search": {"algorithm": "optuna", "num_samples": 3, "max_concurrent": 2, "seed": 0,
                   "objectives": [{"metric": "val_acc", "mode": "max"},
                                  {"metric": "branches_kept", "mode": "min"}]},
        "failure": {"max_failures": 0},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "space": {"search.budget": {"choice": [0.2, 0.5, 0.75]}, "optim.lr": {"loguniform": [0.05, 0.2]}},
        "trial": yaml.safe_load(yaml.safe_dump(TINY_TRIAL)),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(sweep.get(key), dict):
            sweep[key] = {**sweep[key], **value}
        else:
            sweep[key] = value
    return sweep


@pytest.fixture
def write_sweep(tmp_path: Path) -> Callable[..., Path]:
    """Write a sweep mapping (or raw text) to a YAML file in tmp_path."""

    def _write(data: dict[str, Any] | str, filename: str = "sweep.yaml") -> Path:
        path = tmp_path / filename
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path

    return _write


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a driver subprocess (no inherited Ray/MLflow addresses)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update({"PYTHONUNBUFFERED": "1", **extra})
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m orchestrator.run ARGS`` in a subprocess, output captured."""
    return subprocess.run([sys.executable, "-m", "orchestrator.run", *args], cwd=cwd, env=cli_env(**env),
                          capture_output=True, text=True, timeout=timeout, check=False)


def children(client: MlflowClient, experiment: str) -> tuple[Any, list[Any]]:
    """(parent run, child runs) of the only sweep in ``experiment``."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], kids


@pytest.fixture(scope="session")
def kit() -> Any:
    """The helpers above, for tests (conftest modules are not importable by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(tiny_sweep=tiny_sweep, run_cli=run_cli, children=children, cli_env=cli_env,
                           TINY_TRIAL=TINY_TRIAL)
