"""Fill MLflow in from what Ray Tune recorded: ``python -m orchestrator.sync SWEEP.yaml [--set K=V]``.

After a tracking outage, every trial's child run is created or completed from Ray's results
(``orchestrator.tracking.from_ray``), then the Pareto front and the registry aliases are
recomputed. Idempotent. Exit codes: 0 done, 1 MLflow failed, 2 bad input (``trainables.errors``).
"""

from __future__ import annotations

import argparse
import sys

from trainables.errors import EXIT_FAILED, EXIT_OK, run_command
from trainables.errors import ConfigError

from .console import warn_untested_versions
from .redact import error_line, redact
from .sweep import load_sweep

__all__ = ["main"]


def _sync(args: argparse.Namespace) -> int:
    from .ray_tune.results import load_results
    from .ray_tune.tuner import can_restore
    from .results.sweep_summary import print_summary, summarize
    from .tracking.from_ray import sync_mlflow
    from .tracking.parent_run import SweepState

    warn_untested_versions("repnas-sync")
    cfg = load_sweep(args.sweep, args.set)
    state = SweepState.load(cfg)
    if state is None or not can_restore(cfg):
        raise ConfigError("name", f"no sweep {cfg.name!r} with Ray results at {cfg.experiment_path}")
    try:
        results = load_results(cfg)
        print(f"MLflow sync of {cfg.name!r}: {sync_mlflow(cfg, state, results)}")
        summary = summarize(results, cfg, state)
    except Exception as err:  # noqa: BLE001 - report any tracking failure in one line
        print(f"repnas-sync: error: MLflow at {redact(state.tracking_uri)} failed: {error_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    print_summary(summary, cfg, state)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m orchestrator.sync``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="repnas-sync", description="Fill MLflow in from a sweep's Ray results.")
    parser.add_argument("sweep", help="the sweep YAML file the sweep was run with")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="same overrides as the run")
    args = parser.parse_args(argv)
    return run_command(parser.prog, lambda: _sync(args))


if __name__ == "__main__":
    sys.exit(main())
