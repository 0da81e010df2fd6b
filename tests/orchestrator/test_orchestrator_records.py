"""One status vocabulary: Ray's results and MLflow's runs map onto TrialStatus; one record from both."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from ray.tune import Result
from trainables.search.failures import failure_metrics
from trainables.errors import NonFiniteLossError
from trainables.config.metrics import FINAL_METRICS
from trainables.errors import ConfigError

from orchestrator.ray_tune.results import records_from_results, resume_advice
from orchestrator.records import TrialStatus, make_record, numeric_metrics, status_from_mlflow, status_from_result
from orchestrator.sweep import parse_sweep

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
    assert status_from_result(_result(metrics, error).metrics, error is not None) is expected


@pytest.mark.parametrize(("status", "stopped", "expected"), [
    ("FINISHED", False, TrialStatus.FINISHED), ("FINISHED", True, TrialStatus.STOPPED),
    ("FAILED", False, TrialStatus.FAILED), ("KILLED", False, TrialStatus.KILLED),
    ("RUNNING", False, TrialStatus.RUNNING), ("SCHEDULED", False, TrialStatus.RUNNING),
])
def test_status_from_mlflow(status: str, stopped: bool, expected: TrialStatus) -> None:
    assert status_from_mlflow(status, stopped) is expected


@pytest.mark.parametrize(("status", "written", "read"), [
    (TrialStatus.PENDING, "RUNNING", TrialStatus.RUNNING), (TrialStatus.RUNNING, "RUNNING", TrialStatus.RUNNING),
    (TrialStatus.FINISHED, "FINISHED", TrialStatus.FINISHED), (TrialStatus.STOPPED, "FINISHED", TrialStatus.STOPPED),
    (TrialStatus.FAILED, "FAILED", TrialStatus.FAILED), (TrialStatus.KILLED, "KILLED", TrialStatus.KILLED),
])
def test_the_writer_and_the_reader_agree(status: TrialStatus, written: str, read: TrialStatus) -> None:
    """The MLflow status the child run's writer sets for each status (the stopped tag beside a
    stopped one) reads back as that status; a trial that has not ended reads as running."""
    assert status.mlflow == written
    assert status_from_mlflow(written, stopped_early=status is TrialStatus.STOPPED) is read


def test_statuses_print_as_their_value() -> None:
    assert [str(s) for s in TrialStatus] == ["pending", "running", "finished", "stopped", "failed", "killed"]
    assert f"{TrialStatus.FAILED}" == "failed" and json.dumps({"s": TrialStatus.STOPPED}) == '{"s": "stopped"}'
    assert TrialStatus("finished") is TrialStatus.FINISHED and TrialStatus.FAILED == "failed"


def test_records_from_results(tmp_path: Path, kit: Any) -> None:
    cfg = parse_sweep(kit.tiny_sweep(tmp_path))
    done = {"training_iteration": 2, "epoch": 2.0, **_FINAL, "done": True}
    results = [
        _result({**done, "val_acc": math.nan}, name="repnas_trial_c"),
        _result({**done, "val_acc": 0.9, "branches_kept": 6.0, "train_seconds": 5.0}, name="repnas_trial_a"),
        _result({}, ConfigError("data.root", "dataset files not found\nsecond line"), name="repnas_trial_b"),
        _result({"training_iteration": 1, "epoch": 1.0, "done": True}, name="repnas_trial_d"),
    ]
    records = records_from_results(results, cfg, {"repnas_trial_a": ("run-a", "models:/m-a")})
    by_name = {r.trial_name: r for r in records}
    assert [r.trial_name for r in records] == sorted(by_name)
    assert [r.status for r in records] == [TrialStatus.FINISHED, TrialStatus.FAILED, TrialStatus.FAILED,
                                           TrialStatus.STOPPED]
    a = by_name["repnas_trial_a"]
    assert a.error is None and a.trial_id == "abc" and (a.run_id, a.model_uri) == ("run-a", "models:/m-a")
    assert a.config == {"search.method": "odbb", "search.budget": 0.34, "model.reparam": "offline", "optim.lr": 0.1}
    assert "training_iteration" not in a.metrics and "pid" not in a.metrics  # the trial's own metrics only
    assert a.value("epoch_time_mean_s") == 2.5  # train_seconds / epoch
    assert by_name["repnas_trial_b"].error == "ConfigError: data.root: dataset files not found"
    assert resume_advice(results[2]).startswith("--resume cannot fix it")
    assert by_name["repnas_trial_c"].error == "non-finite val_acc"  # finished, but cannot be ranked
    assert resume_advice(results[0]) == "--resume does nothing: the trial finished, with a non-finite objective"
    assert by_name["repnas_trial_d"].error is None


def test_a_record_means_the_same_from_ray_and_from_mlflow(tmp_path: Path, kit: Any) -> None:
    """The same trial read from Ray's result and from its MLflow run's params and metrics: one record."""
    from orchestrator.tracking.parent_run import mlflow_params
    from orchestrator.tracking.runs import typed
    from trainables.config.schema import flatten_overrides

    sweep = kit.tiny_sweep(tmp_path)
    sweep["space"]["optim.momentum"] = 0.8  # a constant of the space: in both records' configs
    cfg = parse_sweep(sweep)
    sampled = {"search.budget": 0.5, "optim.lr": 0.07}
    metrics = {"epoch": 2.0, "val_acc": 0.9, "branches_kept": 6.0, "train_seconds": 4.0, **_FINAL}
    done = {**metrics, "training_iteration": 2, "done": True}
    from_ray = records_from_results([_result(done, name="t")], cfg)[0]
    params = {p.key: typed(p.value) for p in mlflow_params(cfg.trial_config(sampled).to_dict())}
    assert set(params) == set(flatten_overrides(cfg.trial_config(sampled).to_dict()))
    from_mlflow = make_record(cfg, "abc", "t", status_from_mlflow("FINISHED"), params, metrics)
    from_ray_sampled = records_from_results([_result({**done, "config": sampled}, name="t")], cfg)[0]
    assert from_mlflow == from_ray_sampled
    assert from_ray_sampled.config == {"search.method": "odbb", "search.budget": 0.5, "model.reparam": "offline",
                                       "optim.lr": 0.07, "optim.momentum": 0.8}
    assert from_ray.config["search.budget"] == 0.34  # the base trial's budget, not a made-up default


def test_numeric_metrics_keep_numbers_only() -> None:
    assert numeric_metrics({"a": 1, "b": 2.5, "c": True, "d": "x", "e": None}) == {"a": 1.0, "b": 2.5}
    assert numeric_metrics({"a": 1, "b": 2.5}, ["b"]) == {"b": 2.5}
