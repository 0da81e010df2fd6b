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
import os
import sqlite3
from pathlib import Path
from typing import Any

from ..sweep.lock import pid_alive
from .. import mlflow_adapter

__all__ = ["use_wal", "create_database"]


_WAL_FILES: set[str] = set()  # the MLflow stores of this process (real paths)


def _wal(connection: Any, _record: Any) -> None:
    """SQLAlchemy's connect hook: WAL for connections to a registered MLflow store, nothing else."""
    if not isinstance(connection, sqlite3.Connection):
        return
    try:
        files = {os.path.realpath(row[2]) for row in connection.execute("PRAGMA database_list") if row[1] == "main"}
        if not files & _WAL_FILES:
            return  # another program's database (Optuna's, a user's): left as it is
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error:  # a read-only or locked file keeps its mode: MLflow works as before
        pass


@functools.cache
def _listen() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "connect", _wal)


def use_wal(path: Path) -> None:
    """From now on in this process, new SQLAlchemy connections to the MLflow store at ``path``
    use WAL; connections to any other SQLite database are untouched."""
    _WAL_FILES.add(os.path.realpath(path))
    _listen()


def create_database(path: Path) -> None:
    """Create MLflow's database at ``path`` whole or not at all (nothing to do if it exists).

    MLflow creates a SQLite store in place through ~60 schema migrations, and SQLite runs each
    ``ALTER TABLE`` outside the migration's transaction: a driver killed in those seconds left
    a half-migrated file that every later open fails on ("duplicate column name"). Here the
    migrations run on a private file beside it, which is then linked into place; a link never
    replaces a database another driver made meanwhile. Leftovers of killed drivers are removed.
    """
    if path.exists():
        return
    for stale in path.parent.glob(f".{path.name}.creating-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and pid_alive(int(pid))):
            stale.unlink(missing_ok=True)
    private = path.with_name(f".{path.name}.creating-{os.getpid()}")
    try:
        # the store MlflowClient would make (same default artifact root), on the private file
        use_wal(private)
        mlflow_adapter.create_sql_store(f"sqlite:///{private}")  # connections closed: the log is folded in
        try:
            os.link(private, path)
        except FileExistsError:
            pass
    finally:
        for leftover in (private, private.with_name(private.name + "-wal"), private.with_name(private.name + "-shm")):
            leftover.unlink(missing_ok=True)

