"""Preemption of a Ray Tune trial's worker (one-process trials): SIGTERM mid-epoch writes a checkpoint
to the trial's storage after the step in flight, Tune retries the trial (one of
``failure.max_failures``) and it continues from that step; a worker killed -9 without notice
continues from its last ``checkpoint.every_steps`` checkpoint. Either way every epoch's metrics
equal an uninterrupted run's, bit for bit (CPU, fixed seeds)."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _faults import Driver, assert_mlflow_complete, cli, rows, sweep, write

from trainables.run.checkpoint import MANIFEST

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

EPOCHS, EVERY = 3, 5  # 1200 digits at 16 a batch: 75 steps an epoch
PER_EPOCH = ("epoch", "phase_id", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "branches_kept")
FINAL = ("fused_val_acc", "params_fused", "flops_fused")


def _sweep(tmp_path: Path, name: str, **checkpoint: Any) -> Path:
    """One trial, three epochs, retried once on failure."""
    data = sweep(tmp_path, name, failure={"max_failures": 1}, space={"search.budget": {"grid": [0.5]}})
    data["trial"]["search"]["epochs"] = EPOCHS
    data["trial"]["data"].update(batch_size=16, limit_train=1200)
    data["trial"]["checkpoint"] = checkpoint
    return write(tmp_path, data)


def _trial(exp: Path) -> Path | None:
    return next(iter(exp.glob("repnas_trial_*")), None)


def _history(trial: Path) -> list[dict[str, Any]]:
    """Every result the trial reported: the per-epoch metrics, and the finals."""
    return [{k: row.get(k) for k in PER_EPOCH + FINAL} for row in rows(trial)]


def _newest(trial: Path | None) -> tuple[int, int, int] | None:
    """(epoch counted from 1, global step, steps into the epoch) of the newest complete mid-epoch
    checkpoint in the trial's folder on storage (written there by the worker itself)."""
    for folder in sorted(trial.glob("midepoch_*"), reverse=True) if trial is not None else []:
        try:
            engine = json.loads((folder / "state.json").read_text()) if (folder / MANIFEST).is_file() else None
        except (OSError, ValueError):  # deleted as it was read: a newer one is complete
            continue
        if engine is not None:
            engine = engine["engine"]
            return int(engine["epoch"]) + 1, int(engine["step"]), int(engine["epoch_progress"]["steps"])
    return None


def _early_in_epoch_two(exp: Path) -> tuple[int, int] | None:
    """(global step, steps) of the newest mid-epoch checkpoint when it is in epoch 2 with at least
    two intervals of it left: the worker, at most an interval past it, is inside epoch 2."""
    newest = _newest(_trial(exp))
    if newest is None or newest[0] != 2:
        return None
    _, step, steps = newest
    return (step, steps) if steps + 2 * EVERY <= step - steps else None


def _trial_worker(driver_pid: int) -> int | None:
    """The Ray worker process running the trial: a descendant of the driver whose process title
    (Ray sets it to ``ray::<actor class>...``) names the trainable."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue

    def descends(pid: int) -> bool:
        while pid > 1:
            if pid == driver_pid:
                return True
            pid = parents.get(pid, 0)
        return False

    for pid in parents:
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::") and ("Trainable" in title or "repnas_trial" in title) and descends(pid):
            return pid
    return None


def _reported(exp: Path) -> bool:
    """Epoch 1's result is in the trial's ``result.json`` on storage."""
    trial = _trial(exp)
    try:
        return trial is not None and bool(rows(trial))
    except (OSError, ValueError):  # not there yet, or a line half written
        return False


def _freeze_early_in_epoch_two(driver: Driver, exp: Path) -> tuple[int, int, int]:
    """SIGSTOP the trial's worker at a moment it is inside epoch 2, checked again once it is frozen
    (else it runs on and the next checkpoint is waited for): (pid, global step, steps into epoch 2)
    of the newest mid-epoch checkpoint then. Frozen, it waits for the driver to copy epoch 1's
    result to storage: Tune restores a retried trial's ``result.json`` from there, so a failure
    before that copy (every few seconds) drops the row, with or without this project's checkpoints."""
    while True:
        driver.wait_for(lambda: _early_in_epoch_two(exp) is not None and _trial_worker(driver.proc.pid) is not None,
                        "a mid-epoch checkpoint early in epoch 2")
        pid = _trial_worker(driver.proc.pid)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        found = _early_in_epoch_two(exp)
        if found is not None:
            driver.wait_for(lambda: _reported(exp), "epoch 1's result on storage")
            return pid, *found
        os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The uninterrupted trial's results (no mid-epoch checkpoints)."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = cli("orchestrator.run", [str(_sweep(tmp, "reference"))], tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trial = _trial(tmp / "ray_results" / "reference")
    assert trial is not None
    return _history(trial)


