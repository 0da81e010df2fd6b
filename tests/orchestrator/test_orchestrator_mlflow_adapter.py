"""MLflow's internals the project uses (``orchestrator.tracking.mlflow_adapter``), each checked
against the installed MLflow (fast, no server): one of these fails when an MLflow upgrade moves
what it uses."""

from __future__ import annotations

import importlib
import sqlite3
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from orchestrator import mlflow_adapter


def test_the_installed_mlflow_is_in_the_tested_range() -> None:
    assert version("mlflow") in SpecifierSet(mlflow_adapter.TESTED), "run the version matrix and update TESTED"


@pytest.mark.parametrize("name", sorted(mlflow_adapter.QUIET_LOGGERS))
def test_quiet_loggers_name_modules_that_exist(name: str) -> None:
    assert importlib.import_module(name).__name__ == name


def test_create_sql_store_makes_a_whole_database_and_lets_go_of_it(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    mlflow_adapter.create_sql_store(f"sqlite:///{db}")
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        head = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"experiments", "runs", "metrics", "params", "registered_models"} <= tables and head
    db.rename(tmp_path / "moved.db")  # nothing holds it open
    from mlflow.tracking import MlflowClient

    assert MlflowClient(f"sqlite:///{tmp_path / 'moved.db'}").get_experiment("0").name == "Default"


def test_suppressed_event_logs_silence_mlflow_event_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.utils.logging_utils import eprint

    with mlflow_adapter.suppressed_event_logs():
        eprint("hidden event line")
    eprint("shown event line")
    err = capsys.readouterr().err
    assert "hidden event line" not in err and "shown event line" in err


def test_an_untested_version_gets_one_warning_line_naming_the_range(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.console import warn_untested_versions
    from orchestrator.ray_tune import adapter as ray_adapter

    assert warn_untested_versions("repnas-sweep") == []  # the installed versions are the tested ones
    monkeypatch.setattr(ray_adapter, "TESTED", ">=9.0,<9.1")
    lines = warn_untested_versions("repnas-sweep")
    assert lines == [f"repnas-sweep: warning: ray {version('ray')} is untested here; this project is tested with "
                     f'ray>=9.0,<9.1 (README, "Supported versions")']
    assert capsys.readouterr().err.splitlines() == lines


@pytest.mark.parametrize("serialization", ["pt2", "pickle"])
def test_pytorch_log_kwargs_log_a_model_that_loads_back(serialization: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Both formats log on the installed MLflow (3.9 passed the check's keyword on to torch.save
    in its pickle format), load back to the same outputs, and skip MLflow's reload-and-predict
    of the input example where they say so (counted through the function MLflow calls)."""
    import mlflow
    import mlflow.models.utils
    import numpy as np
    import torch

    calls: list[int] = []
    # what Model.log calls to reload and predict: a private function from MLflow 3.1x, public in 3.9
    owner, attr = ((mlflow.models.utils, "_validate_serving_input") if hasattr(mlflow.models.utils, "_validate_serving_input")
                   else (mlflow.models, "validate_serving_input"))
    real = getattr(owner, attr)
    monkeypatch.setattr(owner, attr, lambda *a, **k: calls.append(1) or real(*a, **k))
    from orchestrator.tracking.parent_run import fluent_tracking_uri

    model = torch.nn.Linear(3, 2).eval()
    example = np.zeros((2, 3), dtype=np.float32)
    kwargs = mlflow_adapter.pytorch_log_kwargs(serialization)  # type: ignore[arg-type]
    with fluent_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}"), mlflow.start_run():
        mlflow.pytorch.log_model(torch.nn.Linear(3, 2), name="checked", input_example=example, pip_requirements=[])
        assert len(calls) == 1
        info = mlflow.pytorch.log_model(model, name="logged", input_example=example, pip_requirements=[], **kwargs)
        back = mlflow.pytorch.load_model(info.model_uri)
    assert len(calls) == (1 if kwargs.get("validate_serving_input") is False else 2)
    x = torch.randn(4, 3)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_tracking_uri_for_block_sets_and_restores_mlflows_uri(tmp_path: Path) -> None:
    import mlflow

    before = mlflow.get_tracking_uri()
    with mlflow_adapter.tracking_uri_for_block(f"sqlite:///{tmp_path / 'b.db'}"):
        assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'b.db'}"
    assert mlflow.get_tracking_uri() == before
