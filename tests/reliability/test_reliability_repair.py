"""Resume repair without Ray running: which checkpoint a restored trial continues from, what is
deleted, torn experiment snapshots, and project exceptions that survive pickling."""

from __future__ import annotations

import importlib
import inspect
import json
import pickle
import pkgutil
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from orchestrator.ray_tune.repair import plan_repair, set_aside_torn_snapshots
from trainables.run.checkpoint import save_checkpoint

pytestmark = pytest.mark.reliability

FS = pafs.LocalFileSystem()


def _trial(tmp_path: Path, numbers: list[int], truncated: tuple[int, ...] = (), partial: tuple[int, ...] = ()) -> Path:
    """A trial folder with ``checkpoint_<n>`` folders as the trainable writes them (epoch n + 1)."""
    trial = tmp_path / "repnas_trial_x"
    for n in numbers:
        folder = save_checkpoint(trial / f"checkpoint_{n:06d}", {"w": torch.full((64,), float(n))},
                                 {"history": [{"epoch": e + 1.0} for e in range(n + 1)]})
        if n in truncated:
            state = folder / "state.pt"
            state.write_bytes(state.read_bytes()[:10])
    for n in partial:  # a copy to storage that a kill interrupted: no manifest yet
        (trial / f"checkpoint_{n:06d}").mkdir(parents=True)
        (trial / f"checkpoint_{n:06d}" / "state.pt").write_bytes(b"\0" * 5)
    return trial


def _names(paths: tuple[str, ...]) -> list[str]:
    return [Path(p).name for p in paths]


def test_named_checkpoint_intact_is_kept_and_strays_deleted(tmp_path: Path) -> None:
    trial = _trial(tmp_path, [0, 1, 2, 3], partial=(4,))
    plan = plan_repair(FS, str(trial), str(trial / "checkpoint_000002"), num_to_keep=2)
    assert Path(plan.latest).name == "checkpoint_000002" and plan.note is None
    assert _names(plan.keep) == ["checkpoint_000001", "checkpoint_000002"]
    assert _names(plan.delete) == ["checkpoint_000000", "checkpoint_000003", "checkpoint_000004"]
    assert plan.next_index == 4  # new checkpoints never reuse a folder name that was on disk


def test_named_checkpoint_deleted_by_retention_uses_the_newest_left(tmp_path: Path) -> None:
    """ray #27790: the snapshot names checkpoint 2 (and kept 1), num_to_keep deleted both."""
    trial = _trial(tmp_path, [3, 4])
    plan = plan_repair(FS, str(trial), str(trial / "checkpoint_000002"), num_to_keep=2)
    assert Path(plan.latest).name == "checkpoint_000004"
    assert plan.note is not None and "missing checkpoint" in plan.note and "checkpoint_000002" in plan.note
    assert "continuing from checkpoint_000004" in plan.note
    assert _names(plan.keep) == ["checkpoint_000003", "checkpoint_000004"] and plan.delete == ()


def test_corrupt_named_checkpoint_falls_back_to_an_older_one(tmp_path: Path) -> None:
    trial = _trial(tmp_path, [1, 2, 3], truncated=(2,))
    plan = plan_repair(FS, str(trial), str(trial / "checkpoint_000002"), num_to_keep=2)
    assert Path(plan.latest).name == "checkpoint_000001"  # older than the named one: Ray has its epochs
    assert "skipping corrupt checkpoint" in plan.note and "state.pt is truncated" in plan.note
    assert _names(plan.keep) == ["checkpoint_000001"]
    assert _names(plan.delete) == ["checkpoint_000002", "checkpoint_000003"]


def test_no_intact_checkpoint_restarts(tmp_path: Path) -> None:
    trial = _trial(tmp_path, [5], truncated=(5,), partial=(6,))
    plan = plan_repair(FS, str(trial), str(trial / "checkpoint_000004"), num_to_keep=2)
    assert plan.latest is None and plan.keep == ()
    assert "restarting the trial from epoch 1" in plan.note
    assert _names(plan.delete) == ["checkpoint_000005", "checkpoint_000006"]
    fresh = plan_repair(FS, str(tmp_path / "never_checkpointed"), None, num_to_keep=2)
    assert fresh.latest is None and fresh.note is None and fresh.next_index is None


def test_num_to_keep_none_keeps_every_older_one(tmp_path: Path) -> None:
    trial = _trial(tmp_path, [0, 1, 2])
    plan = plan_repair(FS, str(trial), str(trial / "checkpoint_000002"), num_to_keep=None)
    assert _names(plan.keep) == ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002"]


def test_torn_experiment_snapshot_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": []}))
    (tmp_path / "experiment_state-2026-01-02_00-00-00.json").write_text('{"trial_data": [["{\\"trial_id')
    assert set_aside_torn_snapshots(str(tmp_path)) == ["experiment_state-2026-01-02_00-00-00.json"]
    assert (tmp_path / "experiment_state-2026-01-02_00-00-00.json.torn").is_file()
    assert sorted(p.name for p in tmp_path.glob("experiment_state-*.json")) == ["experiment_state-2026-01-01_00-00-00.json"]
    assert set_aside_torn_snapshots(str(tmp_path)) == []  # the intact one stays


# Constructor arguments of every exception the project defines (a new one without an entry fails).
_EXAMPLES: dict[str, tuple[object, ...]] = {
    "ConfigError": ("trial.search.budget", "1000 branches requested but the model has only 30 candidates"),
    "NonFiniteLossError": (float("inf"), 3, 7, "training loss"),
    "CheckpointError": ("checkpoint file /x/state.pt is truncated",),
    "FusionMismatchError": ("fused logits differ by 0.5",),
    "RankDivergenceError": ("ranks 0 and 1 hold different masks",),
    "SweepLockedError": ("already being run by another driver",),
    "SweepExistsError": ("sweep 'q' already exists",),
    "NothingToResumeError": ("nothing to resume",),
    "NothingToConvertError": ("nothing to convert: 5 convs, no BatchNorm after any",),
    "FactoryError": ("factory 'nets:build' returned a dict; allowed: an nn.Module",),
    "RepnasError": ("a project error",),
    "UserError": ("no trial: section",),
}


def _project_exceptions() -> list[type[BaseException]]:
    found = {}
    for package in ("searchspace", "trainables", "orchestrator"):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            module = importlib.import_module(info.name)
            for obj in vars(module).values():
                if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                    found[obj.__qualname__] = obj
    return sorted(found.values(), key=lambda c: c.__qualname__)


def test_every_project_exception_survives_pickling() -> None:
    """Ray pickles a trial's exception to hand it to the driver: each must come back equal."""
    classes = _project_exceptions()
    assert {c.__qualname__ for c in classes} == set(_EXAMPLES)
    for cls in classes:
        error = cls(*_EXAMPLES[cls.__qualname__])
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is cls and str(back) == str(error) and vars(back) == vars(error), cls
