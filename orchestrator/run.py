"""CLI: ``python -m orchestrator.run SWEEP.yaml [--resume | --auto-resume] [--dry-run] [--verbose] [--set KEY=VALUE ...]``.

Exit codes (``trainables.errors``): 0 success, 2 configuration / usage error (reported
before Ray starts), 1 the sweep failed (a trial errored, MLflow unreachable), 130 interrupted
(Ctrl-C or SIGTERM: what was saved stays; the printed ``--resume`` command continues it).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from trainables.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, ConfigError, NothingToResumeError, run_command
from trainables.run.data_facts import data_facts

from . import console
from .redact import error_line, redact
from .sweep import SweepConfig, SweepLock, load_sweep, storage, trial_count
from .sweep.control import listed_trials
from .sweep.probe import probe_sweep
from .tracking.preflight import check_tracking

if TYPE_CHECKING:
    from .tracking.warm_start import WarmStart

__all__ = ["main", "parse_args", "run_sweep", "dry_run", "resume_command"]

PROG = "repnas-sweep"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(prog=PROG, description="Run a RepNAS sweep on Ray Tune.")
    parser.add_argument("sweep", help="sweep YAML file (see docs/sweep-config.md)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    again.add_argument("--auto-resume", action="store_true",
                       help="continue the sweep if its folder exists in storage_path, else start it: for "
                            "schedulers that rerun the same command (Slurm requeue, a RayJob's retry)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check what every trial's start checks (model built and run on one batch, weights, "
                             "device, warm starts), print the resolved sweep, sample trials and the data facts; "
                             "no Ray, no training")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep key (dotted path, YAML value); repeatable")
    parser.add_argument("--verbose", action="store_true",
                        help="Ray's status table and every notice of Ray, MLflow, Optuna and torch")
    return parser.parse_args(argv)


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def resume_command(source: str | None, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """The command that continues the sweep of file ``source`` (with the ``--set`` overrides it
    was started with)."""
    sets = "".join(f" --set {shlex.quote(o)}" for o in overrides)
    return f"python -m orchestrator.run {shlex.quote(source or 'SWEEP.yaml')}{sets} --resume"


def dry_run(cfg: SweepConfig, count: int = 3) -> None:
    """Print the resolved sweep and the first ``count`` sampled trial overrides (every check of
    a real sweep's start has passed by then: ``_preflight``)."""
    print(f"# resolved sweep {cfg.name!r} (from {cfg.source})")
    print(redact(yaml.safe_dump(cfg.to_dict(), sort_keys=False)).rstrip())
    total = trial_count(cfg.space, cfg.search.algorithm, cfg.search.num_samples, cfg.search.paired)
    print(f"\n# {total} trials; the first {min(count, total)} (dotted keys applied on top of trial:)")
    for i, override in enumerate(listed_trials(cfg, count)):
        cfg.trial_config(override)  # every sample must be a valid trial
        print(f"trial {i}: {override}")
    print()
    for line in _data_lines(cfg, dry_run=True):
        print(line)
    print("\n# dry run: every trial's model built and run on one batch, weights read, warm starts resolved; "
          "nothing trained, Ray not started")


def _data_lines(cfg: SweepConfig, dry_run: bool) -> list[str]:
    """The base trial's data facts (dry run) or notices (a run); an image folder that exists here
    is checked (``ConfigError``: exit 2 naming the path); one that does not (a cluster's shared
    folder, seen from a laptop) is left to the trials, which read it where they run."""
    trial = cfg.trial_config({})
    root = Path(trial.data.root or "").expanduser()
    if trial.data.dataset == "imagefolder" and not (root / "train").is_dir():
        return [f"note: {root / 'train'} is not on this machine: each trial reads (and checks) the folders where it runs"]
    facts = data_facts(trial, stats=dry_run)
    return facts.lines() if dry_run else facts.notices


def _init_ray(cfg: SweepConfig) -> None:
    """Connect to ``ray.address`` (or ``RAY_ADDRESS``, as under ``ray job submit``); with
    neither, start a fresh local Ray sized to the machine (never an unrelated running one).
    Then check that the trials fit the cluster and its storage (``ConfigError`` otherwise)."""
    from .ray_tune import adapter as ray_adapter

    from .ray_tune.cluster import connect, validate_cluster

    ray_adapter.driver_env()
    connect(cfg, runtime_env=console.worker_runtime_env())
    validate_cluster(cfg)


def run_sweep(cfg: SweepConfig, resume: bool, init_ray: Callable[[SweepConfig], None] = _init_ray,
              warm: WarmStart | None = None, resume_with: str | None = None) -> int:
    """Run a validated sweep: parent run -> Tuner (new or restored) -> fit -> Pareto, registry, summary.

    Args:
        cfg: the sweep (:func:`orchestrator.sweep.load_sweep`).
        resume: restore the interrupted sweep of this name (``Tuner.restore``) instead of starting.
        init_ray: starts or joins Ray (a local Ray sized to this machine by default).
        warm: earlier sweeps' trials for a new sweep's sampler (``search.warm_start``).
        resume_with: the command line that resumes this sweep, printed when it is interrupted.

    Returns:
        The exit code: 0 every trial finished, 1 a trial failed or MLflow failed.

    Raises:
        SweepExistsError: the sweep exists and ``resume`` is false.
        NothingToResumeError: ``resume`` with nothing to restore.
        SweepLockedError: another driver runs this sweep.
        KeyboardInterrupt: Ctrl-C or SIGTERM (``main`` turns it into exit 130).
    """
    from .ray_tune.repair import set_aside_torn_snapshots
    from .ray_tune.tuner import can_restore, check_fresh

    with SweepLock(cfg.experiment_path) as lock:
        if storage.exists(cfg.experiment_path):
            lock.acquire()  # a running driver is reported as such, not as "already exists"
        restorable = False
        if resume:
            set_aside_torn_snapshots(cfg.experiment_path)  # a kill while Ray copied it
            restorable = can_restore(cfg)
            # a driver killed before Ray recorded anything leaves only its folder: start the trials
            if not restorable and not storage.exists(cfg.experiment_path):
                raise NothingToResumeError(f"nothing to resume at {cfg.experiment_path}; run without --resume")
        else:
            check_fresh(cfg)
        init_ray(cfg)  # a cluster that cannot hold the trials is refused before the sweep leaves any trace
        lock.acquire()
        return _run_locked(cfg, resume, restorable, warm, resume_with or resume_command(cfg.source))


def _run_locked(cfg: SweepConfig, resume: bool, restorable: bool, warm: WarmStart | None, resume_with: str) -> int:
    """The sweep proper, while this driver holds the sweep's lock (Ray is up)."""
    from .ray_tune.interrupt import stop_on_signal
    from .ray_tune.tuner import build_tuner, restore_tuner
    from .results.sweep_summary import print_summary, summarize
    from .tracking.child_run import MLflowTrialHook
    from .tracking.from_ray import sync_mlflow
    from .tracking.parent_run import finish_parent_run, start_parent_run

    state = start_parent_run(cfg, resume=resume)
    hooks = [MLflowTrialHook(state.tracking_uri, state.experiment_id, state.parent_run_id)]
    if warm is not None and warm.used and not restorable:
        from .tracking.warm_start import record_warm_start

        record_warm_start(state, warm)
    tuner = restore_tuner(cfg, hooks) if restorable else build_tuner(cfg, hooks, warm.trials if warm else ())
    if cfg.search.algorithm == "optuna":
        console.quiet_optuna()
    print(f"{'resuming' if restorable else 'running'} sweep {cfg.name!r}: "
          f"{trial_count(cfg.space, cfg.search.algorithm, cfg.search.num_samples, cfg.search.paired)} trials"
          f"{', each searched one followed by its control' if cfg.search.paired else ''}, "
          f"results in {cfg.experiment_path}", flush=True)
    with stop_on_signal(resume_with) as interruption:
        results = tuner.fit()
    unfinished = len(results) - results.num_terminated - results.num_errors
    try:  # MLflow is a view of Ray's results: fill in what trials could not log, then Pareto/registry
        sync_mlflow(cfg, state, results)
        summary = summarize(results, cfg, state, register=not interruption.signal)
    except Exception as err:  # noqa: BLE001 - any tracking failure: Ray's results are complete anyway
        _error(f"MLflow at {redact(state.tracking_uri)} failed after the trials ran "
               f"({error_line(err)}). Ray's results are "
               f"complete in {cfg.experiment_path}; when MLflow is back run: python -m orchestrator.sync {cfg.source}")
        return EXIT_FAILED
    print_summary(summary, cfg, state)
    if interruption.signal:
        open_trials = sum(not r.status.ended for r in summary.records)
        print(f"\nsweep interrupted ({interruption.name}): {open_trials} trial(s) did not finish (kept off the "
              f"Pareto front; models are registered when the sweep completes); continue with: {resume_with}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if unfinished:
        print(f"\n{unfinished} trial(s) did not finish; continue with: {resume_with}", file=sys.stderr)
        return EXIT_FAILED
    failed = len(summary.failed)  # Ray errors and diverged (NaN) trials
    finish_parent_run(state, ok=failed == 0)
    if failed:
        print(f"\n{failed} of {len(results)} trial(s) failed (each error above says what --resume will do "
              f"about it: {resume_with})", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _warm_start(cfg: SweepConfig) -> WarmStart | None:
    """The warm starts resolved (``ConfigError`` naming ``search.warm_start[i]``, before Ray
    starts); prints what each gives. Read even on --resume: a sweep killed before Ray recorded
    it starts anew."""
    if not cfg.search.warm_start:
        return None
    from .tracking.warm_start import resolve_warm_start

    warm = resolve_warm_start(cfg)
    for line in warm.lines():
        print(line, flush=True)
    return warm


def _main(args: argparse.Namespace) -> int:
    console.warn_untested_versions(PROG)
    try:
        cfg = load_sweep(args.sweep, args.set)
        notes = probe_sweep(cfg)  # every trial's start short of training: models, weights, devices
    except ConfigError as err:
        raise ConfigError("", f"invalid sweep file {args.sweep}: {err}") from None
    for line in notes:
        print(line, flush=True)
    if not args.dry_run:
        for line in _data_lines(cfg, dry_run=False):  # an empty or unreadable class folder: exit 2 here
            print(line, flush=True)
    if not args.dry_run or cfg.search.warm_start:  # the dry run reads MLflow for warm starts only
        problem = check_tracking(cfg.mlflow.tracking_uri)
        if problem:
            _error(problem + "; start it or point mlflow.tracking_uri / MLFLOW_TRACKING_URI elsewhere")
            return EXIT_FAILED
    warm = _warm_start(cfg)
    if args.dry_run:
        dry_run(cfg)
        return EXIT_OK
    resume = args.resume or (args.auto_resume and storage.exists(cfg.experiment_path))
    return run_sweep(cfg, resume=resume, init_ray=_init_ray, warm=warm,
                     resume_with=resume_command(cfg.source, args.set))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``repnas-sweep`` / ``python -m orchestrator.run``; returns the exit code."""
    args = parse_args(argv)
    console.configure(args.verbose)
    main_thread = threading.current_thread() is threading.main_thread()  # signals reach the main thread only
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None  # SIGTERM stops it as Ctrl-C does
    try:
        return run_command(PROG, lambda: _main(args))
    except KeyboardInterrupt:
        resume = resume_command(args.sweep, args.set)
        what = "" if args.dry_run else f"; what was saved stays, continue with: {resume}"
        print(f"\n{PROG}: interrupted{what}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
