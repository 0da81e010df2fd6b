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
