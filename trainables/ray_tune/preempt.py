"""The preemption notice (SIGTERM) of a Ray Tune trial's worker process.

Ray's worker exits on SIGTERM: ``Worker.main_loop`` (``ray/_private/worker.py``) installs a handler
raising ``SystemExit`` on the main thread. Tune runs the trial function on a ``RunnerThread``, where
no handler can be installed, but the trainable's ``setup`` runs on the actor's main thread
(``adapter.function_trainable``): :func:`install` puts this process's notice there, once per worker
(Tune reuses the actor for later trials). While a one-process trial trains (:func:`listening`) SIGTERM
only sets the flag, and ``run_trial`` checkpoints after the step in flight and raises
``TrialPreempted``, which Tune's ``FailureConfig`` retries. At any other moment (between trials, a DDP
or repeated trial, the restore before training) SIGTERM does what Ray's handler does: the worker exits.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from ..run.preemption import PreemptionNotice

__all__ = ["install", "listening", "uninstall"]


class _WorkerNotice(PreemptionNotice):
    """A notice that takes the first SIGTERM while a trial listens; otherwise (and for a second
    SIGTERM: stop at once) Ray's handler runs."""

    def __init__(self) -> None:
        super().__init__()
        self.listening = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.listening and not self.requested:
            super()._handle(signum, frame)
        else:
            self.pass_on(signum, frame)


_notice: _WorkerNotice | None = None


def install() -> None:
    """Install this worker process's notice (the trainable's ``setup``, on the actor's main thread)."""
    global _notice
    if _notice is not None:
        return
    notice = _WorkerNotice().__enter__()
    if notice.installed:
        _notice = notice
    else:
        print("preemption notice not installed (the trainable's setup ran off the main thread): a SIGTERM "
              "ends this trial without a checkpoint", file=sys.stderr)


def uninstall() -> None:
    """Give SIGTERM back to Ray's handler (the trainable's ``cleanup``, on the actor's main thread)."""
    global _notice
    if _notice is not None:
        _notice.__exit__()
        _notice = None


@contextmanager
def listening() -> Iterator[PreemptionNotice]:
    """The notice, taking SIGTERM while the block runs; an inert one where none is installed
    (``checkpoint.every_steps`` / ``every_seconds`` still apply)."""
    notice = _notice
    if notice is None:
        yield PreemptionNotice()
        return
    notice.requested, notice.received_at = False, None  # a reused actor: the last trial's notice is spent
    notice.listening = True
    try:
        yield notice
    finally:
        notice.listening = False
