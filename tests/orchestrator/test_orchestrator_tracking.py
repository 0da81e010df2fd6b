"""MLflow client state the driver sets must not leak past the call that needed it."""

from __future__ import annotations

import os

import mlflow
import pytest

from orchestrator.tracking.parent_run import fluent_tracking_uri


@pytest.mark.parametrize("before", [None, "http://127.0.0.1:5999"])
def test_fluent_tracking_uri_restores_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path, before) -> None:
    """``mlflow.set_tracking_uri`` writes MLFLOW_TRACKING_URI, which the next ``load_sweep`` in the
    same process would take over the sweep file's ``mlflow.tracking_uri``."""
    if before is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", before)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with fluent_tracking_uri(uri):
        assert mlflow.get_tracking_uri() == uri
    assert os.environ.get("MLFLOW_TRACKING_URI") == before


def test_fluent_tracking_uri_restores_mlflows_own_setting(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A library user's ``mlflow.set_tracking_uri`` before a sweep is what their own MLflow calls
    use after it (and with none set, MLflow's default decides again)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = mlflow.get_tracking_uri()
    mine = f"sqlite:///{tmp_path / 'mine.db'}"
    with fluent_tracking_uri(f"sqlite:///{tmp_path / 'sweep.db'}"):
        pass
    assert mlflow.get_tracking_uri() == default and "MLFLOW_TRACKING_URI" not in os.environ
    try:
        mlflow.set_tracking_uri(mine)
        with fluent_tracking_uri(f"sqlite:///{tmp_path / 'sweep.db'}"):
            assert mlflow.get_tracking_uri() != mine
        assert mlflow.get_tracking_uri() == mine
    finally:
        mlflow.set_tracking_uri(None)  # MLflow's documented reset: unset, its default again
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
