"""Ray's internals used by the sweep driver, in one place: private classes and attributes,
file layouts, environment knobs and logger names that Ray does not promise to keep.

The rest of the driver calls these functions instead of reaching into Ray, so a Ray upgrade that
moves one of them breaks here, and a fast test without a cluster says which
(``tests/orchestrator/test_orchestrator_ray_adapter.py``; the checkpoint bookkeeping in
``tests/orchestrator/test_orchestrator_repair.py``). ``TESTED`` is the Ray range the project is
tested with (``pyproject.toml`` declares the same bounds; README, "Supported versions"). The
trial's half is ``trainables.ray_tune.adapter``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    from ray.tune import Checkpoint
    from ray.tune.experiment import Trial

__all__ = ["TESTED", "SNAPSHOT_PREFIX", "SNAPSHOT_SUFFIX", "SEARCH_STATE_PREFIX", "QUIET_LOGGERS", "driver_env", "checkpoint_state",
           "set_checkpoint_state", "trial_filesystem", "training_result", "raise_checkpoint_index",
           "invalidate_trial", "load_result_grid", "snapshot_trials", "trial_done", "generated_count",
           "set_generated_count", "set_live_trials", "is_optuna", "optuna_open_trials", "optuna_knows", "optuna_adopt"]

TESTED = ">=2.52,<2.61"
"""The Ray versions this project is tested with (a PEP 440 specifier; pyproject.toml's bounds).
Older Rays lack what it uses: 2.51 the ``ray._private.authentication`` logger, 2.50 Train v2 by
default (DDP trials), 2.48 Train v2's ``WorkerGroupError``."""

SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX = "experiment_state-", ".json"
"""Tune's experiment snapshot files in ``<storage_path>/<name>``: what ``Tuner.restore`` reads."""

SEARCH_STATE_PREFIX = "search_gen_state-"
"""Tune's searcher state files beside the snapshots (``SearchGenerator.CKPT_FILE_TMPL``)."""

QUIET_LOGGERS: Mapping[str, tuple[str, int]] = {
    "ray._private.worker": ("driver", logging.WARNING),  # "Started a local Ray instance."
    "ray._private.authentication.authentication_token_setup": ("driver", logging.ERROR),  # token auth notice
    "ray.tune.tune": ("driver", logging.WARNING),  # "Wrote the latest version of all result files", "Total run time"
    "ray.train": ("worker", logging.WARNING),  # "Checkpoint successfully created at: ..." once per epoch
    "ray.tune.trainable": ("worker", logging.WARNING),  # "Restored on <ip> from checkpoint: ..." on --resume
}
"""Ray's loggers of notices that need no action: where they print (driver or trial worker) and
the level below which a quiet sweep hides them."""


def driver_env() -> None:
    """Ray settings of a sweep driver, unless the environment sets them: Tune's legacy output
    engine (it honours a custom ``ProgressReporter``), no warnings about snapshot frequency
    (``num_to_keep`` snapshots per checkpoint, by design), and no default worker prestarted per
    CPU for the first driver of a local Ray (Tune's trial actors carry a ``runtime_env`` and
    never run in them; ~1.5 s of ``ray.init`` saved), and no strict check that every result holds
    the objectives: those reported only at a trial's end (``fused_val_acc``, ``test_acc``, the
    ``int8_*`` metrics) are missing from its epoch reports by design, and the sweep's objectives
    are checked against the trial's metric names before anything runs (``sweep.load``)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")


def checkpoint_state(trial: Trial) -> tuple[list[Any], Any, int | None] | None:
    """(the checkpoint results its manager keeps, oldest first; the latest one, the checkpoint
    a restore continues from; ``num_to_keep``) of a trial, or None before it has a manager."""
    manager = trial.run_metadata.checkpoint_manager
    if manager is None:
        return None
    return list(manager._checkpoint_results), manager.latest_checkpoint_result, manager.checkpoint_config.num_to_keep


def set_checkpoint_state(trial: Trial, results: Iterable[Any]) -> None:
    """Make the trial's checkpoint manager keep exactly ``results`` (oldest first, the last one latest)."""
    manager = trial.run_metadata.checkpoint_manager
    kept = list(results)
    manager._checkpoint_results = kept
    manager._latest_checkpoint_result = kept[-1] if kept else None


def trial_filesystem(trial: Trial) -> pafs.FileSystem:
    """The pyarrow filesystem of the trial's storage (where ``trial.path`` lives)."""
    return trial.storage.storage_filesystem


def training_result(checkpoint: Checkpoint, metrics: Mapping[str, Any]) -> Any:
    """A checkpoint-manager entry for ``checkpoint`` with the metrics Tune associates with it."""
    from ray.train._internal.session import _TrainingResult

    return _TrainingResult(checkpoint, dict(metrics))


def raise_checkpoint_index(trial: Trial, index: int) -> None:
    """Number the trial's next checkpoint folder after ``index`` at least (``checkpoint_<n>``)."""
    trial.storage.current_checkpoint_index = max(trial.storage.current_checkpoint_index, index)


def invalidate_trial(trial: Trial) -> None:
    """Drop the trial's cached JSON state after its bookkeeping changed (so snapshots see it)."""
    trial.run_metadata.invalidate_cache()
    trial.invalidate_json_state()


def load_result_grid(experiment_path: str) -> Any:
    """A ``ResultGrid`` of the experiment as stored (no running Ray needed)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    return ResultGrid(ExperimentAnalysis(experiment_path))


def snapshot_trials(dirpath: str) -> list[Trial]:
    """The trials of the newest experiment snapshot in local folder ``dirpath`` (the one
    ``Tuner.restore`` reads: the greatest name), in the order Tune created them."""
    import json
    from pathlib import Path

    from ray.tune.experiment import Trial

    files = sorted(Path(dirpath).glob(f"{SNAPSHOT_PREFIX}*{SNAPSHOT_SUFFIX}"))
    if not files:
        return []
    state = json.loads(files[-1].read_text())  # plain JSON; each trial's state is decoded by Ray's own reader
    trials = []
    for json_state, metadata in state["trial_data"]:
        trial = Trial.from_json_state(json_state, stub=True)
        trial.restore_run_metadata(metadata)
        trials.append(trial)
    return trials


def trial_done(trial: Trial) -> bool:
    """Whether Tune ended the trial (it will neither run it again nor report it complete)."""
    return trial.status == trial.TERMINATED


def generated_count(search: Any) -> int:
    """The trials a ``SearchGenerator`` has created (it stops at ``num_samples``)."""
    return search._counter


def set_generated_count(search: Any, count: int) -> None:
    search._counter = count


def set_live_trials(limiter: Any, trial_ids: Iterable[str]) -> None:
    """The trials a ``ConcurrencyLimiter`` counts as running (it forwards only their completion)."""
    limiter.live_trials = set(trial_ids)
    limiter.num_unfinished_live_trials = len(limiter.live_trials)


def is_optuna(searcher: Any) -> bool:
    from ray.tune.search.optuna import OptunaSearch

    return isinstance(searcher, OptunaSearch)


def optuna_open_trials(searcher: Any) -> list[str]:
    """Tune trial ids an ``OptunaSearch`` proposed and has not been told the end of."""
    return [t for t in searcher._ot_trials if t not in searcher._completed_trials]


def optuna_knows(searcher: Any, trial_id: str) -> bool:
    return trial_id in searcher._ot_trials


def optuna_adopt(searcher: Any, trial_id: str, params: Mapping[str, Any]) -> None:
    """Register a trial an ``OptunaSearch`` did not propose (its saved state is older than
    Tune's) as one of its proposals, with these values, so its result reaches the study."""
    space = searcher._space
    searcher._ot_study.enqueue_trial({k: v for k, v in params.items() if k in space}, skip_if_exists=False)
    searcher._ot_trials[trial_id] = searcher._ot_study.ask(fixed_distributions=searcher._space)
