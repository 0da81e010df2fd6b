"""Tracking URIs: which kinds the sweep accepts, and the database file of a ``sqlite:///`` one."""

from __future__ import annotations

from pathlib import Path

from trainables.errors import ConfigError

__all__ = ["sqlite_path", "sqlite_file", "resolve_tracking_uri"]

_URI_SCHEMES = ("http", "https", "file", "databricks", "postgresql", "mysql", "mssql")
_SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> str | None:
    """The database path of a ``sqlite:///PATH[?query]`` tracking URI; None for any other URI."""
    return uri[len(_SQLITE):].split("?", 1)[0] if uri.startswith(_SQLITE) else None


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for other URIs and ``:memory:``."""
    db = sqlite_path(uri)
    return None if db in (None, "", ":memory:") else Path(db)


def resolve_tracking_uri(uri: str, path: str) -> str:
    """``uri`` with a relative sqlite path made absolute (trials run in other working
    directories); ``ConfigError`` at ``path`` for a URI MLflow cannot track to."""
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    if scheme == "sqlite":
        db = sqlite_path(uri)
        if not db:
            raise ConfigError(path, f"expected sqlite:///path/to/file.db, got {uri!r}")
        query = uri[len(_SQLITE) + len(db):]
        return uri if db.startswith("/") else _SQLITE + str(Path(db).expanduser().resolve()) + query
    if scheme.split("+")[0] in _URI_SCHEMES:
        return uri
    raise ConfigError(path, f"expected a tracking URI such as sqlite:///mlflow.db or http://127.0.0.1:5000, "
                            f"got {uri!r}")
