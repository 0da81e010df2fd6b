"""Atomic checkpoint folders: tensors in ``state.pt``, everything else in ``state.json``.

A checkpoint is written into a temporary sibling folder and swapped into place by
renames, so a crash leaves either the old or the new checkpoint, never a mix.
``manifest.json`` records each file's size and SHA-256; loading checks them and raises
``CheckpointError`` naming the path for a truncated or corrupt checkpoint. Tensors are
read with ``torch.load(weights_only=True)``: no pickled code is executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "verify_checkpoint", "is_checkpoint",
           "MANIFEST", "META", "CHECKED_FILES"]

_TENSORS, _META, _MANIFEST = "state.pt", "state.json", "manifest.json"
MANIFEST, META, CHECKED_FILES = _MANIFEST, _META, (_TENSORS, _META)
"""The manifest's and the JSON meta's file names, and the files whose size and SHA-256 it records."""


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    directory: Path,
    tensors: Mapping[str, Any],
    meta: Mapping[str, Any],
    extra: Mapping[str, Path] | None = None,
    durable: bool = True,
) -> Path:
    """Atomically write a checkpoint folder at ``directory`` (replacing any previous one).

    ``extra`` maps names to folders copied into the checkpoint (e.g. ``export``). ``durable``
    fsyncs the files and the parent folder, so the checkpoint also survives an OS crash; a
    caller that copies the folder to its storage right away (Ray) can skip that.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    old = directory.parent / f".{directory.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(dict(tensors), tmp / _TENSORS)
    (tmp / _META).write_text(json.dumps(meta, indent=1, sort_keys=True))
    for name, source in (extra or {}).items():
        shutil.copytree(source, tmp / name)
    files = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _digest(tmp / name)} for name in (_TENSORS, _META)}
    (tmp / _MANIFEST).write_text(json.dumps(files, indent=1))
    if durable:
        for name in (_TENSORS, _META, _MANIFEST):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.rename(directory, old)
    os.rename(tmp, directory)
    if durable:
        _fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def _resolve(directory: Path) -> Path:
    """The checkpoint folder, or the previous one if a crash hit between the two renames."""
    if (directory / _MANIFEST).is_file():
        return directory
    old = directory.parent / f".{directory.name}.old"
    if not directory.exists() and (old / _MANIFEST).is_file():
        return old
    raise CheckpointError(f"no checkpoint at {directory} (expected {_MANIFEST}, {_TENSORS} and {_META})")


def is_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` (or its crash-recovery sibling) holds a checkpoint."""
    try:
        _resolve(Path(directory))
    except CheckpointError:
        return False
    return True


def verify_checkpoint(directory: Path) -> Path:
    """The checkpoint folder after checking every file's size and SHA-256 against the manifest.

    Raises ``CheckpointError`` naming the missing, truncated or corrupt file.
    """
    path = _resolve(Path(directory))
    try:
        manifest = json.loads((path / _MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"corrupt checkpoint manifest {path / _MANIFEST}: {err}") from None
    for name in (_TENSORS, _META):
        file = path / name
        expected = manifest.get(name, {})
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing")
        size = file.stat().st_size
        if size != expected.get("bytes") or _digest(file) != expected.get("sha256"):
            raise CheckpointError(f"checkpoint file {file} is truncated or corrupt ({size} bytes, expected {expected.get('bytes')}); delete it or resume from an earlier checkpoint")
    return path


def load_checkpoint(directory: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """Read ``(tensors, meta)`` back, verifying sizes and checksums first."""
    path = verify_checkpoint(directory)
    try:
        tensors = torch.load(path / _TENSORS, map_location=map_location, weights_only=True)
        meta = json.loads((path / _META).read_text())
    except Exception as err:  # noqa: BLE001 - any unpickling/JSON failure means a bad file
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
    return tensors, meta
