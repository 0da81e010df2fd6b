"""Tiny file access for the sweep's storage dir: local paths and URIs (s3://, gs://, ...)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

__all__ = ["exists", "any_file", "read_text", "write_text"]


def _resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri)


def exists(uri: str) -> bool:
    """Whether a file or directory exists at ``uri``."""
    fs, path = _resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def any_file(uri: str, prefix: str, suffix: str = "") -> bool:
    """Whether the directory ``uri`` holds a file whose name starts with ``prefix`` (and ends with ``suffix``)."""
    fs, path = _resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return any(i.type == pafs.FileType.File and i.base_name.startswith(prefix) and i.base_name.endswith(suffix)
               for i in infos)


def read_text(uri: str) -> str | None:
    """The file's text, or None when it does not exist."""
    fs, path = _resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def write_text(uri: str, text: str) -> None:
    """Write ``text`` (atomically for local files: temp file + rename)."""
    fs, path = _resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
        return
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))