def _finish(driver: Driver, trial: Path, reference: list[dict[str, Any]], pid: int) -> str:
    """Wait for the sweep; check it ended as the uninterrupted one did; the driver's output."""
    driver.proc.wait(timeout=400)
    out = driver.output()
    assert driver.proc.returncode == 0, out[-5000:]
    reported = rows(trial)
    assert [r["epoch"] for r in reported] == list(range(1, EPOCHS + 1))  # each epoch once, continued
    assert reported[0]["pid"] == pid and reported[-1]["pid"] != pid
    assert _history(trial) == reference
    assert not list(trial.glob("midepoch_*"))  # a finished trial keeps none
    return out


def test_sigterm_to_a_trial_worker_checkpoints_mid_epoch_and_continues_exactly(
        tmp_path: Path, start_driver: Callable[..., Driver], reference: list[dict[str, Any]]) -> None:
    path = _sweep(tmp_path, "preempt", every_steps=EVERY)  # the interval only marks the moment
    exp = tmp_path / "ray_results" / "preempt"
    driver = start_driver([str(path)])
    pid, step, steps = _freeze_early_in_epoch_two(driver, exp)
    os.kill(pid, signal.SIGTERM)  # the spot node's preemption notice, handled once the worker runs on
    os.kill(pid, signal.SIGCONT)
    trial = _trial(exp)
    assert trial is not None
    out = _finish(driver, trial, reference, pid)
    errors = (trial / "error.txt").read_text()
    assert errors.count("Failure #") == 1, errors  # the preemption cost one of failure.max_failures
    stopped = re.search(r"preempted \(SIGTERM\) at epoch 2 step (\d+)", errors)
    resumed = re.search(r"trial continues from its mid-epoch checkpoint at epoch 2 step (\d+)", out)
    assert stopped and resumed, (errors, out[-5000:])
    per_epoch = step - steps
    assert steps <= int(stopped[1]) < per_epoch  # stopped mid-epoch, after the step in flight
    redone = int(stopped[1]) - int(resumed[1])  # steps trained before the notice and trained again
    assert redone == 0
    print(f"\nSIGTERM at epoch 2 step >= {steps}: stopped after step {stopped[1]} of {per_epoch}, continued from "
          f"step {resumed[1]}: {redone} steps redone ({redone / per_epoch:.1%} of an epoch), one failure counted")
    assert_mlflow_complete(f"sqlite:///{tmp_path / 'mlflow.db'}", "preempt", {trial.name}, epochs=EPOCHS)


def test_a_worker_killed_without_notice_loses_at_most_the_interval(
        tmp_path: Path, start_driver: Callable[..., Driver], reference: list[dict[str, Any]]) -> None:
    path = _sweep(tmp_path, "vanish", every_steps=EVERY)
    exp = tmp_path / "ray_results" / "vanish"
    driver = start_driver([str(path)])
    pid, step, steps = _freeze_early_in_epoch_two(driver, exp)  # frozen: its newest checkpoint is known
    os.kill(pid, signal.SIGKILL)  # the node vanished: no notice
    trial = _trial(exp)
    assert trial is not None
    out = _finish(driver, trial, reference, pid)
    resumed = re.search(r"trial continues from its mid-epoch checkpoint at epoch 2 step (\d+)", out)
    assert resumed, out[-5000:]
    assert int(resumed[1]) == steps and steps % EVERY == 0  # the last interval checkpoint
    print(f"\nkill -9 in epoch 2 after its checkpoint at step {steps} of {step - steps}: continued from step "
          f"{resumed[1]}; at most {EVERY} steps lost ({EVERY / (step - steps):.1%} of an epoch)")
