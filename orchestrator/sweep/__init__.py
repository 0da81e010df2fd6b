"""The sweep: its file's schema and loading, the outer search space, the trials it can
sample (validated before Ray starts), whether a trial fits the nodes, its tracking URI, and
its storage folder and lock. No Ray or MLflow is imported here."""

from .fit import check_fit, check_request
from .load import apply_set, load_sweep, local_gpu_count, parse_sweep, starts_local_ray
from .lock import LOCK_FILE, SweepLock
from .schema import (
    CheckpointSettings,
    FailureSettings,
    MlflowConfig,
    Objective,
    RayConfig,
    ResourcesConfig,
    SchedulerConfig,
    SweepSearchConfig,
    SweepConfig,
)
from .space import SpaceParam, param_space, parse_space, sample_overrides, trial_count
from .tracking_uri import resolve_tracking_uri, sqlite_file, sqlite_path
from .trials import check_sampled, validate_trials

__all__ = [
    "CheckpointSettings", "FailureSettings", "MlflowConfig", "Objective", "RayConfig", "ResourcesConfig",
    "SchedulerConfig", "SweepSearchConfig", "SweepConfig", "load_sweep", "parse_sweep", "apply_set", "local_gpu_count",
    "check_fit", "check_request", "SpaceParam", "parse_space", "param_space", "sample_overrides", "trial_count",
    "validate_trials", "check_sampled", "starts_local_ray",
    "SweepLock", "LOCK_FILE", "sqlite_path", "sqlite_file", "resolve_tracking_uri",
]
