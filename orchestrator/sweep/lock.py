"""One driver per sweep: a lock file ``<storage>/<name>/repnas_sweep.lock`` (pid and host).

Held with ``fcntl.flock`` for the driver's lifetime, so the kernel drops it when the driver
dies, even by SIGKILL. Where ``flock`` is unsupported (some network file systems), the
pid and host written in the file decide: a lock left by a dead process on this host is
stale and taken over; a live one, or one from another host, refuses the second driver.
Object-store paths (``s3://``, ...) cannot be locked and are not.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import IO, Any

from trainables.errors import SweepLockedError

__all__ = ["SweepLock", "LOCK_FILE", "pid_alive"]

LOCK_FILE = "repnas_sweep.lock"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text() or "{}"))
    except (OSError, ValueError):
        return {}


class SweepLock:
    """The sweep's lock file; ``acquire`` raises :class:`SweepLockedError`, ``with`` releases it."""

    def __init__(self, experiment_path: str) -> None:
        self.path = None if "://" in experiment_path else Path(experiment_path) / LOCK_FILE
        self._file: IO[str] | None = None

    def _refuse(self, holder: dict[str, Any]) -> SweepLockedError:
        who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        return SweepLockedError(f"sweep at {self.path.parent if self.path else '?'} is already being run by "
                                f"another driver ({who}); wait for it to end or stop it. If no driver "
                                f"runs it any more, delete {self.path}")

    def acquire(self) -> None:
        """Take the lock or raise :class:`SweepLockedError` naming the holder."""
        if self.path is None or self._file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise self._refuse(_holder(self.path)) from None
        except OSError as err:  # no flock on this file system: trust a live pid on this host
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            holder = _holder(self.path)
            same_host = holder.get("host") == socket.gethostname()
            live = bool(holder.get("pid")) and (not same_host or pid_alive(int(holder["pid"])))
            if live and holder.get("pid") != os.getpid():
                handle.close()
                raise self._refuse(holder) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Drop the lock (the file stays; its content is only informative)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> SweepLock:
        """The lock object; call :meth:`acquire` (idempotent) inside, released on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
