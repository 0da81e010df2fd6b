"""Preemption without lost work (``python -m trainables.cli``): SIGTERM mid-epoch checkpoints
after the step in flight and exits 143; ``--resume`` finishes the epoch with the same batches,
masks and random numbers, so every epoch's metrics equal an uninterrupted run's. And a run killed
-9 without notice resumes from its last ``checkpoint.every_steps`` checkpoint, equally exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainables.cli import main
from trainables.errors import EXIT_PREEMPTED

# 1437 digits for training at 32 a batch: 45 steps an epoch, so a signal lands mid-epoch
TRIAL: dict[str, Any] = {
    "seed": 0,
    "model": {"name": "repvgg_tiny"},
    "data": {"dataset": "digits", "batch_size": 32},
    "search": {"budget": 0.34, "epochs": 3, "random_epochs": 1, "search_epochs": 1},
    "runtime": {"device": "cpu", "num_threads": 1},
    "export": {"formats": ["state_dict"], "latency_min_run_time": 0.01},
}
STEPS = 45
EVERY = 7
# what must be bit-identical between an interrupted and an uninterrupted run (CPU, fixed seeds)
EXACT = ("train_loss", "train_acc", "val_loss", "val_acc", "branches_kept", "lr", "phase_id", "fused_val_acc")


def _sweep(tmp_path: Path, **checkpoint: Any) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "space": {}, "trial": {**TRIAL, "checkpoint": checkpoint}}))
    return path


def _history(out: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: row[k] for k in EXACT if k in row} for row in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, float]]:
    """Every epoch's metrics of the uninterrupted run (no mid-epoch checkpoints)."""
    tmp = tmp_path_factory.mktemp("reference")
    assert main([str(_sweep(tmp)), "--output", str(tmp / "out")]) == 0
    return _history(tmp / "out")


def _progress(out: Path) -> tuple[int, int] | None:
    """(epochs done, steps into the next) of the checkpoint on disk; None before the first."""
    try:
        meta = json.loads((out / "checkpoint" / "state.json").read_text())["engine"]
    except (OSError, ValueError, KeyError):
        return None
    return meta["epoch"], meta.get("epoch_progress", {}).get("steps", 0)


def _start(sweep: Path, out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "trainables.cli", str(sweep), "--output", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_mid_epoch(proc: subprocess.Popen[str], out: Path, epoch: int) -> None:
    """Until a mid-epoch checkpoint of ``epoch`` (0-based) is on disk (every EVERY steps)."""
    deadline = time.monotonic() + 300
    while (p := _progress(out)) is None or p[0] < epoch or p[1] == 0:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_sigterm_mid_epoch_checkpoints_at_once_and_resumes_exactly(
        tmp_path: Path, reference: list[dict[str, float]]) -> None:
    sweep, out = _sweep(tmp_path, every_steps=EVERY), tmp_path / "out"
    proc = _start(sweep, out)
    _wait_mid_epoch(proc, out, epoch=1)  # in the search phase, mid-epoch
    proc.send_signal(signal.SIGTERM)  # a spot node's preemption notice
    sent = time.monotonic()
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert proc.returncode == EXIT_PREEMPTED, err
    epoch, steps = _progress(out)  # type: ignore[misc]
    assert epoch == 1 and 0 < steps < STEPS, (epoch, steps, err)
    assert f"preempted (SIGTERM) in epoch 2 after step {steps}" in err
    print(f"\nSIGTERM -> checkpoint and exit in {took:.2f} s, at step {steps}/{STEPS} of epoch 2; "
          f"work lost: the step in flight finished, 0 steps")
    resumed = subprocess.run([sys.executable, "-m", "trainables.cli", str(sweep), "--output", str(out), "--resume"],
                             capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert _history(out) == reference


def test_a_kill_without_notice_loses_at_most_the_interval(tmp_path: Path, reference: list[dict[str, float]]) -> None:
    sweep, out = _sweep(tmp_path, every_steps=EVERY), tmp_path / "out"
    proc = _start(sweep, out)
    _wait_mid_epoch(proc, out, epoch=0)
    proc.kill()  # the node vanished: no SIGTERM, no grace period
    proc.communicate()
    epoch, steps = _progress(out)  # type: ignore[misc]
    assert epoch == 0 and steps % EVERY == 0 and steps > 0  # the last interval checkpoint
    resumed = subprocess.run([sys.executable, "-m", "trainables.cli", str(sweep), "--output", str(out), "--resume"],
                             capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert _history(out) == reference
