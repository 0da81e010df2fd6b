"""Repair what ``Tuner.restore`` is given, so a resumed trial never asks for a lost checkpoint.

Ray Tune deletes a trial's old checkpoints (``CheckpointConfig(num_to_keep)``) as soon as
a new one is registered, but writes the experiment snapshot that ``Tuner.restore`` reads
only later (every ``num_to_keep`` checkpoints, or every ~10 s), and copies it to storage in
the background. A driver killed in between leaves a snapshot naming checkpoints that are
gone (ray-project/ray #27790): the trial then fails in ``Trainable.restore`` ("does not
exist on storage anymore") on every resume, and deleting the other stale entries raises
``FileNotFoundError``. :class:`CheckpointRepair` runs on the driver before the first
restored trial starts and makes each unfinished trial's checkpoint bookkeeping match what
is really stored (DESIGN.md section 10, docs/failure-modes.md):

* the checkpoint the snapshot names is kept when it is intact (the normal case);
* otherwise the trial continues from the newest intact ``checkpoint_<n>`` older than it,
  else from the newest intact one left, else it restarts from epoch 1; one line says which;
* folders nothing continues from (unregistered newer ones, broken ones, ones beyond
  ``num_to_keep``) are deleted and new checkpoints get fresh numbers, so ``num_to_keep``
  still holds.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from . import adapter as ray_adapter
from trainables.run.restore import checkpoint_number, stored_checkpoints, stored_history, stored_problem

from ..records import ray_terminated

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    from ray.tune.experiment import Trial

__all__ = ["CheckpointRepair", "Repair", "plan_repair", "stored_metrics", "set_aside_torn_snapshots"]

_TORN = ".torn"


@dataclass(frozen=True)
class Repair:
    """What resuming one trial will use: the checkpoint path (None: restart) and what to delete."""

    latest: str | None
    keep: tuple[str, ...]
    delete: tuple[str, ...]
    next_index: int | None
    note: str | None  # one line for the user when the snapshot's checkpoint is not used


def plan_repair(fs: pafs.FileSystem, trial_path: str, named: str | None, num_to_keep: int | None) -> Repair:
    """The repair of one trial folder whose experiment snapshot names ``named`` as latest."""
    stored = stored_checkpoints(fs, trial_path)
    problems = {path: stored_problem(fs, path) for _, path in stored}
    intact = [path for _, path in stored if problems[path] is None]
    note = None
    named = named.rstrip("/") if named else None
    if named is not None and named in intact:
        latest: str | None = named
    else:
        number = checkpoint_number(named) if named else None
        older = [p for p in intact if number is not None and checkpoint_number(p) < number]
        # an older one first (Ray recorded its epochs), else the newest one (#27790 deleted the older)
        latest = older[-1] if older else (intact[-1] if intact else None)
        if named is not None or latest is not None:
            why = "the experiment snapshot names no checkpoint" if named is None else \
                f"skipping {'corrupt' if named in problems else 'missing'} checkpoint {named} " \
                f"({problems.get(named) or 'deleted'}) named by the experiment snapshot"
            note = f"{why}; continuing from {_name(latest)}" if latest else \
                f"{why}; no intact checkpoint is left, restarting the trial from epoch 1"
    upto = [p for p in intact if latest is not None and checkpoint_number(p) <= checkpoint_number(latest)]
    keep = tuple(upto[-num_to_keep:] if num_to_keep else upto)
    delete = tuple(path for _, path in stored if path not in keep)
    next_index = max(n for n, _ in stored) if stored else None
    return Repair(latest, keep, delete, next_index, note)


def _name(path: str | None) -> str:
    return (path or "").rstrip("/").rsplit("/", 1)[-1]


def stored_metrics(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    """Ray's metrics for a checkpoint the snapshot does not know: its last epoch's, and one
    training iteration per epoch (a trial reports once an epoch)."""
    history = stored_history(fs, path)
    return {**(history[-1] if history else {}), "training_iteration": len(history)}


def _repair_trial(trial: Trial) -> str | None:
    """Apply :func:`plan_repair` to a restored trial's checkpoint bookkeeping; the note, if any."""
    from ray.tune import Checkpoint

    state = ray_adapter.checkpoint_state(trial)
    if state is None:
        return None
    kept, latest_result, num_to_keep = state
    fs = ray_adapter.trial_filesystem(trial)
    known = {r.checkpoint.path.rstrip("/"): r for r in [*kept, latest_result] if r}
    named = latest_result.checkpoint.path if latest_result else None
    plan = plan_repair(fs, trial.path, named, num_to_keep)
    results = [known.get(path) or ray_adapter.training_result(Checkpoint(path, filesystem=fs), stored_metrics(fs, path))
               for path in plan.keep]
    ray_adapter.set_checkpoint_state(trial, results)
    for path in plan.delete:
        try:
            fs.delete_dir(path)
        except OSError as err:  # it stays behind; nothing restores from it
            print(f"resume: could not delete {path} ({err})", file=sys.stderr)
    if plan.next_index is not None:
        ray_adapter.raise_checkpoint_index(trial, plan.next_index)
    ray_adapter.invalidate_trial(trial)
    return plan.note


class CheckpointRepair(Callback):
    """Before the first restored trial starts, repair every unfinished trial (see the module doc)."""

    def __init__(self) -> None:
        self._done = False

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if self._done:
            return
        self._done = True
        for trial in trials:
            if ray_terminated(trial):
                continue
            note = _repair_trial(trial)
            if note:
                print(f"resume: trial {trial}: {note}", file=sys.stderr, flush=True)


def set_aside_torn_snapshots(experiment_path: str) -> list[str]:
    """Rename newest ``experiment_state-*.json`` files that are not valid JSON (a driver killed
    while Ray copied the snapshot to storage) to ``*.torn``, so ``Tuner.restore`` reads the
    previous one; returns their names. The file is plain JSON: nothing is unpickled here."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(experiment_path)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    names = sorted((i.base_name for i in infos if i.type == pafs.FileType.File
                    and i.base_name.startswith(ray_adapter.SNAPSHOT_PREFIX)
                    and i.base_name.endswith(ray_adapter.SNAPSHOT_SUFFIX)), reverse=True)
    torn = []
    for name in names:
        with fs.open_input_stream(f"{root}/{name}") as f:
            text = f.read()
        try:
            json.loads(text)
            break
        except ValueError:
            pass
        fs.move(f"{root}/{name}", f"{root}/{name}{_TORN}")
        torn.append(name)
        print(f"resume: the experiment snapshot {name} is torn (the driver died while Ray wrote it); "
              f"set aside as {name}{_TORN}, resuming from the previous snapshot if there is one",
              file=sys.stderr, flush=True)
    return torn
