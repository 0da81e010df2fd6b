"""Mid-epoch checkpoints of a Ray Tune trial, kept on the trial's storage beside Tune's own.

Tune takes a checkpoint only with a reported result (``tune.report``: one per epoch); an extra
report would add a result row and confuse schedulers. So a mid-epoch checkpoint (a preemption
notice, ``checkpoint.every_steps`` / ``every_seconds``) is copied straight into the trial's folder on
storage (``adapter.trial_storage()``: a local or shared folder, or ``s3://``, through pyarrow) as
``midepoch_<global step>/``: its files first and ``manifest.json`` last, so a torn upload has no
manifest and is never read; the older ones are deleted once it is complete. A restored trial
continues from the later of Tune's checkpoint and the mid-epoch one (:meth:`MidEpochStore.restore`). A
mid-epoch checkpoint of another epoch than the one after Tune's latest checkpoint is removed: an
older one is stale, and a newer one belongs to epochs whose results Tune never recorded (a driver
killed before it did), which would leave holes in Tune's one-result-per-epoch history.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError
from ..run.checkpoint import CHECKED_FILES, MANIFEST, META, verify_checkpoint
from ..run.restore import restore_checkpoint, stored_meta, stored_problem
from . import adapter

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    from ray.tune import Checkpoint

__all__ = ["MIDEPOCH_PREFIX", "MidEpochStore", "StoredMidEpoch"]

MIDEPOCH_PREFIX = "midepoch_"
"""Folder names of mid-epoch checkpoints in a trial's folder: ``midepoch_<global step, 10 digits>``."""
_FOLDER = re.compile(rf"{MIDEPOCH_PREFIX}(\d+)$")


@dataclass(frozen=True)
class StoredMidEpoch:
    """A mid-epoch checkpoint on storage: its path, the epochs done and the steps into the next."""

    path: str
    epoch: int
    steps: int

    def where(self) -> str:
        """``epoch E step S`` (E counted from 1, as the logs count epochs)."""
        return f"epoch {self.epoch + 1} step {self.steps}"


def _position(engine: dict[str, Any]) -> tuple[int, int]:
    """(epochs done, steps into the next) of a checkpoint's engine meta."""
    return int(engine["epoch"]), int(engine.get("epoch_progress", {}).get("steps", 0))


class MidEpochStore:
    """The ``midepoch_*`` folders of one trial's folder on a pyarrow filesystem."""

    def __init__(self, filesystem: pafs.FileSystem, trial_path: str) -> None:
        self.filesystem, self.trial_path = filesystem, trial_path.rstrip("/")
        self.last: StoredMidEpoch | None = None  # saved since Tune's latest checkpoint (None: nothing)

    @classmethod
    def of_trial(cls) -> MidEpochStore:
        """The running Tune trial's store."""
        path, filesystem = adapter.trial_storage()
        return cls(filesystem, path)

    def folders(self) -> list[tuple[int, str]]:
        """``(global step, path)`` of every mid-epoch folder, oldest first."""
        import pyarrow.fs as pafs

        infos = self.filesystem.get_file_info(pafs.FileSelector(self.trial_path, allow_not_found=True))
        return sorted((int(match.group(1)), info.path) for info in infos
                      if info.type == pafs.FileType.Directory and (match := _FOLDER.match(info.base_name)))

    def save(self, checkpoint: Path) -> StoredMidEpoch:
        """Copy the local checkpoint folder ``checkpoint`` to storage (manifest last), then delete
        the older mid-epoch folders."""
        engine = json.loads((Path(checkpoint) / META).read_text())["engine"]
        step = int(engine["step"])
        path = f"{self.trial_path}/{MIDEPOCH_PREFIX}{step:010d}"
        self._remove(path)
        self.filesystem.create_dir(path)
        for name in (*CHECKED_FILES, MANIFEST):
            with open(Path(checkpoint) / name, "rb") as source, self.filesystem.open_output_stream(f"{path}/{name}") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        for number, older in self.folders():
            if number != step:
                self._remove(older)
        self.last = StoredMidEpoch(path, *_position(engine))
        return self.last

    def clear(self) -> None:
        """Delete every mid-epoch folder (a finished trial needs none)."""
        for _, path in self.folders():
            self._remove(path)

    def _remove(self, path: str) -> None:
        import pyarrow.fs as pafs

        if self.filesystem.get_file_info(path).type != pafs.FileType.NotFound:
            self.filesystem.delete_dir(path)

    def _usable(self, path: str, epoch: int, step: int) -> StoredMidEpoch | None:
        """The folder at ``path`` if it is intact and continues epoch ``epoch + 1`` beyond global step ``step``."""
        if stored_problem(self.filesystem, path) is not None:
            return None
        try:
            engine = stored_meta(self.filesystem, path)["engine"]
        except (OSError, ValueError, KeyError):
            return None
        found = StoredMidEpoch(path, *_position(engine))
        return found if found.epoch == epoch and int(engine["step"]) > step else None

    def restore(self, checkpoint: Checkpoint | None, into: Path) -> Path | None:
        """Download the checkpoint a restored trial continues from into a folder under ``into``: the
        mid-epoch one when it continues the epoch after Tune's ``checkpoint`` (or the first epoch,
        without one), else Tune's (``restore_checkpoint``: an older one if that is corrupt). Every
        other mid-epoch folder is removed. None: a fresh start."""
        from ray.tune import Checkpoint

        resumed = restore_checkpoint(checkpoint, into / "tune")
        engine = json.loads((resumed / META).read_text())["engine"] if resumed is not None else {"epoch": 0, "step": 0}
        chosen = resumed
        for _, path in reversed(self.folders()):
            found = self._usable(path, int(engine["epoch"]), int(engine["step"])) if chosen is resumed else None
            if found is not None:
                shutil.rmtree(into / "midepoch", ignore_errors=True)
                local = Path(Checkpoint(path, filesystem=self.filesystem).to_directory(str(into / "midepoch")))
                try:
                    verify_checkpoint(local)
                except CheckpointError as err:
                    print(f"skipping corrupt mid-epoch checkpoint {path} ({err})", file=sys.stderr)
                else:
                    print(f"trial continues from its mid-epoch checkpoint at {found.where()} ({path})", file=sys.stderr)
                    chosen = local
                    continue
            self._remove(path)
        return chosen
