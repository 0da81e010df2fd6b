"""One RepNAS search without Ray, configured by the ``trial:`` section of a sweep file.

    python -m trainables.cli SWEEP.yaml --output DIR [--resume] [--set KEY=VALUE ...]

``--set`` keys are dotted paths inside ``trial:`` (``search.budget=0.5``; a leading
``trial.`` is accepted; a mapping value sets each of its keys, as a space group does).
Writes DIR/summary.json, DIR/architecture.json, DIR/metrics.jsonl, DIR/export/ (fused
model in every format) and DIR/checkpoint/ (for ``--resume``).
User errors print one message to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config.metrics import PHASES
from .config.schema import parse_override
from .config.sections import TrialConfig
from .config.sweepfile import load_trial_section
from .errors import EXIT_OK, UserError, run_command
from .run.checkpoint import is_checkpoint
from .run.trial import CHECKPOINT_DIR, run_trial

__all__ = ["main"]

def _progress(total: int) -> Any:
    """A report callback printing one line per epoch."""

    def report(metrics: dict[str, float], _checkpoint: Path) -> None:
        line = (
            f"epoch {int(metrics['epoch']):>3}/{total} [{PHASES[int(metrics['phase_id'])]:>6}] "
            f"loss {metrics['train_loss']:.4f} acc {metrics['train_acc']:.3f} | "
            f"val loss {metrics['val_loss']:.4f} acc {metrics['val_acc']:.3f} | "
            f"kept {int(metrics['branches_kept'])}/{int(metrics['branches_total'])} "
            f"lr {metrics['lr']:.4f} {metrics['epoch_time_s']:.1f}s"
        )
        print(line, flush=True)
        if metrics.get("done"):
            print(
                f"fused: val acc {metrics['fused_val_acc']:.4f} (max logit diff {metrics['fused_max_logit_diff']:.2e}), "
                f"params {int(metrics['params_fused'])} vs {int(metrics['params_unfused'])} unfused, "
                f"latency {metrics['latency_fused_ms']:.3f} ms vs {metrics['latency_unfused_ms']:.3f} ms"
                + (f", test acc {metrics['test_acc']:.4f}" if "test_acc" in metrics else ""),
                flush=True,
            )

    return report


def _run(args: argparse.Namespace) -> None:
    trial = load_trial_section(args.sweep)
    config = TrialConfig.from_overrides(trial, dict(parse_override(text) for text in args.set))
    output = Path(args.output)
    checkpoint = output / CHECKPOINT_DIR
    if args.resume and not is_checkpoint(checkpoint):
        raise UserError(f"--resume: no checkpoint in {checkpoint}; run without --resume to start")
    if not args.resume and is_checkpoint(checkpoint):
        raise UserError(f"{output} already holds a run; pass --resume to continue it or choose another --output")
    print(f"trainables.cli: {config.model.host} on {config.data.dataset}, method {config.search.method}, "
          f"budget {config.search.budget}, {config.search.epochs} epochs -> {output}", flush=True)
    result = run_trial(config, output, resume_from=checkpoint if args.resume else None,
                       report=_progress(config.search.epochs), trial_name=output.name)
    (output / "summary.json").write_text((result.export_dir / "summary.json").read_text())
    shutil.copyfile(result.export_dir / "architecture.json", output / "architecture.json")
    errors = result.summary.get("export_errors") or {}
    for fmt, message in errors.items():
        print(f"warning: export {fmt} failed: {message}", file=sys.stderr)
    print(f"done: {output / 'summary.json'}, fused model in {result.export_dir}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m trainables.cli", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="sweep YAML file; its trial: section is the config")
    parser.add_argument("--output", required=True, help="run folder (created)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a trial key, e.g. --set search.budget=0.5 (repeatable)")
    args = parser.parse_args(argv)

    def body() -> int:
        _run(args)
        return EXIT_OK

    return run_command(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
