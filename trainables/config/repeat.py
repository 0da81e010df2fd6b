"""A repeated trial: a proposal equal to an earlier trial's configuration, which is not trained
again; its result is the earlier trial's.

The sweep's searcher (``orchestrator.ray_tune.repeats``) puts a :class:`Repeat` into the
trial's Ray config under :data:`REPEAT_KEY`; the trainable then reports the earlier result
and tells its hooks (``TrialHook.on_repeat``) instead of training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["REPEAT_KEY", "Repeat"]

REPEAT_KEY = "_repeat_of"
"""Key of a repeat trial's Ray config holding its :class:`Repeat` (as a dict)."""


@dataclass(frozen=True)
class Repeat:
    """The earlier trial a repeat reuses: its name, its last result's metrics and, for a trial
    of an earlier sweep (a warm start), that sweep's name and the trial's MLflow run."""

    trial: str
    metrics: dict[str, float] = field(default_factory=dict)
    sweep: str | None = None
    run_id: str | None = None

    @property
    def label(self) -> str:
        """``trial`` for a trial of this sweep, ``sweep/trial`` for an earlier sweep's."""
        return f"{self.sweep}/{self.trial}" if self.sweep else self.trial

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a Ray config (what :meth:`from_dict` reads)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Repeat:
        """The repeat a Ray config carries."""
        return cls(str(data["trial"]), {k: float(v) for k, v in dict(data.get("metrics", {})).items()},
                   data.get("sweep"), data.get("run_id"))
