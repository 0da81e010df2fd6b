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

from trainables.failures import failure_reason
from trainables.restore import checkpoint_number, stored_checkpoints, stored_history, stored_problem
from trainables.schema import ConfigError

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    from ray.tune import Result
    from ray.tune.experiment import Trial

__all__ = ["CheckpointRepair", "Repair", "plan_repair", "set_aside_torn_snapshots", "error_message", "resume_advice"]

_SNAPSHOT_PREFIX, _TORN = "experiment_state-", ".torn"


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


def _stored_metrics(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    """Ray's metrics for a checkpoint the snapshot does not know: its last epoch's, and one
    training iteration per epoch (a trial reports once an epoch)."""
    history = stored_history(fs, path)
    return {**(history[-1] if history else {}), "training_iteration": len(history)}


def _cause(error: BaseException) -> BaseException:
    """The trial's own exception inside Ray's wrapper (``RayTaskError.cause``)."""
    return getattr(error, "cause", None) or error


def error_message(error: BaseException) -> str:
    """A trial's error as ``Type: message``: the project exception's when Ray wrapped one."""
    cause = _cause(error)
    return f"{type(cause).__name__}: {cause}"


def resume_advice(result: Result) -> str:
    """What ``--resume`` will do for this failed trial, in a few words."""
    if result.error is None:  # Ray counts it as finished: --resume never reruns it
        if failure_reason(result.metrics or {}):
            return "--resume does nothing: it diverged, and would diverge again (see the fix in its error)"
        return "--resume does nothing: the trial finished, with a non-finite objective"
    cause = _cause(result.error)
    if isinstance(cause, ConfigError):
        return (f"--resume cannot fix it: the error is in the config ({cause.path or 'the trial section'}); "
                "fix that (a sampled value needs a new sweep: --set name=...), or make a missing path exist")
    if not result.path or result.filesystem is None:
        return "--resume restarts it from epoch 1"
    fs = result.filesystem
    plan = plan_repair(fs, result.path, result.checkpoint.path if result.checkpoint else None, num_to_keep=None)
    if plan.latest is None:
        return "--resume restarts it from epoch 1 (no intact checkpoint)"
    epochs = _stored_metrics(fs, plan.latest)["training_iteration"]
    return f"--resume retries it from {_name(plan.latest)} (after epoch {epochs})"


def _repair_trial(trial: Trial) -> str | None:
    """Apply :func:`plan_repair` to a restored trial's checkpoint bookkeeping; the note, if any."""
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    manager = trial.run_metadata.checkpoint_manager
    fs = trial.storage.storage_filesystem
    latest_result = manager.latest_checkpoint_result
    known = {r.checkpoint.path.rstrip("/"): r for r in [*manager._checkpoint_results, latest_result] if r}
    named = latest_result.checkpoint.path if latest_result else None
    plan = plan_repair(fs, trial.path, named, manager.checkpoint_config.num_to_keep)
    results = [known.get(path) or _TrainingResult(Checkpoint(path, filesystem=fs), _stored_metrics(fs, path))
               for path in plan.keep]
    manager._checkpoint_results = results
    manager._latest_checkpoint_result = results[-1] if results else None
    for path in plan.delete:
        try:
            fs.delete_dir(path)
        except OSError as err:  # it stays behind; nothing restores from it
            print(f"resume: could not delete {path} ({err})", file=sys.stderr)
    if plan.next_index is not None:
        trial.storage.current_checkpoint_index = max(trial.storage.current_checkpoint_index, plan.next_index)
    trial.run_metadata.invalidate_cache()
    trial.invalidate_json_state()
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
            if trial.status == trial.TERMINATED or trial.run_metadata.checkpoint_manager is None:
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
                    and i.base_name.startswith(_SNAPSHOT_PREFIX) and i.base_name.endswith(".json")), reverse=True)
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
