"""A driver killed while MLflow creates its SQLite database leaves no database or a whole one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.tracking.sqlite import create_database

pytestmark = pytest.mark.reliability

_CREATE = """
import sys
from pathlib import Path
from orchestrator.tracking.sqlite import create_database, use_wal
use_wal(Path(sys.argv[1]))
import mlflow.tracking._tracking_service.utils  # imported before the signal: the kill lands in creation
print("go", flush=True)
create_database(Path(sys.argv[1]))
"""


@pytest.mark.parametrize("delay", [round(0.1 * i, 1) for i in range(13)])  # creation takes ~1.1 s
def test_a_kill_during_creation_leaves_no_database_or_a_whole_one(tmp_path: Path, delay: float) -> None:
    """Killed in MLflow's ~60 migrations, an in-place creation left a file every later open failed
    on ("duplicate column name"): 2 of these 13 instants on a 2-CPU machine before the fix."""
    db = tmp_path / "mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", _CREATE, str(db)], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
    time.sleep(delay)
    proc.kill()
    proc.wait(timeout=30)
    if db.exists():  # published only once complete: it opens without a migration
        assert MlflowClient(f"sqlite:///{db}").search_experiments()
    create_database(db)  # the next driver: removes the dead driver's private file, creates or keeps
    assert [e.name for e in MlflowClient(f"sqlite:///{db}").search_experiments()] == ["Default"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".mlflow.db")) == []


def test_wal_is_set_on_the_mlflow_store_only(tmp_path: Path) -> None:
    """The connect hook acts on the MLflow stores this process registered, never on another SQLite
    database opened through SQLAlchemy in the same process (Optuna's storage, a user's)."""
    from sqlalchemy import create_engine, text

    from orchestrator.tracking.sqlite import use_wal

    store, other = tmp_path / "mlflow.db", tmp_path / "optuna.db"
    use_wal(store)
    modes = {}
    for path in (store, other):
        engine = create_engine(f"sqlite:///{path}")
        with engine.connect() as connection:
            modes[path.name] = connection.execute(text("PRAGMA journal_mode")).scalar()
        engine.dispose()
    assert modes == {"mlflow.db": "wal", "optuna.db": "delete"}
