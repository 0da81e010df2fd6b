"""``_repair_trial`` on a real Ray Tune ``Trial`` (no cluster, fast): a restored trial whose
snapshot names a checkpoint that retention deleted (ray-project/ray #27790) continues from one
that exists, its manager keeps ``num_to_keep``, and new checkpoints never reuse a folder name.
This also exercises the checkpoint-bookkeeping internals of ``trainables.ray_tune.adapter``."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
from ray.train._internal.storage import StorageContext
from ray.tune import Checkpoint, CheckpointConfig
from ray.tune.experiment import Trial

from orchestrator.ray_tune.repair import CheckpointRepair, _repair_trial
from orchestrator.ray_tune import adapter as ray_adapter
from trainables.run.checkpoint import save_checkpoint


def _trial(tmp_path: Path, on_disk: list[int], registered: list[int]) -> Trial:
    """A Tune trial whose folder holds ``checkpoint_<n>`` for ``on_disk`` (epoch n + 1 each) and
    whose checkpoint manager (what the experiment snapshot restored) names ``registered``."""
    storage = StorageContext(str(tmp_path), "exp", trial_dir_name="repnas_trial_x")
    trial = Trial("repnas_trial", storage=storage, checkpoint_config=CheckpointConfig(num_to_keep=2),
                  trial_id="x", stub=True)
    folder = Path(trial.path)
    for n in on_disk:
        save_checkpoint(folder / f"checkpoint_{n:06d}", {"w": torch.zeros(4)},
                        {"history": [{"epoch": e + 1.0, "val_acc": 0.5} for e in range(n + 1)]})
    fs = pafs.LocalFileSystem()
    results = [ray_adapter.training_result(Checkpoint(str(folder / f"checkpoint_{n:06d}"), filesystem=fs),
                                           {"training_iteration": n + 1}) for n in registered]
    ray_adapter.set_checkpoint_state(trial, results)
    return trial


def test_a_lost_named_checkpoint_continues_from_the_newest_left(tmp_path: Path) -> None:
    trial = _trial(tmp_path, on_disk=[3, 4], registered=[1, 2])  # retention deleted the snapshot's 1 and 2
    note = _repair_trial(trial)
    assert note is not None and "missing checkpoint" in note and "continuing from checkpoint_000004" in note
    kept, latest, num_to_keep = ray_adapter.checkpoint_state(trial)
    assert [Path(r.checkpoint.path).name for r in kept] == ["checkpoint_000003", "checkpoint_000004"]
    assert latest is kept[-1] and num_to_keep == 2
    assert latest.metrics["training_iteration"] == 5 and latest.metrics["epoch"] == 5.0  # from the stored history
    assert sorted(p.name for p in Path(trial.path).glob("checkpoint_*")) == ["checkpoint_000003", "checkpoint_000004"]
    assert trial.storage.current_checkpoint_index >= 4  # the next one is checkpoint_000005 or later


def test_a_lost_named_checkpoint_prefers_an_older_intact_one(tmp_path: Path) -> None:
    """Ray recorded the epochs up to the named checkpoint: an older one continues exactly."""
    trial = _trial(tmp_path, on_disk=[0, 1, 3], registered=[1, 2])
    assert "continuing from checkpoint_000001" in (_repair_trial(trial) or "")
    kept, latest, _ = ray_adapter.checkpoint_state(trial)
    assert [Path(r.checkpoint.path).name for r in kept] == ["checkpoint_000000", "checkpoint_000001"]
    assert sorted(p.name for p in Path(trial.path).glob("checkpoint_*")) == ["checkpoint_000000", "checkpoint_000001"]
    assert trial.storage.current_checkpoint_index >= 3  # checkpoint_000003 was on disk: never reused


def test_an_intact_named_checkpoint_is_kept_as_it_was(tmp_path: Path) -> None:
    trial = _trial(tmp_path, on_disk=[0, 1, 2], registered=[1, 2])
    before = ray_adapter.checkpoint_state(trial)[0]
    assert _repair_trial(trial) is None
    kept, latest, _ = ray_adapter.checkpoint_state(trial)
    assert kept == before and latest is before[-1]  # the snapshot's own results, not rebuilt ones
    assert sorted(p.name for p in Path(trial.path).glob("checkpoint_*")) == ["checkpoint_000001", "checkpoint_000002"]


def test_the_callback_repairs_unfinished_trials_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lost = _trial(tmp_path / "a", on_disk=[2], registered=[1])
    done = _trial(tmp_path / "b", on_disk=[2], registered=[1])
    done.status = Trial.TERMINATED  # finished: a restore never reruns it, so it is left alone
    repair = CheckpointRepair()
    repair.on_step_begin(0, [lost, done])
    assert Path(ray_adapter.checkpoint_state(lost)[1].checkpoint.path).name == "checkpoint_000002"
    assert Path(ray_adapter.checkpoint_state(done)[1].checkpoint.path).name == "checkpoint_000001"
    assert "resume: trial" in capsys.readouterr().err
    lost_again = _trial(tmp_path / "c", on_disk=[2], registered=[1])
    repair.on_step_begin(1, [lost_again])  # only before the first step
    assert Path(ray_adapter.checkpoint_state(lost_again)[1].checkpoint.path).name == "checkpoint_000001"
