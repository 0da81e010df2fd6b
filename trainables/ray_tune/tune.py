"""The Ray Tune function trainable: one RepNAS trial per Tune trial.

``make_trainable(base_trial, hooks)`` returns the Trainable class Tune builds from the function
``repnas_trial(config)`` (so Ray names trials ``repnas_trial_<id>``), whose setup installs the worker's
preemption notice (``trainables.ray_tune.preempt``). ``config`` holds only the sampled outer keys, dotted relative to
the ``trial:`` section (``"search.budget"``, ``"optim.lr"``; a leading ``"trial."`` is
accepted), applied on top of ``base_trial``.
Every epoch is reported with ``ray.tune.report(metrics, checkpoint=...)``; a restored trial
continues from ``ray.tune.get_checkpoint()`` or, when later, from its mid-epoch checkpoint on
storage (``trainables.ray_tune.midepoch_store``: SIGTERM, the trial's node draining,
``checkpoint.every_steps`` / ``every_seconds``; one-process trials). The last checkpoint holds ``export/``. A config
carrying ``REPEAT_KEY`` (``trainables.config.repeat``) is not trained: it reports the earlier trial's
result once and calls its hooks' ``on_repeat``.
Only ``ray.tune`` APIs are used (``ray.train.report`` raises inside Tune in Ray 2.60).
With ``runtime.workers > 1`` the trial drives a Ray Train ``TorchTrainer`` instead and
re-reports rank 0's results (``trainables.ray_tune.distributed``). Every result carries
``node_id``, the Ray node that trained it (rank 0's under DDP).
"""

from __future__ import annotations

import copy
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config.repeat import REPEAT_KEY, Repeat
from ..config.sections import TrialConfig
from ..errors import NonFiniteLossError, TrialPreempted
from ..run.hooks import TrialHook
from ..run.trial import ReportFn, run_trial
from ..search.failures import failure_metrics
from . import adapter, preempt
from .distributed import NODE_KEY, WorkerResources, run_distributed
from .midepoch_store import MidEpochStore

__all__ = ["TRAINABLE_NAME", "make_trainable", "trial_name"]

TRAINABLE_NAME = "repnas_trial"
"""What Tune calls the trainable (its function's name): trials are ``repnas_trial_<id>``."""


def trial_name(trial_id: str) -> str:
    """Ray Tune's name (and folder name) of the trial with ``trial_id``: ``repnas_trial_<id>``."""
    return f"{TRAINABLE_NAME}_{trial_id}"


def _run_ddp(cfg: TrialConfig, workers: WorkerResources, hooks: list[TrialHook], trial_name: str) -> None:
    """The trial on a TorchTrainer whose storage lives under this trial's folder; rank 0's
    reports are re-reported to Tune with their checkpoints (``trainables.ray_tune.distributed``)."""
    from ray import tune

    path, filesystem = adapter.trial_storage()

    def report(metrics: dict[str, float], checkpoint: Any) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint(checkpoint.path, filesystem=checkpoint.filesystem))

    run_distributed(cfg, report, workers=workers, storage_path=path, storage_filesystem=filesystem, hooks=hooks,
                    trial_name=trial_name, resume=tune.get_checkpoint())


def _report_repeat(cfg: TrialConfig, repeat: Repeat, hooks: list[TrialHook], trial_name: str) -> None:
    """A repeated configuration: no training; the earlier trial's result is this trial's."""
    import ray
    from ray import tune

    metrics = {**repeat.metrics, "done": 1.0}
    for hook in hooks:
        hook.on_start(cfg, trial_name, resumed=False)
        hook.on_repeat(metrics, repeat)
    tune.report({**metrics, NODE_KEY: ray.get_runtime_context().get_node_id()})


