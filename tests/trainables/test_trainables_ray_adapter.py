"""Ray's internals the project uses (``trainables.ray_adapter``), each checked against the
installed Ray without a cluster: one of these fails when a Ray upgrade moves what it uses.
The checkpoint-bookkeeping internals are exercised by the repair test
(tests/orchestrator/test_orchestrator_repair.py), on a real Tune ``Trial``."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from importlib.metadata import version

import pytest
from packaging.specifiers import SpecifierSet

from trainables import ray_adapter


def test_the_installed_ray_is_in_the_tested_range() -> None:
    assert version("ray") in SpecifierSet(ray_adapter.TESTED), "run the version matrix and update TESTED"


@pytest.mark.parametrize("name", sorted(ray_adapter.QUIET_LOGGERS))
def test_quiet_loggers_name_modules_that_exist(name: str) -> None:
    """A quiet sweep sets these loggers' levels; a moved module would leave its notices on."""
    module = importlib.import_module(name)
    assert module.__name__ == name
    place, level = ray_adapter.QUIET_LOGGERS[name]
    assert place in ("driver", "worker") and level in (logging.WARNING, logging.ERROR)


def test_driver_env_keeps_what_the_user_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    monkeypatch.delenv("RAY_prestart_worker_first_driver", raising=False)
    ray_adapter.driver_env()
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1" and os.environ["RAY_prestart_worker_first_driver"] == "0"


def test_trial_context_outside_a_trial() -> None:
    from ray import tune

    assert ray_adapter.trial_cpus() is None  # not in a Tune session
    context = tune.get_context()
    assert callable(context.get_storage) and callable(context.get_trial_resources)
    from ray.train._internal.storage import StorageContext

    storage = StorageContext("/tmp/repnas-adapter", "exp", trial_dir_name="t")
    assert storage.trial_fs_path.endswith("/exp/t") and storage.storage_filesystem is not None


def test_train_callback_and_worker_errors() -> None:
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    base = ray_adapter.user_callback_class()
    assert callable(getattr(base, "after_report"))
    assert list(inspect.signature(base.after_report).parameters)[1:] == ["run_context", "metrics", "checkpoint"]
    own = ValueError("rank 1's own error")
    error = WorkerGroupError("workers failed", {1: UserExceptionWithTraceback(own, "tb"), 0: RuntimeError("rank 0")})
    assert isinstance(ray_adapter.worker_exception(error), RuntimeError)  # the lowest failing rank's
    wrapped = WorkerGroupError("workers failed", {1: UserExceptionWithTraceback(own, "tb")})
    assert ray_adapter.worker_exception(wrapped) is own
    plain = RuntimeError("not a worker group")
    assert ray_adapter.worker_exception(plain) is plain


def test_result_grid_reads_a_stored_experiment() -> None:
    from ray.tune import ExperimentAnalysis, ResultGrid

    assert list(inspect.signature(ResultGrid.__init__).parameters)[1] == "experiment_analysis"
    assert "experiment_checkpoint_path" in inspect.signature(ExperimentAnalysis.__init__).parameters
