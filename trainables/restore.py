"""Pick the checkpoint a restored Tune trial continues from, skipping corrupt ones.

Ray hands a restored trial its latest checkpoint (``tune.get_checkpoint()``). When that
one is truncated or corrupt (a half-copied upload, a full disk), the trial falls back to
the newest older checkpoint Ray still keeps next to it (``checkpoint_<n>`` folders of
the same trial; ``checkpoint.num_to_keep >= 2``), reporting every skipped path. It never
silently starts from scratch: with no good checkpoint left it raises ``CheckpointError``.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import CheckpointError, verify_checkpoint

if TYPE_CHECKING:
    from ray.tune import Checkpoint

__all__ = ["restore_checkpoint", "older_checkpoints"]

_NUMBERED = re.compile(r"checkpoint_(\d+)$")


def older_checkpoints(checkpoint: Checkpoint) -> Iterator[Checkpoint]:
    """Sibling ``checkpoint_<n>`` folders numbered below ``checkpoint``'s, newest first."""
    import pyarrow.fs as pafs
    from ray.tune import Checkpoint

    parent, name = checkpoint.path.rstrip("/").rsplit("/", 1)
    match = _NUMBERED.match(name)
    if match is None:
        return
    infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    numbered = [(int(m.group(1)), info.path) for info in infos
                if info.type == pafs.FileType.Directory and (m := _NUMBERED.match(info.base_name))]
    for number, path in sorted(numbered, reverse=True):
        if number < int(match.group(1)):
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
