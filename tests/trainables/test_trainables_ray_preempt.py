"""A Ray Tune trial's preemption, without a cluster: the worker's notice (SIGTERM taken only while a
trial listens, else passed on to Ray's handler; its node draining), and the mid-epoch checkpoints kept on the trial's
storage (manifest last; a restore takes the later of Tune's and the mid-epoch one). The real sweeps
are ``tests/reliability/test_reliability_preemption.py``."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
import torch

from trainables.ray_tune import preempt
from trainables.ray_tune.midepoch_store import MidEpochStore
from trainables.run.checkpoint import MANIFEST, META, save_checkpoint
from trainables.run.preemption import PreemptionNotice


def test_worker_notice_takes_sigterm_only_while_a_trial_listens() -> None:
    seen: list[int] = []
    ray_handler = lambda signum, frame: seen.append(signum)  # stands for Ray's handler (it exits)
    before = signal.signal(signal.SIGTERM, ray_handler)
    try:
        with preempt.listening() as inert:  # none installed: an inert notice (the intervals still apply)
            assert not inert.installed
        preempt.install()
        os.kill(os.getpid(), signal.SIGTERM)  # between trials: Ray's handler
        assert seen == [signal.SIGTERM]
        with preempt.listening() as notice:
            os.kill(os.getpid(), signal.SIGTERM)  # a trial trains: the flag only
            assert notice.requested and notice.reason == "SIGTERM" and seen == [signal.SIGTERM]
            os.kill(os.getpid(), signal.SIGTERM)  # a second notice: Ray's handler, at once
            assert seen == [signal.SIGTERM] * 2
        preempt.uninstall()
        assert signal.getsignal(signal.SIGTERM) is ray_handler
    finally:
        preempt.uninstall()
        signal.signal(signal.SIGTERM, before)


def test_a_draining_node_gives_notice_and_a_failed_poll_is_retried(capsys: pytest.CaptureFixture[str]) -> None:
    node, deadline_ms = "ab" * 28, int((time.time() + 60) * 1000)
    replies: list[object] = [ConnectionError("GCS restarting"), {}, {"cd" * 28: 0}, ConnectionError("again"),
                             {node: deadline_ms}]

    def draining() -> dict[str, int]:
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply  # type: ignore[return-value]

    notice, stop = PreemptionNotice(), threading.Event()
    preempt.watch_drain(notice, node, stop, poll_seconds=0.01, draining=draining)  # returns on the notice
    assert not replies and notice.requested
    assert notice.reason is not None and notice.reason.startswith("node draining, deadline in ")
    assert 55 <= int(notice.reason.rsplit(" ", 2)[1]) <= 60
    assert capsys.readouterr().err.count("could not ask Ray which nodes are draining") == 1  # reported once

    stopped = PreemptionNotice()
    stop.set()  # the trial ended: the watcher returns without a poll
    preempt.watch_drain(stopped, node, stop, poll_seconds=0.01, draining=lambda: {node: 0})
    assert not stopped.requested


@pytest.mark.parametrize("value, expected", [(None, 5.0), ("0.5", 0.5), ("abc", 5.0), ("0", 5.0), ("-1", 5.0),
                                             ("inf", 5.0)])
def test_the_drain_poll_interval_comes_from_the_environment_or_falls_back(
        value: str | None, expected: float, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    if value is None:
        monkeypatch.delenv("REPNAS_DRAIN_POLL_SECONDS", raising=False)
    else:
        monkeypatch.setenv("REPNAS_DRAIN_POLL_SECONDS", value)
    assert preempt._poll_seconds() == expected  # a bad value must not stop a worker from importing this
    warned = capsys.readouterr().err
    assert ("REPNAS_DRAIN_POLL_SECONDS" in warned) == (value is not None and expected == 5.0), warned


def test_draining_nodes_asks_a_real_ray_cluster() -> None:
    """The Ray Core call (the one Ray Train's preemption watcher makes) exists and answers: no node
    of a fresh local cluster drains."""
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        assert preempt.draining_nodes() == {}
    finally:
        ray.shutdown()


def _checkpoint(path: Path, epoch: int, step: int, steps: int | None = None) -> Path:
    engine: dict[str, Any] = {"epoch": epoch, "step": step}
    if steps is not None:
        engine["epoch_progress"] = {"steps": steps}
    return save_checkpoint(path, {"w": torch.full((2,), float(step))}, {"engine": engine}, durable=False)


def _upload(store: MidEpochStore, local: Path, name: str, leave_out: str = "") -> str:
    """Copy a local checkpoint folder into the trial's folder (without ``leave_out``)."""
    path = f"{store.trial_path}/{name}"
    store.filesystem.create_dir(path)
    for file in sorted(local.iterdir()):
        if file.name != leave_out:
            with store.filesystem.open_output_stream(f"{path}/{file.name}") as out:
                out.write(file.read_bytes())
    return path


def _step(restored: Path | None) -> int | None:
    return None if restored is None else json.loads((restored / META).read_text())["engine"]["step"]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> MidEpochStore:
    """A trial's folder on a local disk, and on S3 (moto on 127.0.0.1)."""
    if request.param == "local":
        (tmp_path / "trial").mkdir()
        return MidEpochStore(pafs.LocalFileSystem(), str(tmp_path / "trial"))
    bucket = request.getfixturevalue("s3").bucket
    filesystem, path = pafs.FileSystem.from_uri(f"s3://{bucket}/{tmp_path.name}/trial")
    return MidEpochStore(filesystem, path)


def test_store_keeps_one_complete_checkpoint_manifest_last(tmp_path: Path, store: MidEpochStore) -> None:
    store.save(_checkpoint(tmp_path / "a", epoch=1, step=14, steps=4))
    saved = store.save(_checkpoint(tmp_path / "b", epoch=1, step=18, steps=8))
    assert [step for step, _ in store.folders()] == [18]  # the older one deleted once this one is complete
    assert saved.where() == "epoch 2 step 8"
    files = store.filesystem.get_file_info(pafs.FileSelector(saved.path))
    assert sorted(info.base_name for info in files) == sorted(["state.pt", "state.json", MANIFEST])
    store.clear()
    assert store.folders() == []


def test_restore_takes_the_later_checkpoint(tmp_path: Path, store: MidEpochStore,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from ray.tune import Checkpoint

    assert store.restore(None, tmp_path / "r0") is None  # a fresh start
    store.save(_checkpoint(tmp_path / "m0", epoch=0, step=6, steps=6))
    assert _step(store.restore(None, tmp_path / "r1")) == 6  # preempted in epoch 1: no Tune checkpoint yet
    assert "trial continues from its mid-epoch checkpoint at epoch 1 step 6" in capsys.readouterr().err
    tune_ckpt = Checkpoint(_upload(store, _checkpoint(tmp_path / "t", epoch=1, step=10), "checkpoint_000000"),
                           filesystem=store.filesystem)
    assert _step(store.restore(tune_ckpt, tmp_path / "r2")) == 10  # the mid-epoch one is older: removed
    assert store.folders() == []
    store.save(_checkpoint(tmp_path / "m1", epoch=1, step=13, steps=3))
    _upload(store, _checkpoint(tmp_path / "m2", epoch=1, step=16, steps=6), "midepoch_0000000016",
            leave_out=MANIFEST)  # an upload cut short: no manifest yet
    assert _step(store.restore(tune_ckpt, tmp_path / "r3")) == 13  # the torn one ignored and removed
    assert [step for step, _ in store.folders()] == [13]
    store.save(_checkpoint(tmp_path / "m3", epoch=2, step=25, steps=5))  # epochs Tune never recorded
    assert _step(store.restore(tune_ckpt, tmp_path / "r4")) == 10
    assert store.folders() == []
