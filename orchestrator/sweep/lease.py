"""One driver per sweep on object storage: a lease object ``<experiment>/repnas_sweep.lease``.

Object stores have no ``flock``, and pyarrow (the file system Ray Tune writes through) exposes
no conditional write, so the lease is a small JSON object (token, pid, host) that its driver
rewrites every ``ttl_s / 4`` seconds from a daemon thread and deletes when it ends:

- a lease renewed within two renewal intervals (by the store's clock: the object's mtime, or
  the time its writer put in it when that is later) belongs to a live driver: the second driver is refused at once;
- one older than that has missed renewals (its driver was killed): the new driver waits until
  it renews (refused) or is ``ttl_s`` old (taken over); a lease left by a dead process of this
  host is taken at once;
- taking a lease is write, wait ``settle_s``, read back: of two drivers that start together the
  one whose write landed last keeps it and the other is refused (S3, GCS and Azure read back
  what was written last, strongly consistent). Drivers whose clocks are off by more than
  ``ttl_s`` from the store's (no NTP) may misjudge a lease's age.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs

__all__ = ["LEASE_FILE", "ObjectLease"]

LEASE_FILE = "repnas_sweep.lease"


class ObjectLease:
    """The sweep's lease object at ``uri``; ``acquire`` raises the error ``refuse`` builds."""

    def __init__(self, uri: str, ttl_s: float = 60.0, settle_s: float = 1.0) -> None:
        self.uri = uri
        self.ttl_s = ttl_s
        self.settle_s = settle_s
        self._resolved: tuple[pafs.FileSystem, str] | None = None  # on first use: from_uri may ask S3 for the region
        self._me = {"token": uuid.uuid4().hex, "pid": os.getpid(), "host": socket.gethostname()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _resolve(self) -> tuple[pafs.FileSystem, str]:
        if self._resolved is None:
            self._resolved = pafs.FileSystem.from_uri(self.uri)
        return self._resolved

    @property
    def interval_s(self) -> float:
        """Seconds between renewals."""
        return self.ttl_s / 4

    def _read(self) -> tuple[dict[str, Any], float] | None:
        """(holder, age in seconds by the store's mtime) or None when there is no lease."""
        fs, path = self._resolve()
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return None
        try:
            with fs.open_input_stream(path) as f:
                holder = dict(json.loads(f.read().decode("utf-8") or "{}"))
        except (OSError, ValueError):  # deleted between the two calls, or torn: no holder
            return None
        # the store's clock (whole seconds on S3), or the writer's when later: a lease never looks older than it is
        renewed = max(info.mtime.timestamp() if info.mtime is not None else 0.0, float(holder.get("renewed", 0.0)))
        return holder, max(0.0, time.time() - renewed)

    def _write(self) -> None:
        fs, path = self._resolve()
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(json.dumps({**self._me, "renewed": time.time(), "ttl_s": self.ttl_s}).encode("utf-8"))

    def _dead_here(self, holder: dict[str, Any]) -> bool:
        from .lock import pid_alive

        return holder.get("host") == self._me["host"] and not pid_alive(int(holder.get("pid", 0) or 0))

    def holder(self) -> dict[str, Any] | None:
        """The current holder (token, pid, host, renewed), or None."""
        read = self._read()
        return read[0] if read else None

    def acquire(self, refuse: Callable[[dict[str, Any], float], Exception]) -> None:
        """Take the lease, or raise ``refuse(holder, age)`` when another live driver holds it."""
        if self._thread is not None:
            return
        while True:
            read = self._read()
            if read is None:
                break
            holder, age = read
            if holder.get("token") == self._me["token"] or self._dead_here(holder) or age >= self.ttl_s:
                break
            if age < 2 * self.interval_s:
                raise refuse(holder, age)
            time.sleep(min(self.interval_s, self.ttl_s - age))  # missed renewals: expiring, or renewed
        self._write()
        time.sleep(self.settle_s)
        read = self._read()
        if read is None or read[0].get("token") != self._me["token"]:
            raise refuse(read[0] if read else {}, read[1] if read else 0.0)
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="repnas-sweep-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                holder = self.holder()
                if holder is not None and holder.get("token") != self._me["token"]:
                    print(f"repnas-sweep: warning: the sweep's lease {self.uri} was taken by pid {holder.get('pid')} "
                          f"on host {holder.get('host')}; two drivers may now run this sweep", file=sys.stderr)
                    return
                self._write()
            except OSError as err:  # the store is briefly unreachable: try again next interval
                print(f"repnas-sweep: warning: could not renew {self.uri}: {err}", file=sys.stderr)

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this driver's."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        try:
            holder = self.holder()
            if holder is not None and holder.get("token") == self._me["token"]:
                fs, path = self._resolve()
                fs.delete_file(path)
        except OSError:  # unreachable store: the lease expires after ttl_s
            pass
