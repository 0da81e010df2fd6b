"""What one trial does: data, the RepNAS one-stage search engine, checkpoints, export.

Subpackages by job: ``config`` (what a trial is; shared with the driver), ``search`` (the
engine), ``run`` (one trial's run), ``ray_tune`` (the trial's side of Ray); ``errors`` holds
every exception the project raises. Names are imported on first use (PEP 562), so the
driver can read ``trainables.config`` without importing the engine or a trial's run.

Runs with Ray Tune (``make_trainable``) or without (``run_trial``,
``python -m trainables.cli``). Tracking is injected through ``TrialHook``s;
nothing here imports MLflow. See docs/architecture.md for the contract.
"""

from ._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "TrialConfig": "config", "check_trial_key": "config", "ModelConfig": "config", "DataConfig": "config",
    "SearchConfig": "config", "OptimConfig": "config", "RuntimeConfig": "config", "ExportConfig": "config",
    "BASELINES": "config", "DATASETS": "config", "EXPORT_FORMATS": "config", "RECIPE_PRESETS": "config",
    "layer_trial": "config", "apply_overrides": "config", "flatten_overrides": "config", "parse_override": "config",
    "did_you_mean": "config", "schema": "config", "sweepfile": "config", "read_sweep_yaml": "config",
    "load_trial_section": "config", "metrics": "config", "EPOCH_METRICS": "config", "FINAL_METRICS": "config",
    "OPTIONAL_FINAL_METRICS": "config", "PHASES": "config", "objective_metric_names": "config",
    "scheduler_metric_names": "config", "Repeat": "config", "REPEAT_KEY": "config",
    "ConfigError": "errors", "CheckpointError": "errors", "FusionMismatchError": "errors", "NonFiniteLossError":
    "errors", "RepnasError": "errors", "UserError": "errors",
    "make_trainable": "ray_tune",
    "DataBundle": "run", "build_data": "run", "make_loader": "run", "LoaderSettings": "run", "save_checkpoint":
    "run", "load_checkpoint": "run", "TrialHook": "run", "TrialResult": "run", "run_trial": "run",
    "gates": "search", "SearchEngine": "search",
})
