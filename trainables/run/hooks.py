"""TrialHook: how a caller (MLflow tracking, custom logging) observes a trial.

``trainables`` never imports MLflow; the orchestrator passes hooks into the trial.
Hooks must be picklable (Ray ships them to workers) and keep only JSON-serialisable
state, which is saved in every checkpoint and restored on resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config.repeat import Repeat
    from ..config.sections import TrialConfig

__all__ = ["TrialHook"]


class TrialHook:
    """Base class with no-op methods; override what you need."""

    def on_start(self, config: TrialConfig, trial_name: str, resumed: bool) -> None:
        """Called once before the first (or first resumed) epoch."""

    def on_epoch(self, metrics: dict[str, float], epoch: int) -> None:
        """Called after every epoch with the flat metrics that are also reported."""

    def on_end(self, metrics: dict[str, float], export_dir: Path) -> None:
        """Called after the export with the final metrics and the export folder."""

    def on_repeat(self, metrics: dict[str, float], repeat: Repeat) -> None:
        """Called after ``on_start`` instead of any training when the trial repeats an earlier
        one's configuration: ``metrics`` are that trial's last ones (its result, reported as
        this trial's)."""

    def on_error(self, error: BaseException) -> None:
        """Called when the trial fails, before the error propagates."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state saved in each checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
