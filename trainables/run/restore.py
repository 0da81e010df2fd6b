"""Pick the checkpoint a restored Tune trial continues from, skipping corrupt ones.

Ray hands a restored trial its latest checkpoint (``tune.get_checkpoint()``). When that
one is truncated or corrupt (a half-copied upload, a full disk), the trial falls back to
the newest older checkpoint Ray still keeps next to it (``checkpoint_<n>`` folders of
the same trial; ``checkpoint.num_to_keep >= 2``), reporting every skipped path. It never
silently starts from scratch: with no good checkpoint left it raises ``CheckpointError``.

``stored_checkpoints`` and ``stored_problem`` look at a trial's checkpoints where they
are stored (any pyarrow filesystem, without downloading tensors); the driver uses them to
repair what ``Tuner.restore`` is given (``orchestrator.ray_tune.repair``).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError
from .checkpoint import CHECKED_FILES, MANIFEST, META, verify_checkpoint

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    from ray.tune import Checkpoint

__all__ = ["restore_checkpoint", "older_checkpoints", "stored_checkpoints", "stored_problem", "stored_meta",
           "stored_history", "checkpoint_number"]

_NUMBERED = re.compile(r"checkpoint_(\d+)$")


def checkpoint_number(path: str) -> int | None:
    """``n`` of a ``.../checkpoint_<n>`` path (None for any other name)."""
    match = _NUMBERED.match(path.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def stored_checkpoints(fs: pafs.FileSystem, trial_path: str) -> list[tuple[int, str]]:
    """``(n, path)`` of every ``checkpoint_<n>`` folder in a trial folder, oldest first."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(trial_path.rstrip("/"), allow_not_found=True))
    found = [(number, info.path) for info in infos if info.type == pafs.FileType.Directory
             and (number := checkpoint_number(info.base_name)) is not None]
    return sorted(found)


def stored_problem(fs: pafs.FileSystem, path: str) -> str | None:
    """Why the stored checkpoint folder ``path`` cannot be used (None when it looks intact).

    Checks that it exists, that its manifest parses and that every file has the recorded
    size; the SHA-256 is checked by the trial when it loads the checkpoint.
    """
    import pyarrow.fs as pafs

    try:
        with fs.open_input_stream(f"{path}/{MANIFEST}") as f:
            manifest = json.loads(f.read().decode("utf-8"))
        sizes = {name: fs.get_file_info(f"{path}/{name}") for name in CHECKED_FILES}
    except (OSError, ValueError) as err:
        return f"no readable {MANIFEST} ({type(err).__name__})"
    for name, info in sizes.items():
        if info.type != pafs.FileType.File:
            return f"{name} is missing"
        if info.size != manifest.get(name, {}).get("bytes"):
            return f"{name} is truncated ({info.size} bytes, expected {manifest.get(name, {}).get('bytes')})"
    return None


def stored_meta(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    """What ``run_trial`` saved beside a stored checkpoint's tensors: its config, per-epoch
    metrics (``history``), hook states and trial name."""
    with fs.open_input_stream(f"{path}/{META}") as f:
        return dict(json.loads(f.read().decode("utf-8")))


def stored_history(fs: pafs.FileSystem, path: str) -> list[dict[str, Any]]:
    """The per-epoch metrics a stored checkpoint holds (what ``run_trial`` saved in its meta)."""
    return list(stored_meta(fs, path).get("history", []))


def older_checkpoints(checkpoint: Checkpoint) -> Iterator[Checkpoint]:
    """Sibling ``checkpoint_<n>`` folders numbered below ``checkpoint``'s, newest first."""
    from ray.tune import Checkpoint

    number = checkpoint_number(checkpoint.path)
    if number is None:
        return
    parent = checkpoint.path.rstrip("/").rsplit("/", 1)[0]
    for n, path in reversed(stored_checkpoints(checkpoint.filesystem, parent)):
        if n < number:
            yield Checkpoint(path, filesystem=checkpoint.filesystem)


def restore_checkpoint(checkpoint: Checkpoint | None, into: Path) -> Path | None:
    """Download the newest good checkpoint (``checkpoint`` first, then older ones) into ``into``.

    Returns None for a trial without a checkpoint (a fresh start).
    """
    if checkpoint is None:
        return None
    problems: list[str] = []
    for candidate in (checkpoint, *older_checkpoints(checkpoint)):
        shutil.rmtree(into, ignore_errors=True)
        local = Path(candidate.to_directory(str(into)))
        try:
            verify_checkpoint(local)
        except CheckpointError as err:
            problems.append(f"{candidate.path}: {err}")
            print(f"skipping corrupt checkpoint {candidate.path} ({err}); trying the previous one", file=sys.stderr)
            continue
        if problems:
            print(f"trial continues from the older checkpoint {candidate.path}", file=sys.stderr)
        return local
    raise CheckpointError("no readable checkpoint left for this trial: " + "; ".join(problems)
                          + ". Delete the trial's folder to restart it from scratch.")
