"""What one trial does: data, the RepNAS one-stage search engine, checkpoints, export.

Runs with Ray Tune (``make_trainable``) or without (``run_trial``,
``python -m trainables.cli``). Tracking is injected through ``TrialHook``s;
nothing here imports MLflow. See docs/architecture.md for the contract.
"""

from . import gates, metrics, schema, sweepfile
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import (
    BASELINES,
    DATASETS,
    EXPORT_FORMATS,
    DataConfig,
    ExportConfig,
    Int8Config,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    SearchConfig,
    TrialConfig,
    check_trial_key,
)
from .presets import RECIPE_PRESETS, layer_trial
from .data import DataBundle, LoaderSettings, build_data, make_loader
from .engine import SearchEngine
from .export import FusionMismatchError
from .failures import NonFiniteLossError
from .hooks import TrialHook
from .repeat import REPEAT_KEY, Repeat
from .metrics import EPOCH_METRICS, FINAL_METRICS, INT8_METRICS, OPTIONAL_FINAL_METRICS, PHASES, objective_metric_names, scheduler_metric_names
from .schema import ConfigError, apply_overrides, did_you_mean, flatten_overrides, parse_override
from .sweepfile import load_trial_section, read_sweep_yaml
from .quantize import INT8_FILE, quantize_onnx
from .trial import TrialResult, run_trial
from .tune import make_trainable

__all__ = [
    "TrialConfig",
    "check_trial_key",
    "ModelConfig",
    "DataConfig",
    "SearchConfig",
    "OptimConfig",
    "RuntimeConfig",
    "ExportConfig",
    "Int8Config",
    "BASELINES",
    "DATASETS",
    "EXPORT_FORMATS",
    "RECIPE_PRESETS",
    "layer_trial",
    "ConfigError",
    "apply_overrides",
    "flatten_overrides",
    "parse_override",
    "did_you_mean",
    "schema",
    "sweepfile",
    "read_sweep_yaml",
    "load_trial_section",
    "gates",
    "metrics",
    "EPOCH_METRICS",
    "FINAL_METRICS",
    "OPTIONAL_FINAL_METRICS",
    "INT8_METRICS",
    "PHASES",
    "objective_metric_names",
    "scheduler_metric_names",
    "DataBundle",
    "build_data",
    "make_loader",
    "LoaderSettings",
    "SearchEngine",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "FusionMismatchError",
    "NonFiniteLossError",
    "TrialHook",
    "Repeat",
    "REPEAT_KEY",
    "TrialResult",
    "run_trial",
    "INT8_FILE",
    "quantize_onnx",
    "make_trainable",
]
