"""What Ray Tune prints during a sweep: one status line (or Ray's table with ``--verbose``)
and one line per finished, failed or retried trial.

Both are chosen when they print (``orchestrator.console.is_verbose``), so a sweep resumed
with or without ``--verbose`` prints as asked, whatever the first run pickled.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback, CLIReporter, ProgressReporter

from trainables.search.failures import failure_reason
from trainables.config.repeat import REPEAT_KEY, Repeat
from trainables.config.schema import flatten_overrides

from ..console import is_verbose
from ..records import TrialStatus, status_from_result, status_of_ray_trial

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

__all__ = ["SweepReporter", "TrialLines", "STATUS_EVERY_S"]

STATUS_EVERY_S = 30.0
_TABLE_EVERY_S = 15


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _epoch(trial: Trial) -> str:
    result = trial.last_result or {}
    return f"after epoch {_number(result['epoch'])}" if "epoch" in result else "before its first epoch"


class SweepReporter(ProgressReporter):
    """Quiet: ``[h:mm:ss] 3/8 trials finished, 2 running, 3 pending`` every ``STATUS_EVERY_S``
    seconds and at the end. Verbose: Ray's ``CLIReporter`` table every 15 s."""

    def __init__(self, metric_columns: Sequence[str], parameter_columns: Sequence[str]) -> None:
        self._table = CLIReporter(metric_columns=list(metric_columns), parameter_columns=list(parameter_columns),
                                  max_report_frequency=_TABLE_EVERY_S, max_progress_rows=50)
        self._start = time.time()
        self._total: int | None = None
        self._last = 0.0

    def setup(self, start_time: float | None = None, total_samples: int | None = None, metric: str | None = None,
              mode: str | None = None, **kwargs: Any) -> None:
        self._table.setup(start_time=start_time, total_samples=total_samples, metric=metric, mode=mode, **kwargs)
        self._start, self._total, self._last = start_time or time.time(), total_samples, time.time()

    def set_search_properties(self, metric: str | None, mode: str | None) -> bool:
        return self._table.set_search_properties(metric, mode)

    def set_total_samples(self, total_samples: int) -> None:
        self._table.set_total_samples(total_samples)
        self._total = total_samples

    def should_report(self, trials: list[Trial], done: bool = False) -> bool:
        if is_verbose():
            return self._table.should_report(trials, done)
        return done or time.time() - self._last >= STATUS_EVERY_S

    def report(self, trials: list[Trial], done: bool, *sys_info: str) -> None:
        if is_verbose():
            self._table.report(trials, done, *sys_info)
            return
        self._last = time.time()
        statuses = [status_of_ray_trial(t) for t in trials]
        counts = {status: statuses.count(status) for status in TrialStatus}
        minutes, seconds = divmod(int(self._last - self._start), 60)
        elapsed = f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
        total = max(self._total or 0, len(trials))
        parts = [f"{counts[TrialStatus.FINISHED]}/{total} trials finished"]
        parts += [f"{counts[s]} {s}" for s in (TrialStatus.STOPPED, TrialStatus.FAILED, TrialStatus.RUNNING,
                                               TrialStatus.PENDING) if counts[s]]
        epochs = [_number(t.last_result["epoch"]) for t, s in zip(trials, statuses)
                  if s is TrialStatus.RUNNING and "epoch" in (t.last_result or {})]
        print(f"[{elapsed}] {', '.join(parts)}" + (f" (at epoch {', '.join(epochs)})" if epochs else ""), flush=True)


class TrialLines(Callback):
    """One line per trial that ends: its objectives and sampled values, or its error and the
    error file with the traceback (a retried failure gets its own line too)."""

    def __init__(self, metrics: Sequence[str], params: Sequence[str]) -> None:
        self.metrics, self.params = list(metrics), list(params)

    def _values(self, trial: Trial) -> str:
        result = trial.last_result or {}
        config = flatten_overrides({k: v for k, v in (trial.config or {}).items() if k != REPEAT_KEY})
        shown = [f"{m}={_number(result[m])}" for m in self.metrics if m in result]
        shown += [f"{p}={_number(config[p])}" for p in self.params if p in config]
        return " ".join(shown)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        reason = failure_reason(trial.last_result or {})
        if reason:
            print(f"trial {trial} failed {_epoch(trial)}: {reason}", flush=True)
            return
        result = trial.last_result or {}
        repeat = (trial.config or {}).get(REPEAT_KEY)
        if repeat:
            took = f"not trained: repeats {Repeat.from_dict(repeat).label}"
        else:
            took = f"{_number(result.get('epoch', 0))} epochs, {result.get('time_total_s', 0):.0f} s"
        ended = "stopped early" if status_from_result(result, errored=False) is TrialStatus.STOPPED else "finished"
        print(f"trial {trial} {ended} ({took}): {self._values(trial)}", flush=True)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        print(f"trial {trial} failed {_epoch(trial)}, retrying from its last checkpoint: {_error(trial)}",
              flush=True)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        print(f"trial {trial} FAILED {_epoch(trial)}: {_error(trial)}", flush=True)


def _error(trial: Trial) -> str:
    """The last line of the trial's error file (the exception) and where the file is stored."""
    local = trial.error_file
    if not local:
        return "see the traceback above"
    try:
        lines = [line.strip() for line in Path(local).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    return f"{lines[-1][:300] if lines else 'error'} (traceback in {trial.path}/{Path(local).name})"
