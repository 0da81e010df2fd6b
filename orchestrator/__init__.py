"""The sweep driver: sweep-file schema, Ray Tune wiring, MLflow tracking, Pareto front.

Commands (each a module here, exit codes from ``trainables.errors``):
``python -m orchestrator.run SWEEP.yaml [--resume] [--dry-run] [--set KEY=VALUE ...]``
(console script ``repnas-sweep``) runs a sweep; ``python -m orchestrator.report SWEEP.yaml``
compares the methods of finished sweeps over seeds; ``python -m orchestrator.sync SWEEP.yaml``
fills MLflow in from Ray's results.

Subpackages, by job: ``sweep`` (the file, its space, its trials, fit, storage, lock),
``ray_tune`` (Tuner, searcher, scheduler, cluster, checkpoint repair, progress, Ray's
results), ``tracking`` (MLflow parent and child runs, fused models, registry, SQLite),
``results`` (Pareto, per-method statistics, the report, the summary). ``records`` is the one
trial record and status vocabulary they share. See docs/sweep-config.md for every sweep key
and docs/architecture.md for the contract with ``trainables``.
"""

from trainables._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "SweepConfig": "sweep", "Objective": "sweep", "load_sweep": "sweep", "parse_sweep": "sweep", "apply_set": "sweep",
    "SpaceParam": "sweep", "param_space": "sweep", "parse_space": "sweep", "trial_count": "sweep",
    "validate_trials": "sweep",
    "TrialRecord": "records", "TrialStatus": "records",
    "build_tuner": "ray_tune", "restore_tuner": "ray_tune", "make_searcher": "ray_tune",
    "SweepExistsError": "ray_tune", "NothingToResumeError": "ray_tune", "records_from_results": "ray_tune",
    "MLflowTrialHook": "tracking", "reconcile": "tracking", "SweepState": "tracking", "start_parent_run": "tracking",
    "finish_parent_run": "tracking", "records_from_mlflow": "tracking", "register_models": "tracking",
    "sync_mlflow": "tracking",
    "mark_front": "results", "non_dominated": "results", "dominates": "results", "group_records": "results",
    "select_best": "results", "equal_count_verdicts": "results", "build_report": "results",
    "main": "run", "run_sweep": "run",
})
