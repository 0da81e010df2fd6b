"""Ray's internals the sweep driver uses (``orchestrator.ray_tune.adapter``), each checked against the
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

from orchestrator.ray_tune import adapter as ray_adapter


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


def test_result_grid_reads_a_stored_experiment() -> None:
    from ray.tune import ExperimentAnalysis, ResultGrid

    assert list(inspect.signature(ResultGrid.__init__).parameters)[1] == "experiment_analysis"
    assert "experiment_checkpoint_path" in inspect.signature(ExperimentAnalysis.__init__).parameters


def test_file_names_are_tunes() -> None:
    """What ``can_restore`` and ``realign`` look for: Tune's snapshot and searcher state files."""
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search import SearchGenerator

    assert TuneController.CKPT_FILE_TMPL.format("x") == f"{ray_adapter.SNAPSHOT_PREFIX}x{ray_adapter.SNAPSHOT_SUFFIX}"
    assert SearchGenerator.CKPT_FILE_TMPL.format("x").startswith(ray_adapter.SEARCH_STATE_PREFIX)


def test_snapshot_trials_reads_tunes_own_snapshot(tmp_path) -> None:
    """``realign`` reads the trials of the snapshot Tune restored: written here as Tune writes it."""
    import json

    from ray.tune import PlacementGroupFactory
    from ray.tune.experiment import Trial
    from ray.tune.utils.serialization import TuneFunctionEncoder

    trials = [Trial("repnas_trial", config={"optim.lr": lr}, trial_id=i, stub=True,
                    placement_group_factory=PlacementGroupFactory([{"CPU": 1}])) for i, lr in (("a", 0.1), ("b", 0.2))]
    trials[0].status = Trial.TERMINATED
    for t in trials:
        t.create_placement_group_factory()
    state = {"trial_data": [t.get_json_state() for t in trials], "runner_data": {}, "stats": {}}
    (tmp_path / f"{ray_adapter.SNAPSHOT_PREFIX}x{ray_adapter.SNAPSHOT_SUFFIX}").write_text(
        json.dumps(state, cls=TuneFunctionEncoder))
    read = ray_adapter.snapshot_trials(str(tmp_path))
    assert [(t.trial_id, t.config, ray_adapter.trial_done(t)) for t in read] == \
        [("a", {"optim.lr": 0.1}, True), ("b", {"optim.lr": 0.2}, False)]
