"""Preemption of a trial on a real two-node Ray cluster on 127.0.0.1 (a head that runs no trials, a
worker node with one CPU, shared storage), one-process trials, three ways a spot node goes:

- SIGTERM to the trial's worker (the preemption notice): it checkpoints after the step in flight
  and Tune retries it (one of ``failure.max_failures``) from that step;
- the node drained for preemption (``ray drain-node``, as autoscaler v2 and KubeRay do; no signal):
  the same, then the node is taken away and the trial continues on a replacement node;
- the whole node lost without notice (every process of it SIGKILLed, raylet included): the trial
  continues on a replacement node from its last ``checkpoint.every_steps`` checkpoint.

Every way, every epoch's metrics equal an uninterrupted run's, bit for bit (CPU, fixed seeds)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from _cluster import LocalCluster, Node
from _faults import Driver, assert_mlflow_complete, cli, env, rows, sweep, write

from trainables.run.checkpoint import MANIFEST

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

EPOCHS, EVERY = 3, 5  # 1200 digits at 16 a batch: 75 steps an epoch
PER_EPOCH = ("epoch", "phase_id", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "branches_kept")
FINAL = ("fused_val_acc", "params_fused", "flops_fused")


def _sweep(tmp_path: Path, name: str, **checkpoint: Any) -> Path:
    """One trial, three epochs, retried once on failure; on a cluster: shared storage, Ray's CPUs."""
    data = sweep(tmp_path, name, failure={"max_failures": 1}, space={"search.budget": {"grid": [0.5]}},
                 storage_shared=True, ray={"num_cpus": None})
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


def _trial_worker(node: Node) -> int | None:
    """The Ray worker process running the trial on ``node``: its process title (Ray sets it to
    ``ray::<actor class>...``) names the trainable."""
    for pid in node.pids():
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::") and ("Trainable" in title or "repnas_trial" in title):
            return pid
    return None


def _reported(exp: Path) -> bool:
    """Epoch 1's result is in the trial's ``result.json`` on storage."""
    trial = _trial(exp)
    try:
        return trial is not None and bool(rows(trial))
    except (OSError, ValueError):  # not there yet, or a line half written
        return False


def _freeze_early_in_epoch_two(driver: Driver, exp: Path, node: Node) -> tuple[int, int, int]:
    """SIGSTOP the trial's worker at a moment it is inside epoch 2, checked again once it is frozen
    (else it runs on and the next checkpoint is waited for): (pid, global step, steps into epoch 2)
    of the newest mid-epoch checkpoint then. Frozen, it waits for the driver to copy epoch 1's
    result to storage: Tune restores a retried trial's ``result.json`` from there, so a failure
    before that copy (every few seconds) drops the row, with or without this project's checkpoints."""
    while True:
        driver.wait_for(lambda: _early_in_epoch_two(exp) is not None and _trial_worker(node) is not None,
                        "a mid-epoch checkpoint early in epoch 2")
        pid = _trial_worker(node)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        found = _early_in_epoch_two(exp)
        if found is not None:
            driver.wait_for(lambda: _reported(exp), "epoch 1's result on storage")
            return pid, *found
        os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The uninterrupted trial's results (no mid-epoch checkpoints), on a local one-node Ray."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = cli("orchestrator.run", [str(_sweep(tmp, "reference")), "--set", "ray.num_cpus=2",
                                    "--set", "storage_shared=false"], tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trial = _trial(tmp / "ray_results" / "reference")
    assert trial is not None
    return _history(trial)


class _Spot(NamedTuple):
    cluster: LocalCluster
    node: Node  # the worker node the trial starts on


@pytest.fixture
def spot() -> Iterator[_Spot]:
    """The test cluster: a head with no CPU (the driver's node: no trial runs there) and one worker
    node with one CPU, where the trial starts; a lost node is declared dead after ~3 s, a drain is
    seen within 0.5 s. Listed
    before ``start_driver`` in a test's arguments, it stops after the driver."""
    cluster = LocalCluster(env(RAY_AUTH_MODE="disabled", RAY_health_check_period_ms="1000",
                               RAY_health_check_failure_threshold="3",
                               REPNAS_DRAIN_POLL_SECONDS="0.5"))  # a drain noticed within a few steps
    try:
        cluster.head(cpus=0)
        yield _Spot(cluster, cluster.add(cpus=1))
    finally:
        cluster.stop()


def _start(start_driver: Callable[..., Driver], spot: _Spot, path: Path) -> Driver:
    return start_driver([str(path)], RAY_ADDRESS=spot.cluster.address, RAY_AUTH_MODE="disabled")


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
    errors = (trial / "error.txt").read_text()
    assert errors.count("Failure #") == 1, errors  # one of failure.max_failures
    return out


