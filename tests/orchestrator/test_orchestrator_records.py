"""One status vocabulary: Ray's results and MLflow's runs map onto TrialStatus; the records built from them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from ray.tune import Result
from trainables.failures import NonFiniteLossError, failure_metrics
from trainables.metrics import FINAL_METRICS
from trainables.schema import ConfigError

from orchestrator.config import parse_sweep
from orchestrator.records import TrialStatus, records_from_results, status_from_mlflow, status_from_ray

_FINAL = {k: 1.0 for k in FINAL_METRICS}
_AUTO = {"trial_id": "abc", "timestamp": 1, "pid": 7}  # what Ray fills in before a trial reports


def _result(metrics: dict[str, Any], error: Exception | None = None, name: str = "repnas_trial_abc") -> Result:
    return Result(metrics={**_AUTO, **metrics}, checkpoint=None, error=error, path=f"/results/{name}")


@pytest.mark.parametrize(("metrics", "error", "expected"), [
    ({}, None, TrialStatus.PENDING),
    ({"training_iteration": 1, "epoch": 1.0, "done": False}, None, TrialStatus.RUNNING),
    ({"training_iteration": 2, "epoch": 2.0, **_FINAL, "done": True}, None, TrialStatus.FINISHED),
    ({"training_iteration": 2, "epoch": 2.0, **_FINAL}, None, TrialStatus.FINISHED),  # the trial's own done: 1.0
    ({"training_iteration": 1, "epoch": 1.0, "done": True}, None, TrialStatus.STOPPED),  # ASHA / stop criteria
    ({"training_iteration": 2, **failure_metrics(NonFiniteLossError(math.nan, 2, 3)), "done": True}, None,
     TrialStatus.FAILED),
    ({}, ConfigError("data.root", "not found"), TrialStatus.FAILED),
    ({"training_iteration": 1, "epoch": 1.0, "done": False}, RuntimeError("worker died"), TrialStatus.FAILED),
])
def test_status_from_ray(metrics: dict[str, Any], error: Exception | None, expected: TrialStatus) -> None:
    assert status_from_ray(_result(metrics, error)) is expected


@pytest.mark.parametrize(("status", "stopped", "expected"), [
    ("FINISHED", False, TrialStatus.FINISHED), ("FINISHED", True, TrialStatus.STOPPED),
    ("FAILED", False, TrialStatus.FAILED), ("KILLED", False, TrialStatus.KILLED),
    ("RUNNING", False, TrialStatus.RUNNING), ("SCHEDULED", False, TrialStatus.RUNNING),
])
def test_status_from_mlflow(status: str, stopped: bool, expected: TrialStatus) -> None:
    assert status_from_mlflow(status, stopped) is expected


@pytest.mark.parametrize("status", list(TrialStatus))
def test_the_writer_and_the_reader_agree(status: TrialStatus) -> None:
    """What the child run's writer sets for a status reads back as that status."""
    read = status_from_mlflow(status.mlflow, stopped_early=status is TrialStatus.STOPPED)
    assert read is (status if status.ended else TrialStatus.RUNNING)


def test_statuses_print_as_their_value() -> None:
    assert [str(s) for s in TrialStatus] == ["pending", "running", "finished", "stopped", "failed", "killed"]
    assert f"{TrialStatus.FAILED}" == "failed" and json.dumps({"s": TrialStatus.STOPPED}) == '{"s": "stopped"}'
    assert TrialStatus("finished") is TrialStatus.FINISHED and TrialStatus.FAILED == "failed"


def test_records_from_results(tmp_path: Path, kit: Any) -> None:
    cfg = parse_sweep(kit.tiny_sweep(tmp_path))
    done = {"training_iteration": 2, "epoch": 2.0, **_FINAL, "done": True}
    records = records_from_results([
        _result({**done, "val_acc": math.nan}, name="repnas_trial_c"),
        _result({**done, "val_acc": 0.9, "branches_kept": 6.0}, name="repnas_trial_a"),
        _result({}, ConfigError("data.root", "dataset files not found\nsecond line"), name="repnas_trial_b"),
        _result({"training_iteration": 1, "epoch": 1.0, "done": True}, name="repnas_trial_d"),
    ], cfg)
    by_name = {r.trial_name: r for r in records}
    assert [r.trial_name for r in records] == sorted(by_name)
    assert [r.status for r in records] == [TrialStatus.FINISHED, TrialStatus.FAILED, TrialStatus.FAILED,
                                           TrialStatus.STOPPED]
    assert by_name["repnas_trial_a"].error is None and by_name["repnas_trial_a"].trial_id == "abc"
    assert by_name["repnas_trial_b"].error == "ConfigError: data.root: dataset files not found"
    assert by_name["repnas_trial_b"].resume.startswith("--resume cannot fix it")
    assert by_name["repnas_trial_c"].error == "non-finite val_acc"  # finished, but cannot be ranked
    assert by_name["repnas_trial_c"].resume == "--resume does nothing: the trial finished, with a non-finite objective"
    assert by_name["repnas_trial_d"].error is None and by_name["repnas_trial_d"].resume is None
