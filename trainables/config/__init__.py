"""What a trial is: its config sections, presets, the sweep file's ``trial:`` section, metric
names, the trial identity and the seed streams.

Shared by both sides: the driver (``orchestrator``) reads and validates sweeps through this
package without importing the search engine or a trial's run.
"""

from . import metrics, schema, sweepfile
from .datasets import DATASET_INFO, DatasetInfo, dataset_info
from .metrics import (
    EPOCH_METRICS,
    FINAL_METRICS,
    INT8_METRICS,
    OPTIONAL_FINAL_METRICS,
    PHASES,
    objective_metric_names,
    scheduler_metric_names,
)
from .presets import RECIPE_PRESETS, layer_trial
from .repeat import REPEAT_KEY, Repeat
from .schema import apply_overrides, did_you_mean, flatten_overrides, parse_override
from .sections import (
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
from .sweepfile import load_trial_section, read_sweep_yaml

__all__ = [
    "TrialConfig", "ModelConfig", "DataConfig", "SearchConfig", "OptimConfig", "RuntimeConfig", "ExportConfig",
    "Int8Config", "check_trial_key", "BASELINES", "DATASETS", "DATASET_INFO", "DatasetInfo", "dataset_info",
    "EXPORT_FORMATS", "RECIPE_PRESETS", "layer_trial",
    "apply_overrides", "flatten_overrides", "parse_override", "did_you_mean", "read_sweep_yaml",
    "load_trial_section", "REPEAT_KEY", "Repeat", "EPOCH_METRICS", "FINAL_METRICS", "OPTIONAL_FINAL_METRICS",
    "INT8_METRICS", "PHASES", "objective_metric_names", "scheduler_metric_names", "metrics", "schema", "sweepfile",
]
