"""The preemption notice of a Ray Tune trial's worker process: SIGTERM, or its Ray node draining.

Ray's worker exits on SIGTERM: ``Worker.main_loop`` (``ray/_private/worker.py``) installs a handler
raising ``SystemExit`` on the main thread. Tune runs the trial function on a ``RunnerThread``, where
no handler can be installed, but the trainable's ``setup`` runs on the actor's main thread
(``adapter.function_trainable``): :func:`install` puts this process's notice there, once per worker
(Tune reuses the actor for later trials). While a one-process trial trains (:func:`listening`) SIGTERM
only sets the flag, and ``run_trial`` checkpoints after the step in flight and raises
``TrialPreempted``, which Tune's ``FailureConfig`` retries. At any other moment (between trials, a DDP
or repeated trial, the restore before training) SIGTERM does what Ray's handler does: the worker exits.

A node drained for preemption (``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION``: what
autoscaler v2 and KubeRay do before they take a spot node away, with a deadline) sends no signal:
Ray Core only marks it draining and schedules nothing new there. While a trial listens, a daemon
thread polls the cluster's draining nodes every :data:`DRAIN_POLL_SECONDS` (the call Ray Train's own
preemption watcher makes) and gives notice when the trial's node is among them: the same
checkpoint-then-stop as SIGTERM, and Tune retries the trial on another node.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from ..run.preemption import PreemptionNotice

__all__ = ["DRAIN_POLL_SECONDS", "draining_nodes", "install", "listening", "uninstall", "watch_drain"]


def _poll_seconds(default: float = 5.0) -> float:
    """``REPNAS_DRAIN_POLL_SECONDS`` when it is a positive number; otherwise warn and use ``default``
    (a worker must not fail to import over a bad environment value)."""
    value = os.environ.get("REPNAS_DRAIN_POLL_SECONDS")
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if 0 < seconds < float("inf"):
        return seconds
    print(f"REPNAS_DRAIN_POLL_SECONDS={value!r} is not a positive number of seconds; polling every {default:g} s",
          file=sys.stderr)
    return default


DRAIN_POLL_SECONDS = _poll_seconds()
"""How often a listening trial asks Ray which nodes are draining: 5 s, as Ray Train polls, or the
environment's ``REPNAS_DRAIN_POLL_SECONDS`` on the worker's node (read when the worker imports this)."""


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


def draining_nodes() -> dict[str, int]:
    """``{node id hex: deadline in ms since the epoch (0: none)}`` of the cluster's draining nodes."""
    import ray

    return dict(ray._private.state.state.get_draining_nodes() or {})


def _deadline(ms: int) -> str:
    return f", deadline in {max(0.0, ms / 1000 - time.time()):.0f} s" if ms else ""


def watch_drain(notice: PreemptionNotice, node_id: str, stop: threading.Event, *,
                poll_seconds: float = DRAIN_POLL_SECONDS,
                draining: Callable[[], dict[str, int]] = draining_nodes) -> None:
    """Until ``stop`` is set, poll ``draining()`` and give ``notice`` when ``node_id`` drains.
    A failed poll (the GCS restarting) is retried at the next one; the first is reported."""
    warned = False
    while not stop.wait(poll_seconds):
        try:
            nodes = draining()
        except Exception as err:  # noqa: BLE001 - a transient GCS error must not end the trial
            if not warned:
                print(f"could not ask Ray which nodes are draining ({err!r}); retrying every {poll_seconds:g} s",
                      file=sys.stderr)
                warned = True
            continue
        if node_id in nodes:
            notice.request(f"node draining{_deadline(nodes[node_id])}")
            return


@contextmanager
def listening() -> Iterator[PreemptionNotice]:
    """The notice while the block runs: it takes SIGTERM (an inert one where none is installed;
    ``checkpoint.every_steps`` / ``every_seconds`` still apply) and the drain of this trial's node."""
    import ray

    notice = _notice if _notice is not None else PreemptionNotice()
    notice.reset()  # a reused actor: the last trial's notice is spent
    stop = threading.Event()
    if ray.is_initialized():  # a Ray worker: its node may be drained
        threading.Thread(target=watch_drain, args=(notice, ray.get_runtime_context().get_node_id(), stop),
                         name="repnas-drain-watch", daemon=True).start()
    if isinstance(notice, _WorkerNotice):
        notice.listening = True
    try:
        yield notice
    finally:
        stop.set()
        if isinstance(notice, _WorkerNotice):
            notice.listening = False
