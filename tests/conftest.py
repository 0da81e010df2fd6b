"""Shared test root: puts ``tests/`` on ``sys.path`` so suites can import ``_servers``, keeps one
test's ``MLFLOW_TRACKING_URI`` from reaching the next, and serves S3 on 127.0.0.1 (``s3``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from _servers import S3Server


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


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """An S3 server on 127.0.0.1 (moto) with a bucket; its endpoint and credentials are in this
    process's environment meanwhile (pyarrow, Ray and subprocesses read ``AWS_*``)."""
    server = S3Server()
    server.start()
    before = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield server
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()
