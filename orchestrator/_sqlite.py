"""``sqlite:///`` tracking stores in write-ahead-log mode.

MLflow opens a SQLite store with SQLite's defaults (rollback journal, ``synchronous=FULL``):
every commit waits for several fsyncs, so a new database (MLflow creates it through ~60
schema migrations) takes seconds and every logged batch tens of milliseconds. In WAL mode
with ``synchronous=NORMAL`` a commit still survives its process being killed at any instant
(the next opener replays the log); only a power cut or an OS crash can drop the last commits,
never corrupt the file, and ``orchestrator.sync`` refills MLflow from Ray's results. WAL
needs every writer on one host, as a SQLite store does anyway (docs/cluster.md). The mode is
kept in the file: ``mlflow ui`` and later sweeps open it as it is.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

__all__ = ["use_wal"]


def _wal(connection: Any, _record: Any) -> None:
    if not isinstance(connection, sqlite3.Connection):
        return
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error:  # a read-only or locked file keeps its mode: MLflow works as before
        pass


@functools.cache
def use_wal() -> None:
    """From now on in this process, every new SQLAlchemy connection to a SQLite file uses WAL."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "connect", _wal)