def _run_one(cfg: TrialConfig, workdir: Path, hooks: list[TrialHook], report: ReportFn, trial_name: str,
             gpus_held: float | None) -> None:
    """The trial in this process: from the later of Tune's and the mid-epoch checkpoint, with the
    worker's preemption notice; mid-epoch checkpoints go to the trial's storage."""
    from ray import tune

    store = MidEpochStore.of_trial()
    resume_from = store.restore(tune.get_checkpoint(), workdir / "restored")

    def report_epoch(metrics: dict[str, float], checkpoint_dir: Path) -> None:
        if metrics["epoch"] >= cfg.search.epochs:  # Tune ends the trial on this report: it never returns
            store.clear()
        report(metrics, checkpoint_dir)
        store.last = None  # superseded by Tune's checkpoint of the epoch

    with preempt.listening() as notice:
        try:
            run_trial(cfg, workdir, hooks=hooks, resume_from=resume_from, report=report_epoch, trial_name=trial_name,
                      durable_checkpoints=False, gpus_held=gpus_held, notice=notice, mid_epoch_saved=store.save)
        except TrialPreempted as err:  # run_trial's message names the local folder and --resume
            where = (f"at {store.last.where()}: checkpoint written to {store.last.path}" if store.last is not None
                     else "at an epoch's end: Ray Tune's checkpoint of it holds everything")
            raise TrialPreempted(f"preempted ({notice.reason}) {where}; Ray Tune retries the trial from it "
                                 "(one of failure.max_failures)") from err


def make_trainable(base_trial: Mapping[str, Any], hooks: Sequence[TrialHook] = (), *,
                   workers: WorkerResources | None = None) -> type:
    """A Ray Tune trainable (a class, named ``repnas_trial``) running ``run_trial`` on ``base_trial``
    + the sampled keys.

    Each trial gets its own deep copy of ``hooks``. A config carrying a ``Repeat`` reports that
    earlier result without training. Paths in ``base_trial`` and the sampled keys must be absolute
    (``orchestrator.sweep`` resolves them): Tune runs each trial in a folder of its own.

    Args:
        base_trial: the sweep's ``trial:`` mapping; validated here, on the driver.
        hooks: tracking hooks, copied per trial.
        workers: the resources of each DDP worker when ``runtime.workers > 1`` (default 1 CPU).

    Raises:
        ConfigError: ``base_trial`` is not a valid trial (before any trial starts).
    """
    base_config = TrialConfig.from_dict(dict(base_trial))

    def repnas_trial(config: dict[str, Any]) -> None:  # named TRAINABLE_NAME
        import ray
        from ray import tune

        per_worker = workers or WorkerResources()
        config = dict(config)
        repeat = config.pop(REPEAT_KEY, None)
        cfg = TrialConfig.from_overrides(dict(base_trial), config) if config else base_config
        cfg = cfg.with_threads(per_worker.cpus if cfg.runtime.workers > 1 else adapter.trial_cpus())
        context = tune.get_context()
        workdir = Path(tempfile.mkdtemp(prefix=f"repnas-{context.get_trial_id()}-"))
        try:
            def report(metrics: dict[str, float], checkpoint_dir: Path) -> None:
                tune.report({**metrics, NODE_KEY: ray.get_runtime_context().get_node_id()}, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

            try:
                if repeat is not None:
                    _report_repeat(cfg, Repeat.from_dict(repeat), copy.deepcopy(list(hooks)), context.get_trial_name())
                elif cfg.runtime.workers > 1:
                    _run_ddp(cfg, per_worker, copy.deepcopy(list(hooks)), context.get_trial_name())
                else:
                    _run_one(cfg, workdir, copy.deepcopy(list(hooks)), report, context.get_trial_name(),
                             None if workers is None else workers.gpus)
            except NonFiniteLossError as err:  # deterministic: end the trial now, no FailureConfig retry
                print(f"trial {context.get_trial_name()} failed: {err}", file=sys.stderr)
                tune.report(failure_metrics(err))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    return adapter.function_trainable(repnas_trial, on_setup=preempt.install, on_cleanup=preempt.uninstall)
