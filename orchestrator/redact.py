"""Keep credentials out of logs, MLflow params and files the sweep writes.

A tracking URI may carry ``user:password@``; config keys may hold tokens. Everything the
orchestrator prints or logs goes through :func:`redact`, and
params skip keys that look secret (:func:`is_secret_key`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["redact", "error_line", "is_secret_key", "public_items", "REDACTED"]

REDACTED = "***"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")
_SECRET = re.compile(r"token|secret|passw(or)?d|passwd|credential|api[_-]?key|private[_-]?key", re.IGNORECASE)
_QUERY_SECRET = re.compile(r"(?P<key>[?&][^=&\s]*(?:token|secret|passw(?:or)?d|key|sig)[^=&\s]*=)[^&\s'\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """Every URI's user info and secret-looking query value in ``text`` replaced by ``***``
    (``https://user:pw@host/?token=x`` -> ``https://***@host/?token=***``)."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group('key')}{REDACTED}", text)


def error_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type name when it has none), redacted: what a
    one-line report of a failure shows."""
    text = str(error).strip()
    return redact(text.splitlines()[0] if text else type(error).__name__)


def is_secret_key(key: str) -> bool:
    """Whether a (dotted) config key names a secret: token, secret, password, api_key, ..."""
    return bool(_SECRET.search(key))


def public_items(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A flat mapping without secret keys, string values redacted (what may become params)."""
    return {k: redact(v) if isinstance(v, str) else v for k, v in flat.items() if not is_secret_key(k)}
