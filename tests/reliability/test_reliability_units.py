"""Fast checks: the sweep lock, credential redaction, and no unsafe loading in the packages."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest
import torch

from orchestrator.sweep.lock import LOCK_FILE, SweepLock
from trainables.errors import SweepLockedError
from orchestrator.redact import is_secret_key, redact
from orchestrator.tracking.parent_run import mlflow_params
from trainables import CheckpointError, NonFiniteLossError, save_checkpoint
from trainables.run.checkpoint import load_checkpoint, verify_checkpoint
from trainables.search.failures import check_finite, failure_metrics, failure_reason

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]


def test_second_lock_refused_then_free_after_release(tmp_path: Path) -> None:
    first = SweepLock(str(tmp_path / "sweep"))
    first.acquire()
    holder = json.loads((tmp_path / "sweep" / LOCK_FILE).read_text())
    assert holder == {"pid": os.getpid(), "host": socket.gethostname()}
    with pytest.raises(SweepLockedError, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
        SweepLock(str(tmp_path / "sweep")).acquire()
    first.release()
    with SweepLock(str(tmp_path / "sweep")) as again:
        again.acquire()
    assert SweepLock("s3://bucket/sweeps/x").path is None  # object stores cannot be locked


def test_credentials_never_reach_params_or_text() -> None:
    assert redact("http://bob:pw@host:5000/x?token=abc&a=1") == "http://***@host:5000/x?token=***&a=1"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert is_secret_key("mlflow.api_token") and is_secret_key("db.password") and not is_secret_key("optim.lr")
    params = {p.key: p.value for p in mlflow_params(
        {"mlflow": {"tracking_uri": "https://u:hunter2@h", "client_secret": "x"}, "optim": {"lr": 0.1}})}
    assert params == {"mlflow.tracking_uri": "https://***@h", "optim.lr": "0.1"}


def test_nonfinite_loss_error_and_failure_result() -> None:
    check_finite(torch.tensor(1.5), epoch=1, step=3)
    with pytest.raises(NonFiniteLossError, match="training loss became nan at epoch 2, step 7") as info:
        check_finite(torch.tensor(float("nan")), epoch=2, step=7)
    result = failure_metrics(info.value)
    assert result["failed"] == 1.0 and result["epoch"] == 2.0 and "NonFiniteLossError" in str(result["error"])
    assert failure_reason(result) == result["error"] and failure_reason({"val_acc": 0.5}) is None


def test_checkpoint_is_atomic_and_verified(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint"
    save_checkpoint(target, {"w": torch.ones(3)}, {"epoch": 1})
    save_checkpoint(target, {"w": torch.zeros(3)}, {"epoch": 2})  # replaced by renames, no temp left over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    verify_checkpoint(target)  # intact: passes
    tensors, meta = load_checkpoint(target)
    assert meta["epoch"] == 2 and torch.equal(tensors["w"], torch.zeros(3))
    state = target / "state.pt"
    state.write_bytes(state.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=re.escape(str(state))):
        verify_checkpoint(target)


def test_no_unsafe_deserialisation_in_the_packages() -> None:
    sources = [p for pkg in ("searchspace", "trainables", "orchestrator") for p in (ROOT / pkg).rglob("*.py")]
    assert sources
    for path in sources:
        text = path.read_text()
        assert "yaml.load(" not in text and "yaml.unsafe_load" not in text, path
        assert not re.search(r"\bpickle\.loads?\(", text), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
    assert "0.0.0.0" not in (ROOT / "orchestrator" / "run.py").read_text()
