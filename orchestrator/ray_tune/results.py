"""Ray Tune's results of a sweep read as :class:`~orchestrator.records.TrialRecord` s: the
stored ``ResultGrid``, one record per trial, and what ``--resume`` will do for a failed one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import adapter as ray_adapter
from trainables.search.failures import failure_reason
from trainables.config.repeat import REPEAT_KEY, Repeat
from trainables.config.schema import flatten_overrides
from trainables.errors import ConfigError

from ..records import RunLink, TrialRecord, error_message, make_record, status_from_result
from .repair import plan_repair, stored_metrics

if TYPE_CHECKING:
    from ray.tune import Result, ResultGrid

    from ..sweep import SweepConfig

__all__ = ["load_results", "records_from_results", "record_from_result", "sampled_config", "trial_name", "trial_id",
           "trial_error", "resume_advice"]


def load_results(cfg: SweepConfig) -> ResultGrid:
    """The sweep's results as Ray recorded them in storage (no Ray cluster needed)."""
    return ray_adapter.load_result_grid(cfg.experiment_path)


def trial_name(result: Result) -> str:
    """The trial's name: its folder's (``repnas_trial_<id>``)."""
    return Path(result.path).name if result.path else str((result.metrics or {}).get("trial_id", "?"))


def trial_id(result: Result) -> str:
    """Ray's id of the trial."""
    return str((result.metrics or {}).get("trial_id") or trial_name(result).rsplit("_", 1)[-1])


def trial_error(result: Result) -> str | None:
    """Why a trial failed, ``Type: message`` (Ray's error or the diverged trial's report); None if it did not."""
    return error_message(result.error) if result.error is not None else failure_reason(result.metrics or {})


def sampled_config(result: Result) -> tuple[dict[str, Any], Repeat | None]:
    """The trial's sampled keys as Ray recorded them, and the :class:`Repeat` of a repeat trial."""
    sampled = dict(result.config or {})
    repeat = sampled.pop(REPEAT_KEY, None)
    return sampled, Repeat.from_dict(repeat) if repeat else None


def record_from_result(result: Result, cfg: SweepConfig, links: Mapping[str, RunLink] | None = None) -> TrialRecord:
    """The record of one trial: the config it ran (the sweep's base with Ray's sampled keys),
    its last report, its error; its child run and fused model from ``links`` (by trial name)."""
    name = trial_name(result)
    run_id, model_uri = (links or {}).get(name, (None, None))
    sampled, repeat = sampled_config(result)
    config = flatten_overrides(cfg.trial_config(sampled).to_dict())
    return make_record(cfg, trial_id(result), name, status_from_result(result.metrics or {}, result.error is not None),
                       config, result.metrics or {}, trial_error(result), run_id, model_uri,
                       repeat.label if repeat else None)


def records_from_results(results: Iterable[Result], cfg: SweepConfig,
                         links: Mapping[str, RunLink] | None = None) -> list[TrialRecord]:
    """One record per trial of a Ray ``ResultGrid``, by name; ``links``: trial name -> (child
    run id, fused model URI) from MLflow (``tracking.runs.run_links``)."""
    return sorted((record_from_result(r, cfg, links) for r in results), key=lambda r: r.trial_name)


def resume_advice(result: Result) -> str:
    """What ``--resume`` will do for this failed trial, in a few words."""
    if result.error is None:  # Ray counts it as finished: --resume never reruns it
        if failure_reason(result.metrics or {}):
            return "--resume does nothing: it diverged, and would diverge again (see the fix in its error)"
        return "--resume does nothing: the trial finished, with a non-finite objective"
    cause: Any = getattr(result.error, "cause", None) or result.error
    if isinstance(cause, ConfigError):
        return (f"--resume cannot fix it: the error is in the config ({cause.path or 'the trial section'}); "
                "fix that (a sampled value needs a new sweep: --set name=...), or make a missing path exist")
    if not result.path or result.filesystem is None:
        return "--resume restarts it from epoch 1"
    fs = result.filesystem
    plan = plan_repair(fs, result.path, result.checkpoint.path if result.checkpoint else None, num_to_keep=None)
    if plan.latest is None:
        return "--resume restarts it from epoch 1 (no intact checkpoint)"
    epochs = stored_metrics(fs, plan.latest)["training_iteration"]
    return f"--resume retries it from {Path(plan.latest).name} (after epoch {epochs})"
