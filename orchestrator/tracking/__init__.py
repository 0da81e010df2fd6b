"""MLflow tracking: the sweep's parent run, each trial's child run (one writer, live from the
trial or afterwards from Ray's results), fused models and the Model Registry, the SQLite
store and the tracking-store preflight (MLflow's internals: ``orchestrator.mlflow_adapter``).
MLflow is imported on first use."""

from trainables._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "SweepState": "parent_run", "start_parent_run": "parent_run", "finish_parent_run": "parent_run",
    "child_runs": "parent_run", "mlflow_params": "parent_run",
    "MLflowTrialHook": "child_run", "TrialLog": "child_run", "reconcile": "child_run",
    "sync_mlflow": "from_ray", "records_from_mlflow": "runs",
    "Registered": "model_registry", "register_models": "model_registry",
    "check_tracking": "preflight",
})
