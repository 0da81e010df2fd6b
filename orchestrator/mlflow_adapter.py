"""Every use of MLflow's internals in one place: private functions and logger names MLflow
does not promise to keep.

The rest of the project calls these instead of reaching into MLflow, so an MLflow upgrade
that moves one of them breaks here, and a fast test says which
(``tests/orchestrator/test_orchestrator_mlflow_adapter.py``). ``TESTED`` is the MLflow range the project is tested with (``pyproject.toml``
declares the same bounds; README, "Supported versions").
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

__all__ = ["TESTED", "QUIET_LOGGERS", "pytorch_log_kwargs", "create_sql_store", "suppressed_event_logs",
           "tracking_uri_for_block"]

TESTED = ">=3.9,<3.18"
"""The MLflow versions this project is tested with (a PEP 440 specifier; pyproject.toml's bounds).
MLflow before 3.9 cannot open a SQL store next to SQLAlchemy 2.1, which pip installs with it
(``ImportError: FallbackAsyncAdaptedQueuePool``)."""

QUIET_LOGGERS: Mapping[str, tuple[str, int]] = {
    "mlflow.store.db.utils": ("driver", logging.WARNING),  # "Creating initial MLflow database tables..."
    "alembic.runtime.migration": ("driver", logging.WARNING),  # "Running upgrade ..." per migration (MLflow 3.9)
}
"""MLflow's loggers of notices that need no action: where they print and the level below which
a quiet sweep hides them."""


def pytorch_log_kwargs(serialization: Literal["pt2", "pickle"] = "pt2") -> dict[str, Any]:
    """``mlflow.pytorch.log_model`` keywords that save a model as ``serialization`` (pt2:
    ``torch.export``; pickle: the fallback for graphs it cannot export) on the installed MLflow,
    skipping MLflow's reload-and-predict check of the input example (``validate_serving_input``,
    read by ``Model.log``, undocumented: the trial already checked its fused model).

    Every tested MLflow hands unknown keywords on to ``torch.save`` in the pickle format
    (``save() got an unexpected keyword argument 'validate_serving_input'``), so the pickle
    fallback keeps the check. MLflows whose ``log_model`` has no ``serialization_format`` (3.9
    among those tested) choose the format with ``export_model`` and default to pickle."""
    import mlflow.pytorch

    if serialization == "pickle":
        return {}  # every tested MLflow's default without export_model / serialization_format
    params = inspect.signature(mlflow.pytorch.log_model).parameters
    if "serialization_format" in params:
        return {"serialization_format": "pt2", "validate_serving_input": False}
    return {"export_model": True, "validate_serving_input": False}


def create_sql_store(uri: str) -> None:
    """Create (migrate) the SQL tracking store at ``uri`` as ``MlflowClient`` would, with the
    same default artifact root, and close its connections."""
    from mlflow.tracking._tracking_service.utils import _get_sqlalchemy_store

    _get_sqlalchemy_store(uri, None).engine.dispose()


@contextmanager
def suppressed_event_logs() -> Iterator[None]:
    """MLflow's ``print``-style event lines ("Successfully registered", "Created version") off
    for the block; errors still raise."""
    from mlflow.utils.logging_utils import disable_logging, enable_logging

    disable_logging()
    try:
        yield
    finally:
        enable_logging()


@contextmanager
def tracking_uri_for_block(uri: str) -> Iterator[None]:
    """MLflow's fluent tracking URI set to ``uri`` for the block, then back to what it was (None:
    unset, so ``MLFLOW_TRACKING_URI`` or MLflow's default decides again). ``mlflow.set_tracking_uri``
    alone keeps it for the rest of the process."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri):
        yield
