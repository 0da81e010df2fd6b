"""SIGKILL of the driver's whole process group at seeded pseudo-random instants, resumed each time.

Instants are spread over the whole sweep: during start-up (Ray, the MLflow parent run, the first
experiment snapshot) and a random fraction of a second after a random number of further
epochs, which lands kills while checkpoints are written, copied and rotated by
``num_to_keep`` and while the snapshot is written, including the last epochs and the export.
CI runs one short run; the soak (docs/failure-modes.md) sets the size through the environment:
``REPNAS_KILL_RUNS`` (runs, default 1), ``REPNAS_KILL_KILLS`` (kills per run, default 3),
``REPNAS_KILL_SEED`` and ``REPNAS_KILL_REPORT`` (a JSON-lines file that gets one line per run).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _faults import BUDGETS, EPOCHS, Driver, assert_mlflow_complete, assert_same_finals, cli, result_grid, results, sweep, write
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.kills]

RUNS = int(os.environ.get("REPNAS_KILL_RUNS", "1"))
KILLS = int(os.environ.get("REPNAS_KILL_KILLS", "3"))
SEED = int(os.environ.get("REPNAS_KILL_SEED", "11"))
_NUMBER = re.compile(r"checkpoint_(\d+)$")
# What the driver prints when a restored trial asks for a lost checkpoint (what the repair prevents).
_LOST = ("Could not recover from checkpoint", "Error handling checkpoint", "Path not found")


def _checkpoints(exp: Path) -> int:
    """Progress: the sum over trials of the newest checkpoint number + 1 (epochs checkpointed,
    counted again after a trial restarts or its numbers skip ahead)."""
    done = 0
    for trial in exp.glob("repnas_trial_*"):
        numbers = [int(m.group(1)) for d in trial.glob("checkpoint_*") if (m := _NUMBER.match(d.name))]
        done += max(numbers) + 1 if numbers else 0
    return done


def _kill_at_random_instant(driver: Driver, exp: Path, rng: random.Random) -> dict[str, Any] | None:
    """Wait for a seeded random instant, then SIGKILL the driver's process group (it leads its own
    session, with Ray's processes and the trial workers). None when the sweep ended first."""
    started = time.monotonic()
    if rng.random() < 0.25:
        mode, target, delay = "start-up", 0, rng.uniform(0.5, 15.0)
    else:
        mode, target, delay = "after epochs", _checkpoints(exp) + rng.randint(1, 4), rng.uniform(0.0, 0.8)
    while _checkpoints(exp) < target:
        if driver.proc.poll() is not None:
            return None
        time.sleep(0.02)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        if driver.proc.poll() is not None:
            return None
        time.sleep(0.01)
    if driver.proc.poll() is not None:
        return None
    os.killpg(driver.proc.pid, signal.SIGKILL)
    driver.proc.wait()
    return {"mode": mode, "after_s": round(time.monotonic() - started, 2), "checkpoints": _checkpoints(exp)}


def _assert_registry(uri: str, name: str, exp: Path) -> None:
    """One registry version per Pareto trial, none twice."""
    versions = MlflowClient(uri).search_model_versions(f"name='{name}'")
    runs = [v.run_id for v in versions]
    pareto = [t for t in json.loads((exp / "pareto" / "pareto.json").read_text())["trials"] if t["pareto"]]
    assert len(runs) == len(set(runs)) == len(pareto), (runs, pareto)


@pytest.mark.parametrize("run", range(RUNS))
def test_random_kills_then_resume(run: int, tmp_path: Path, start_driver: Callable[..., Driver],
                                  baseline: dict[float, dict[str, float]]) -> None:
    rng = random.Random(SEED * 1000 + run)
    path = write(tmp_path, sweep(tmp_path, "kills"))
    exp = tmp_path / "ray_results" / "kills"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    kills: list[dict[str, Any]] = []
    for session in range(KILLS):  # --resume once the sweep folder exists (before, it says: run without)
        resume = ["--resume"] if exp.exists() else []
        driver = start_driver([str(path), *resume], log_name=f"driver{session}.log")
        kill = _kill_at_random_instant(driver, exp, rng)
        if kill is None:
            assert driver.proc.returncode == 0, driver.output()[-5000:]
            break
        kills.append(kill)
    final = cli("orchestrator.run", [str(path), *(["--resume"] if exp.exists() else [])], tmp_path, timeout=600)
    logs = "".join(log.read_text(errors="replace") for log in sorted(tmp_path.glob("driver*.log")))
    out = logs + final.stdout + final.stderr
    repairs = [line for line in out.splitlines() if "resume: trial" in line]
    aborts = [line for line in out.splitlines() if "Fatal Python error" in line or "SIGABRT" in line]
    figures = {"run": run, "seed": SEED * 1000 + run, "kills": kills, "survived": final.returncode == 0,
               "repairs": repairs, "aborts": aborts}
    print(f"\nkill run {run}: {json.dumps(figures)}")
    if os.environ.get("REPNAS_KILL_REPORT"):
        with open(os.environ["REPNAS_KILL_REPORT"], "a", encoding="utf-8") as report:
            report.write(json.dumps(figures) + "\n")
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-5000:]
    for lost in _LOST:
        assert lost not in out, lost
    assert len(list(result_grid(exp))) == len(BUDGETS)  # the same sampled configs, none twice
    got = results(exp)
    assert_same_finals(got, baseline)
    names = {Path(r.path).name for r in got.values()}
    assert_mlflow_complete(uri, "kills", names, epochs=EPOCHS)  # one parent, one child per trial, each epoch once
    _assert_registry(uri, "repnas-kills", exp)
    for trial in names:  # num_to_keep (2) still holds after all the kills
        assert len(list((exp / trial).glob("checkpoint_*"))) <= 2, sorted((exp / trial).glob("checkpoint_*"))