def _stopped_and_resumed(trial: Path, out: str, reason: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """((epoch, step) it stopped after, (epoch, step) it continued from), from error.txt and the log."""
    errors = (trial / "error.txt").read_text()
    stopped = re.search(rf"preempted \({reason}[^)]*\) at epoch (\d+) step (\d+)", errors)
    resumed = re.search(r"trial continues from its mid-epoch checkpoint at epoch (\d+) step (\d+)", out)
    assert stopped and resumed, (errors, out[-5000:])
    return (int(stopped[1]), int(stopped[2])), (int(resumed[1]), int(resumed[2]))


def test_sigterm_to_a_trial_worker_checkpoints_mid_epoch_and_continues_exactly(
        tmp_path: Path, spot: _Spot, start_driver: Callable[..., Driver], reference: list[dict[str, Any]]) -> None:
    exp = tmp_path / "ray_results" / "preempt"
    driver = _start(start_driver, spot, _sweep(tmp_path, "preempt", every_steps=EVERY))  # the interval marks the moment
    pid, step, steps = _freeze_early_in_epoch_two(driver, exp, spot.node)
    os.kill(pid, signal.SIGTERM)  # the spot node's preemption notice, handled once the worker runs on
    os.kill(pid, signal.SIGCONT)
    trial = _trial(exp)
    assert trial is not None
    out = _finish(driver, trial, reference, pid)
    (epoch, stopped), (resumed_epoch, resumed) = _stopped_and_resumed(trial, out, "SIGTERM")
    per_epoch = step - steps
    assert epoch == resumed_epoch == 2 and steps <= stopped < per_epoch  # mid-epoch, after the step in flight
    redone = stopped - resumed  # steps trained before the notice and trained again
    assert redone == 0
    print(f"\nSIGTERM at epoch 2 step >= {steps}: stopped after step {stopped} of {per_epoch}, continued from "
          f"step {resumed}: {redone} steps redone ({redone / per_epoch:.1%} of an epoch), one failure counted")
    assert_mlflow_complete(f"sqlite:///{tmp_path / 'mlflow.db'}", "preempt", {trial.name}, epochs=EPOCHS)


def test_a_node_drained_for_preemption_checkpoints_and_the_trial_moves(
        tmp_path: Path, spot: _Spot, start_driver: Callable[..., Driver], reference: list[dict[str, Any]]) -> None:
    exp = tmp_path / "ray_results" / "drain"
    driver = _start(start_driver, spot, _sweep(tmp_path, "drain", every_steps=EVERY))
    pid, step, steps = _freeze_early_in_epoch_two(driver, exp, spot.node)
    trial = _trial(exp)
    assert trial is not None
    drained = spot.node.node_id
    assert rows(trial)[0]["node_id"] == drained
    drain = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "drain-node", "--address", spot.cluster.address,
                            "--node-id", drained, "--reason", "DRAIN_NODE_REASON_PREEMPTION",
                            "--reason-message", "spot instance reclaimed", "--deadline-remaining-seconds", "120"],
                           env=spot.cluster.env, capture_output=True, text=True, timeout=120, check=False)
    assert drain.returncode == 0, drain.stdout + drain.stderr
    os.kill(pid, signal.SIGCONT)  # no signal: the trial learns of the drain from Ray
    replacement = spot.cluster.add(cpus=1)
    driver.wait_for(lambda: (trial / "error.txt").is_file(), "the trial stopped on the draining node")
    spot.node.lose()  # the deadline: the cloud takes the machine (Ray may have stopped the idle node already)
    out = _finish(driver, trial, reference, pid)
    stopped, resumed = _stopped_and_resumed(trial, out, "node draining")  # within a poll (0.5 s) of the drain
    assert stopped == resumed and stopped >= (2, steps)  # after the drain, mid-epoch, nothing redone
    moved = [r for r in rows(trial) if r["epoch"] >= stopped[0]]
    assert moved and {r["node_id"] for r in moved} == {replacement.node_id}  # off the drained node
    print(f"\ndrained in epoch 2 at step >= {steps}: stopped after epoch {stopped[0]} step {stopped[1]}, "
          f"continued from there on the replacement node: 0 steps redone, one failure counted")
    assert_mlflow_complete(f"sqlite:///{tmp_path / 'mlflow.db'}", "drain", {trial.name}, epochs=EPOCHS)


def test_a_node_lost_without_notice_loses_at_most_the_interval(
        tmp_path: Path, spot: _Spot, start_driver: Callable[..., Driver], reference: list[dict[str, Any]]) -> None:
    exp = tmp_path / "ray_results" / "vanish"
    driver = _start(start_driver, spot, _sweep(tmp_path, "vanish", every_steps=EVERY))
    pid, step, steps = _freeze_early_in_epoch_two(driver, exp, spot.node)  # frozen: its newest checkpoint is known
    lost = spot.node.lose()  # raylet, object store, workers: the machine is gone
    assert pid in lost
    replacement = spot.cluster.add(cpus=1)
    trial = _trial(exp)
    assert trial is not None
    out = _finish(driver, trial, reference, pid)
    resumed = re.search(r"trial continues from its mid-epoch checkpoint at epoch 2 step (\d+)", out)
    assert resumed, out[-5000:]
    assert int(resumed[1]) == steps and steps % EVERY == 0  # the last interval checkpoint
    assert {r["node_id"] for r in rows(trial)[1:]} == {replacement.node_id}  # continued on the replacement node
    print(f"\nnode lost in epoch 2 after its checkpoint at step {steps} of {step - steps}: continued from step "
          f"{resumed[1]} on the replacement node; at most {EVERY} steps lost ({EVERY / (step - steps):.1%} of an epoch)")
