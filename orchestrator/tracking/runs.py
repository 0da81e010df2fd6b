"""The sweep's MLflow child runs read back as :class:`~orchestrator.records.TrialRecord` s (what
``python -m orchestrator.report`` compares; the same records the summary builds from Ray)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..records import TrialRecord, make_record, status_from_mlflow
from .parent_run import TAG_ERROR, TAG_MODEL_URI, TAG_REPEAT_OF, TAG_STOPPED, TAG_TRIAL_ID, child_runs

if TYPE_CHECKING:
    from ..sweep import SweepConfig
    from .parent_run import SweepState

__all__ = ["records_from_mlflow", "typed"]


def typed(value: str) -> Any:
    """An MLflow param (``str`` of a config value, see ``parent_run.mlflow_params``) back to the value."""
    import yaml

    if value == "None":
        return None
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def records_from_mlflow(cfg: SweepConfig, state: SweepState) -> list[TrialRecord]:
    """One record per child run of the sweep's parent run, by name: the params the trial ran
    (typed back), its latest metrics, its status and error tags, its fused model."""
    records = []
    for name, run in sorted(child_runs(state).items()):
        tags = run.data.tags
        status = status_from_mlflow(run.info.status, tags.get(TAG_STOPPED) == "true")
        config = {k: typed(v) for k, v in run.data.params.items()}
        records.append(make_record(cfg, tags.get(TAG_TRIAL_ID, ""), name, status, config, run.data.metrics,
                                   tags.get(TAG_ERROR), run.info.run_id, tags.get(TAG_MODEL_URI), tags.get(TAG_REPEAT_OF)))
    return records
