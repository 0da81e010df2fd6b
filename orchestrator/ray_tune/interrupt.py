"""Ctrl-C (SIGINT) and SIGTERM while a sweep's trials run: stop, keep what was saved, say how to resume.

The first signal asks Tune to stop the way its own Ctrl-C does (its ``SIGUSR1`` handler: the
loop ends, the experiment state is saved one last time, the trials' checkpoints stay), for
SIGTERM too, which Tune would otherwise not catch. A second signal stops at once
(``KeyboardInterrupt``); the experiment state Tune saved before still resumes. Tune's own
"Resume experiment with: Tuner.restore(...)" hint is dropped: the driver prints this tool's
``--resume`` command instead.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

__all__ = ["Interruption", "stop_on_signal"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_TUNE_HANDLER = "signal_interrupt_tune_run"  # ray.tune.tune's handler of SIGUSR1 (and of SIGINT by default)
_TUNE_NOTICES = ("Tuner.restore", "Stop signal received", "Trials did not complete")


@dataclass
class Interruption:
    """The signal that stopped the sweep (None: it was not interrupted)."""

    signal: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""


class _DropTuneNotices(logging.Filter):
    """Tune's interruption notices, which name its Python API rather than this tool's command."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in _TUNE_NOTICES)


def _tune_listening() -> bool:
    """Whether ``tune.run`` is inside its loop with its stop handler installed."""
    return getattr(signal.getsignal(signal.SIGUSR1), "__name__", "") == _TUNE_HANDLER


@contextmanager
def stop_on_signal(resume_command: str) -> Iterator[Interruption]:
    """Around ``Tuner.fit``: the first SIGINT/SIGTERM stops the sweep after Tune saves its state,
    the second at once (``KeyboardInterrupt``, also for a signal before Tune's loop started).
    Yields the :class:`Interruption` the caller reads after ``fit`` returns."""
    state = Interruption()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield state
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        first = state.signal is None
        state.signal = state.signal or signum
        if not first or not _tune_listening():
            raise KeyboardInterrupt
        print(f"\n{signal.Signals(signum).name}: stopping the sweep once Ray Tune has saved its state "
              f"(send it again to stop at once); then continue with: {resume_command}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = {sig: signal.getsignal(sig) for sig in (*_SIGNALS, signal.SIGUSR1)}
    env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Tune leaves SIGINT to the handler above
    notices = _DropTuneNotices()
    tune_logger = logging.getLogger("ray.tune.tune")
    tune_logger.addFilter(notices)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until tune.run installs its own (a stale one from an earlier fit)
    for sig in _SIGNALS:
        signal.signal(sig, handler)
    try:
        yield state
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        tune_logger.removeFilter(notices)
        if env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env
