"""Is the MLflow tracking store usable? Checked before Ray starts, in seconds not minutes.

An HTTP server must answer ``/health``; a ``sqlite:///`` database must be writable (or
creatable in an existing, writable directory). The message names the (redacted) URI.
"""

from __future__ import annotations

import base64
import sqlite3
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..redact import redact
from ..sweep.tracking_uri import sqlite_file

__all__ = ["check_tracking"]


def _check_http(uri: str, timeout: float) -> str | None:
    parts = urllib.parse.urlsplit(uri)
    request = urllib.request.Request(
        urllib.parse.urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""),
                                               path=parts.path.rstrip("/") + "/health")))
    if parts.username:  # credentials in the URI: basic auth, never in the URL urllib sees
        token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except (urllib.error.URLError, OSError) as err:
        return f"MLflow tracking server {redact(uri)} is unreachable ({getattr(err, 'reason', err)})"


def _check_sqlite(uri: str, path: Path) -> str | None:
    where = f"MLflow tracking database {redact(uri)}"
    try:
        if path.exists():
            with sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5) as db:
                db.execute("BEGIN IMMEDIATE")
                db.rollback()
            return None
        if not path.parent.is_dir():
            return f"{where}: directory {path.parent} does not exist"
        with tempfile.TemporaryFile(dir=path.parent):
            return None
    except (OSError, sqlite3.Error) as err:
        return f"{where} is not writable ({err})"


def check_tracking(uri: str, timeout: float = 8.0) -> str | None:
    """Why the tracking store at ``uri`` cannot be used (None when fine or not checkable)."""
    if uri.startswith(("http://", "https://")):
        return _check_http(uri, timeout)
    db = sqlite_file(uri)
    return None if db is None else _check_sqlite(uri, db)
