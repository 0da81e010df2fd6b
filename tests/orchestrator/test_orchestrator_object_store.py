"""Object storage, against a real S3 server on 127.0.0.1 (moto's server mode, the ``s3``
fixture) through pyarrow's S3 file system, the one Ray Tune writes through: one driver per sweep
(the lease), and the resume repair (a snapshot naming a checkpoint retention deleted, a torn
snapshot) on a bucket. A whole sweep there: tests/reliability/test_reliability_object_store.py."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
import torch
from _servers import S3Server

from orchestrator.ray_tune.repair import plan_repair, set_aside_torn_snapshots
from orchestrator.sweep import SweepLock
from orchestrator.sweep.lease import ObjectLease
from trainables.errors import SweepLockedError
from trainables.run.checkpoint import save_checkpoint


def _lease_object(uri: str) -> dict[str, Any] | None:
    return ObjectLease(uri).holder()


def test_a_second_driver_is_refused_until_the_first_releases(s3: S3Server) -> None:
    sweep = f"s3://{s3.bucket}/refuse/sweep"
    first = SweepLock(sweep)
    first.acquire()
    holder = _lease_object(f"{sweep}/repnas_sweep.lease")
    assert holder is not None and holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(SweepLockedError, match=f"pid {os.getpid()} on host {socket.gethostname()}; its lease was renewed"):
        SweepLock(sweep).acquire()
    first.release()
    assert _lease_object(f"{sweep}/repnas_sweep.lease") is None  # deleted on release
    with SweepLock(sweep) as again:
        again.acquire()
    assert _lease_object(f"{sweep}/repnas_sweep.lease") is None


def test_the_lease_is_renewed_while_the_driver_runs(s3: S3Server) -> None:
    uri = f"s3://{s3.bucket}/renew/repnas_sweep.lease"
    lease = ObjectLease(uri, ttl_s=4.0, settle_s=0.1)
    lease.acquire(lambda holder, age: AssertionError("refused"))
    try:
        first = _lease_object(uri)
        threading.Event().wait(2.5)  # two and a half renewal intervals
        assert _lease_object(uri)["renewed"] > first["renewed"]  # type: ignore[index]
        with pytest.raises(SweepLockedError):  # still refused after the ttl: it is renewed
            SweepLock(uri.rsplit("/", 1)[0], lease_ttl_s=4.0).acquire()
    finally:
        lease.release()


def _plant(uri: str, **holder: Any) -> None:
    """A lease written by some other driver (that then stopped renewing it)."""
    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps({"token": "other", "renewed": 0.0, **holder}).encode())


def test_a_lease_left_by_a_dead_driver_of_this_host_is_taken_at_once(s3: S3Server) -> None:
    sweep = f"s3://{s3.bucket}/dead-here/sweep"
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    _plant(f"{sweep}/repnas_sweep.lease", pid=dead, host=socket.gethostname())
    with SweepLock(sweep) as lock:  # a fresh lease, but its pid is gone
        lock.acquire()
        assert _lease_object(f"{sweep}/repnas_sweep.lease")["pid"] == os.getpid()  # type: ignore[index]


def test_a_lease_of_another_host_expires_after_its_ttl(s3: S3Server) -> None:
    sweep = f"s3://{s3.bucket}/other-host/sweep"
    _plant(f"{sweep}/repnas_sweep.lease", pid=1, host="gpu-node-7")
    with pytest.raises(SweepLockedError, match="pid 1 on host gpu-node-7"):  # fresh: a live driver
        SweepLock(sweep, lease_ttl_s=60.0).acquire()
    lock = SweepLock(sweep, lease_ttl_s=3.0)  # older than two renewals: waits for it to expire, then takes it
    threading.Event().wait(1.6)
    lock.acquire()
    assert _lease_object(f"{sweep}/repnas_sweep.lease")["pid"] == os.getpid()  # type: ignore[index]
    lock.release()


def test_of_two_drivers_starting_together_exactly_one_runs(s3: S3Server) -> None:
    sweep = f"s3://{s3.bucket}/race/sweep"
    outcomes: list[str] = []
    locks = [SweepLock(sweep) for _ in range(4)]

    def start(lock: SweepLock) -> None:
        try:
            lock.acquire()
            outcomes.append("runs")
        except SweepLockedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=start, args=(lock,)) for lock in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lock in locks:
        lock.release()
    assert sorted(outcomes) == ["refused", "refused", "refused", "runs"]


def test_the_resume_repair_works_on_a_bucket(s3: S3Server, tmp_path: Path) -> None:
    """ray #27790 on S3: the snapshot names checkpoint 2, retention kept 3 and 4; and a torn snapshot."""
    local = tmp_path / "repnas_trial_x"
    for n in (3, 4):
        save_checkpoint(local / f"checkpoint_{n:06d}", {"w": torch.full((64,), float(n))},
                        {"history": [{"epoch": e + 1.0} for e in range(n + 1)]})
    fs, root = pafs.FileSystem.from_uri(f"s3://{s3.bucket}/repair")
    pafs.copy_files(str(local), f"{root}/exp/repnas_trial_x", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    trial = f"{root}/exp/repnas_trial_x"
    plan = plan_repair(fs, trial, f"{trial}/checkpoint_000002", num_to_keep=2)
    assert plan.latest is not None and plan.latest.endswith("checkpoint_000004")
    assert plan.note is not None and "missing checkpoint" in plan.note
    for name, text in [("experiment_state-2026-01-01_00-00-00.json", json.dumps({"trial_data": []})),
                       ("experiment_state-2026-01-02_00-00-00.json", '{"trial_data": [["{\\"trial_id')]:
        with fs.open_output_stream(f"{root}/exp/{name}") as f:
            f.write(text.encode())
    assert set_aside_torn_snapshots(f"s3://{s3.bucket}/repair/exp") == ["experiment_state-2026-01-02_00-00-00.json"]
    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{root}/exp"))}
    assert {"experiment_state-2026-01-01_00-00-00.json", "experiment_state-2026-01-02_00-00-00.json.torn"} <= names
    assert "experiment_state-2026-01-02_00-00-00.json" not in names
