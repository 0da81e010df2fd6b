"""The sweep driver: sweep-file schema, Ray Tune wiring, MLflow tracking, Pareto front.

``python -m orchestrator.run SWEEP.yaml [--resume] [--dry-run] [--set KEY=VALUE ...]``
(console script ``repnas-sweep``); ``python -m orchestrator.report SWEEP.yaml`` compares
the methods of a finished sweep over seeds; ``python -m orchestrator.sync SWEEP.yaml``
fills MLflow in from Ray's results. See docs/sweep-config.md for every sweep key and
docs/architecture.md for the contract with ``trainables``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> submodule. Imported lazily (PEP 562) so that ``--dry-run`` and config
# errors do not pay for importing MLflow and Ray.
_EXPORTS: dict[str, str] = {
    "CheckpointSettings": "config",
    "ConfigError": "config",
    "FailureSettings": "config",
    "MlflowConfig": "config",
    "Objective": "config",
    "RayConfig": "config",
    "ResourcesConfig": "config",
    "SchedulerConfig": "config",
    "SearcherConfig": "config",
    "SweepConfig": "config",
    "apply_set": "config",
    "load_sweep": "config",
    "parse_sweep": "config",
    "GroupStats": "compare",
    "equal_count_verdicts": "compare",
    "group_records": "compare",
    "select_best": "compare",
    "dominates": "pareto",
    "mark_front": "pareto",
    "non_dominated": "pareto",
    "plot_fronts": "pareto",
    "write_table": "pareto",
    "Registered": "registry",
    "register_models": "registry",
    "main": "run",
    "run_sweep": "run",
    "build_report": "report",
    "TrialRecord": "records",
    "TrialStatus": "records",
    "records_from_mlflow": "records",
    "records_from_results": "records",
    "SpaceParam": "space",
    "make_searcher": "searchers",
    "param_space": "space",
    "parse_space": "space",
    "trial_count": "space",
    "MLflowTrialHook": "child_run",
    "TrialLog": "child_run",
    "reconcile": "child_run",
    "SweepState": "tracking",
    "finish_parent_run": "tracking",
    "start_parent_run": "tracking",
    "NothingToResumeError": "tuner",
    "SweepExistsError": "tuner",
    "build_tuner": "tuner",
    "restore_tuner": "tuner",
    "validate_trials": "validate",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .child_run import MLflowTrialHook, TrialLog, reconcile
    from .config import CheckpointSettings, ConfigError, FailureSettings, MlflowConfig, Objective, RayConfig, ResourcesConfig, SchedulerConfig, SearcherConfig, SweepConfig, apply_set, load_sweep, parse_sweep
    from .compare import GroupStats, equal_count_verdicts, group_records, select_best
    from .pareto import dominates, mark_front, non_dominated, plot_fronts, write_table
    from .records import TrialRecord, TrialStatus, records_from_mlflow, records_from_results
    from .registry import Registered, register_models
    from .report import build_report
    from .run import main, run_sweep
    from .searchers import make_searcher
    from .space import SpaceParam, param_space, parse_space, trial_count
    from .tracking import SweepState, finish_parent_run, start_parent_run
    from .tuner import NothingToResumeError, SweepExistsError, build_tuner, restore_tuner
    from .validate import validate_trials


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
