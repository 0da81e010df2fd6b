"""Method comparison of finished sweeps, read back from MLflow.

    python -m orchestrator.report SWEEP.yaml [SWEEP2.yaml ...] [--set KEY=VALUE ...] [--out DIR]
        [--metric test_acc] [--select-by val_acc] [--replicate-key seed] [--versus plain ...]

For every method (the ``search.*`` keys of a trial) and setting of the other sampled keys:
mean ± std of ``--metric`` over the replicates (``seed``), each method's best setting on
``--select-by`` (validation), equal-branch-count verdicts (Welch), the fusion check of every
trial and the parent runs' Pareto fronts checked against their child runs
(``orchestrator.results.method_report``). Several sweeps are pooled into one comparison.
Writes DIR/report.md, report.json, report.png and attaches them to each sweep's parent run
under ``report/``. Exit codes: 0 written, 2 bad input (``trainables.errors``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from trainables.errors import EXIT_OK, run_command
from trainables.errors import ConfigError

from .results.method_report import DEFAULT_METRIC, SweepPart, build_report, plot_report
from .sweep import load_sweep
from .tracking.parent_run import log_parent_artifacts

__all__ = ["main"]


def _report(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small download per sweep
    loaded = [SweepPart.load(load_sweep(s, args.set)) for s in args.sweeps]
    parts = [part for part, _ in loaded]
    metric = args.metric
    if not any(metric in r.metrics for p in parts for r in p.records):
        if metric != DEFAULT_METRIC:
            raise ConfigError("--metric", f"{metric!r} is not a metric of any trial")
        metric = "fused_val_acc"  # a dataset without a test split (digits): the fused model on validation
    out = Path(args.out or f"{parts[0].cfg.experiment_path}/report")
    out.mkdir(parents=True, exist_ok=True)
    text, payload, best = build_report(parts, metric, args.select_by, args.replicate_key, args.versus)
    files = [out / "report.md", out / "report.json", plot_report(best, metric, out / "report.png")]
    files[0].write_text(text)
    files[1].write_text(json.dumps(payload, indent=1, default=str))
    for _, state in loaded:
        log_parent_artifacts(state, files, "report")
    print(text)
    print(f"\nwritten: {', '.join(str(f) for f in files)} (also on the MLflow parent run(s), under report/)")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="repnas-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", metavar="SWEEP",
                        help="sweep YAML file(s) (their name and mlflow keys find the runs); several are pooled")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="as for orchestrator.run, applied to every SWEEP")
    parser.add_argument("--out", default=None, help="output folder (default: <storage_path>/<name>/report of the first)")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help="the compared metric (default: test_acc, or fused_val_acc without a test split)")
    parser.add_argument("--select-by", default="val_acc", help="metric choosing each method's setting")
    parser.add_argument("--replicate-key", default="seed", help="the sampled key that only replicates")
    parser.add_argument("--versus", action="append", default=[], metavar="METHOD",
                        help="also compare every searched method with this fixed one (plain, dbb) at any branch "
                             "count; repeatable")
    args = parser.parse_args(argv)
    return run_command(parser.prog, lambda: _report(args))


if __name__ == "__main__":
    sys.exit(main())
