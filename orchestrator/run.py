"""CLI: ``python -m orchestrator.run SWEEP.yaml [--resume] [--dry-run] [--set KEY=VALUE ...]``.

Exit codes: 0 success, 2 configuration / usage error (reported before Ray starts),
1 the sweep failed (a trial errored, MLflow unreachable, interrupted).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import yaml

from . import _trial
from .config import ConfigError, SweepConfig, load_sweep
from .space import sample_overrides

__all__ = ["main", "parse_args", "run_sweep", "dry_run"]

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(prog="repnas-sweep", description="Run a RepNAS sweep on Ray Tune.")
    parser.add_argument("sweep", help="sweep YAML file (see docs/sweep-config.md)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the resolved sweep and sample trials; no Ray")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep key (dotted path, YAML value); repeatable")
    return parser.parse_args(argv)


def _error(message: str) -> None:
    print(f"repnas-sweep: error: {message}", file=sys.stderr)


def dry_run(cfg: SweepConfig, count: int = 3) -> None:
    """Print the resolved sweep and the first ``count`` sampled trial overrides."""
    print(f"# resolved sweep {cfg.name!r} (from {cfg.source})")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
    base = cfg.base_trial()
    print(f"\n# first {count} sampled trials (dotted keys applied on top of trial:)")
    for i, override in enumerate(sample_overrides(cfg.space, cfg.search.algorithm, count, cfg.search.seed)):
        _trial.resolve(base, override)  # every sample must be a valid trial
        print(f"trial {i}: {override}")


def _check_tracking(uri: str, timeout: float = 10.0) -> str | None:
    """Why an HTTP tracking server cannot be reached (None when fine or not HTTP)."""
    if not uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return None
    except (urllib.error.URLError, OSError) as err:
        return f"MLflow tracking server {uri} is unreachable ({getattr(err, 'reason', err)})"


def _init_ray(cfg: SweepConfig) -> None:
    """Connect to ``ray.address`` (or ``RAY_ADDRESS``, as under ``ray job submit``); with
    neither, start a fresh local Ray sized to the machine (never an unrelated running one)."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        ray.init(address=address, include_dashboard=cfg.ray.dashboard or None)
        return
    ray.init(address="local", num_cpus=cfg.ray.num_cpus or os.cpu_count(), num_gpus=cfg.ray.num_gpus,
             include_dashboard=cfg.ray.dashboard, dashboard_host="127.0.0.1")


def run_sweep(cfg: SweepConfig, resume: bool, init_ray: Callable[[SweepConfig], None] = _init_ray) -> int:
    """Parent run -> Tuner (new or restored) -> fit -> Pareto, registry, summary."""
    from ray import tune

    from .summary import print_summary, summarize
    from .tracking import MLflowTrialHook, SweepState, finish_parent_run, start_parent_run
    from .tuner import NothingToResumeError, build_tuner, check_fresh, restore_tuner

    restorable = False
    if resume:
        restorable = tune.Tuner.can_restore(cfg.experiment_path)
        if not restorable and SweepState.load(cfg) is None:
            raise NothingToResumeError(f"nothing to resume at {cfg.experiment_path}; run without --resume")
    else:
        check_fresh(cfg)
    state = start_parent_run(cfg, resume=resume)
    hooks = [MLflowTrialHook(state.tracking_uri, state.experiment_id, state.parent_run_id)]
    init_ray(cfg)
    tuner = restore_tuner(cfg, hooks) if restorable else build_tuner(cfg, hooks)
    results = tuner.fit()
    unfinished = len(results) - results.num_terminated - results.num_errors
    summary = summarize(results, cfg, state)
    print_summary(summary, cfg, state)
    if unfinished:
        print(f"\n{unfinished} trial(s) did not finish; continue with: "
              f"python -m orchestrator.run {cfg.source} --resume", file=sys.stderr)
        return EXIT_FAILED
    finish_parent_run(state, ok=results.num_errors == 0)
    if results.num_errors:
        print(f"\n{results.num_errors} of {len(results)} trial(s) failed (see the errors above; "
              f"--resume retries them from their last checkpoint)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``repnas-sweep`` / ``python -m orchestrator.run``; returns the exit code."""
    args = parse_args(argv)
    try:
        cfg = load_sweep(args.sweep, args.set)
        if args.dry_run:
            dry_run(cfg)
            return EXIT_OK
    except ConfigError as err:
        _error(f"invalid sweep file {args.sweep}: {err}")
        return EXIT_CONFIG
    problem = _check_tracking(cfg.mlflow.tracking_uri)
    if problem:
        _error(problem + "; start it or point mlflow.tracking_uri / MLFLOW_TRACKING_URI elsewhere")
        return EXIT_FAILED
    from .tuner import NothingToResumeError, SweepExistsError

    try:
        return run_sweep(cfg, resume=args.resume, init_ray=_init_ray)
    except (SweepExistsError, NothingToResumeError) as err:
        _error(str(err))
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
