"""What one trial does: data, the RepNAS one-stage search engine, checkpoints, export.

Runs with Ray Tune (``make_trainable``) or without (``run_trial``,
``python -m trainables.search``). Tracking is injected through ``TrialHook``s;
nothing here imports MLflow. See docs/architecture.md for the contract.
"""

from . import gates, metrics, schema
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import (
    BASELINES,
    DATASETS,
    EXPORT_FORMATS,
    DataConfig,
    ExportConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    SearchConfig,
    TrialConfig,
)
from .data import DataBundle, build_data, make_loader
from .engine import SearchEngine
from .export import FusionMismatchError
from .failures import NonFiniteLossError
from .hooks import TrialHook
from .metrics import EPOCH_METRICS, FINAL_METRICS, OPTIONAL_FINAL_METRICS, PHASES
from .schema import ConfigError, apply_overrides, did_you_mean, flatten_overrides, parse_override
from .trial import TrialResult, run_trial
from .tune import make_trainable

__all__ = [
    "TrialConfig",
    "ModelConfig",
    "DataConfig",
    "SearchConfig",
    "OptimConfig",
    "RuntimeConfig",
    "ExportConfig",
    "BASELINES",
    "DATASETS",
    "EXPORT_FORMATS",
    "ConfigError",
    "apply_overrides",
    "flatten_overrides",
    "parse_override",
    "did_you_mean",
    "schema",
    "gates",
    "metrics",
    "EPOCH_METRICS",
    "FINAL_METRICS",
    "OPTIONAL_FINAL_METRICS",
    "PHASES",
    "DataBundle",
    "build_data",
    "make_loader",
    "SearchEngine",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "FusionMismatchError",
    "NonFiniteLossError",
    "TrialHook",
    "TrialResult",
    "run_trial",
    "make_trainable",
]
