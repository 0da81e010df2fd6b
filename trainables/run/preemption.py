"""A preemption notice (SIGTERM) turned into "checkpoint now, then stop".

Spot/preemptible VMs, Kubernetes pod deletion and Slurm preemption all send SIGTERM and wait a
grace period (about 30 s to 2 min) before SIGKILL. Inside :class:`PreemptionNotice` SIGTERM only
sets a flag; the trial checks it after every training step (``trainables.run.trial``), writes a
mid-epoch checkpoint and raises :class:`~trainables.errors.TrialPreempted`, so at most the step
in flight is lost. Signal handlers can only be installed from the main thread: elsewhere the
notice is inert (``installed`` is False). :meth:`PreemptionNotice.pass_on` does what the signal
did before the notice (a Ray worker's own handler exits the process: ``trainables.ray_tune.preempt``).
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any, Self

__all__ = ["PreemptionNotice"]


class PreemptionNotice:
    """``with PreemptionNotice() as notice:`` SIGTERM sets ``notice.requested`` (and ``reason``)
    instead of ending the process; the previous handler is restored on exit."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)) -> None:
        self.signals = signals
        self.requested = False
        self.reason: str | None = None  # what gave notice: "SIGTERM", or a Ray node draining
        self.installed = False
        self._previous: dict[signal.Signals, Any] = {}

    def request(self, reason: str) -> None:
        """Give notice (the first one counts): the trial checkpoints after the step in flight and stops."""
        if not self.requested:
            self.reason, self.requested = reason, True

    def reset(self) -> None:
        """Forget a notice already acted on (a Ray worker reused for its next trial)."""
        self.requested, self.reason = False, None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.request(signal.Signals(signum).name)

    def pass_on(self, signum: int, frame: FrameType | None) -> None:
        """Do what ``signum`` did before the notice was installed: call the previous Python handler,
        or (the default action) restore it and send the signal again; an ignored signal stays ignored."""
        previous = self._previous.get(signal.Signals(signum), signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
            self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        self.installed = False
