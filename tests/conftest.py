"""Shared test root: puts ``tests/`` on ``sys.path`` so suites can import ``_servers``, and
keeps one test's ``MLFLOW_TRACKING_URI`` from reaching the next."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _tracking_uri_unchanged() -> Iterator[None]:
    """``load_sweep`` lets ``MLFLOW_TRACKING_URI`` override a sweep file's store, so a value a
    test leaves behind would send every later test to that test's (stopped) server."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
