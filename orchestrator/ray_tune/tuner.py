"""Build (or restore) the Ray Tune ``Tuner`` for a sweep."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from trainables.config.metrics import scheduler_metric_names
from trainables.errors import NothingToResumeError, SweepExistsError
from trainables.ray_tune import trial_name

from ..sweep import SweepConfig, param_space, storage
from ..sweep.control import listed_trials
from . import adapter as ray_adapter
from .searchers import WarmTrial, make_searcher

if TYPE_CHECKING:
    from ray import tune

    from trainables.run.hooks import TrialHook

    from .progress import SweepReporter, TrialLines

__all__ = ["check_fresh", "can_restore", "build_tuner",
           "restore_tuner", "make_scheduler"]

RUNG_TIME = "epochs_trained"
"""ASHA's time: epochs of the network a trial delivers (``two_stage`` restarts it at the rebuild,
so a retrain is compared at equal epochs, not at its dip; benchmarks/README.md)."""
# Columns of Ray's progress table (``--verbose``).
PROGRESS_METRICS: tuple[str, ...] = ("epoch", "train_loss", "val_acc", "branches_kept",
                                     "fused_val_acc", "latency_fused_ms")


def check_fresh(cfg: SweepConfig) -> None:
    """Refuse to start over an existing sweep directory (never overwrite)."""
    if storage.exists(cfg.experiment_path):
        src = cfg.source or "SWEEP.yaml"
        raise SweepExistsError(
            f"sweep {cfg.name!r} already exists at {cfg.experiment_path}. To continue it run "
            f"`python -m orchestrator.run {src} --resume`; to start a new sweep give it another "
            f"name, e.g. `--set name={cfg.name}-2`.")


def can_restore(cfg: SweepConfig) -> bool:
    """Whether Tune can continue the sweep: ``tuner.pkl``, an experiment snapshot *and* the
    searcher's state. A driver killed between writing the first two leaves a ``tuner.pkl`` whose
    restore would lose the search space (one empty trial); one killed while Ray first copied the
    snapshot and the searcher's state to storage can leave the snapshot alone, whose restore would
    never propose the trials it lacks. Such a sweep starts its trials afresh instead."""
    from ray import tune

    path = cfg.experiment_path
    return tune.Tuner.can_restore(path) and storage.any_file(path, ray_adapter.SNAPSHOT_PREFIX,
                                                             ray_adapter.SNAPSHOT_SUFFIX) \
        and storage.any_file(path, ray_adapter.SEARCH_STATE_PREFIX)


def trial_dirname(trial: Any) -> str:
    """Short trial directory names (Ray's default embeds the whole config)."""
    return trial_name(trial.trial_id)


def _trainable(cfg: SweepConfig, hooks: Sequence[TrialHook]) -> Any:
    from ray import tune

    import trainables
    from trainables.ray_tune.distributed import WorkerResources

    from .cluster import ddp_trial_resources

    r = cfg.resources
    trainable = trainables.make_trainable(cfg.trial, list(hooks), workers=WorkerResources(r.cpus, r.gpus))
    if r.workers > 1:  # the trial drives a TorchTrainer whose workers request their own resources
        return tune.with_resources(trainable, ddp_trial_resources())
    return tune.with_resources(trainable, {"cpu": r.cpus, "gpu": r.gpus})


def make_scheduler(cfg: SweepConfig, inherit_metric: bool = False) -> Any:
    """The trial scheduler: ASHA with rungs in ``RUNG_TIME`` (``inherit_metric``: Tune's own
    metric and mode, when they are the scheduler's), else FIFO."""
    s = cfg.scheduler
    if s.type == "asha":
        from ray.tune.schedulers import ASHAScheduler

        metric = {} if inherit_metric else {"metric": s.metric, "mode": s.mode}
        return ASHAScheduler(time_attr=RUNG_TIME, max_t=s.max_t, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor, **metric)
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _console(cfg: SweepConfig) -> tuple[SweepReporter, TrialLines]:
    """The progress reporter (status line, or Ray's table with ``--verbose``) and the
    one-line-per-trial callback (objectives and sampled values; a control's method)."""
    from .progress import SweepReporter, TrialLines

    objectives = [o.metric for o in cfg.objectives]
    params = [p.key for p in cfg.sampled]
    if cfg.search.paired and "search.method" not in params:  # a control's line says so
        params.append("search.method")
    return (SweepReporter(list(dict.fromkeys(objectives + list(PROGRESS_METRICS))), params),
            TrialLines(objectives, params))


def build_tuner(cfg: SweepConfig, hooks: Sequence[TrialHook], warm: Sequence[WarmTrial] = ()) -> tune.Tuner:
    """A new Tuner: resources, param space, searcher (``warm``: earlier sweeps' trials for its
    sampler), scheduler, stop, failures, checkpoints."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from .cluster import max_concurrent
    from .realign import AlignedSearch
    from .repair import CheckpointRepair

    ray_adapter.driver_env()
    search = dataclasses.replace(cfg.search, max_concurrent=max_concurrent(cfg))  # cfg stays as validated
    single = len(cfg.objectives) == 1
    objective = cfg.objectives[0]
    inherit = single and cfg.scheduler.type == "asha" and cfg.scheduler.metric == objective.metric \
        and cfg.scheduler.mode == objective.mode
    # Tune's own metric only for one objective reported every epoch: Tune hands it to the searcher,
    # whose per-epoch history an objective reported only at the end cannot have (make_searcher)
    top_metric = single and objective.metric in scheduler_metric_names() and (cfg.scheduler.type != "asha" or inherit)
    reporter, trial_lines = _console(cfg)
    space = param_space(cfg.space, cfg.search.algorithm)
    # grid/random as a VariantList (a random sweep's controls follow their trials in it)
    listed = cfg.search.algorithm != "optuna"
    variants = listed_trials(cfg) if listed else None
    # Optuna's: each proposal and its control (ray_tune.controls) with search.control
    num_samples = len(variants) if variants is not None else cfg.search.num_samples * (2 if cfg.search.paired else 1)
    searcher = make_searcher(search, space, warm, cfg.trial, variants, num_samples)
    if search.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, search.max_concurrent)
    tune_config = tune.TuneConfig(
        search_alg=AlignedSearch(searcher),  # restored in step with Tune's trials (ray_tune.realign)
        scheduler=make_scheduler(cfg, inherit_metric=inherit),
        num_samples=num_samples,
        metric=objective.metric if top_metric else None,
        mode=objective.mode if top_metric else None,
        trial_dirname_creator=trial_dirname,
        reuse_actors=True,  # a trial's worker process is reused: torch/MLflow imported once
    )
    run_config = tune.RunConfig(
        name=cfg.name,
        storage_path=cfg.storage_path,
        stop=dict(cfg.stop) or None,
        failure_config=tune.FailureConfig(max_failures=cfg.failure.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
        callbacks=[CheckpointRepair(), trial_lines],  # restored trials continue from a checkpoint that exists
        progress_reporter=reporter,
        verbose=1,
    )
    return tune.Tuner(_trainable(cfg, hooks), param_space={} if listed else space, tune_config=tune_config,
                      run_config=run_config)


def restore_tuner(cfg: SweepConfig, hooks: Sequence[TrialHook]) -> tune.Tuner:
    """``Tuner.restore`` of an interrupted sweep; unfinished and errored trials continue from
    their last checkpoint (the search space and settings are those of the first run)."""
    from ray import tune

    ray_adapter.driver_env()
    if not can_restore(cfg):
        raise NothingToResumeError(
            f"nothing to resume at {cfg.experiment_path} (no Ray Tune experiment state there); "
            "run without --resume to start the sweep")
    return tune.Tuner.restore(cfg.experiment_path, trainable=_trainable(cfg, hooks), resume_errored=True)
