"""The Ray Tune side of a sweep: the Tuner (new or restored), the outer searcher and
scheduler, the cluster checks, the repair of restored trials' checkpoints, the console
progress, and the sweep's Ray results read as records. Ray is imported on first use."""

from trainables._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "build_tuner": "tuner", "restore_tuner": "tuner", "can_restore": "tuner", "check_fresh": "tuner",
    "make_scheduler": "tuner", "SweepExistsError": "tuner", "NothingToResumeError": "tuner",
    "make_searcher": "searchers",
    "connect": "cluster", "check_cluster": "cluster", "check_storage": "cluster", "validate_cluster": "cluster",
    "max_concurrent": "cluster", "ddp_trial_resources": "cluster",
    "CheckpointRepair": "repair", "plan_repair": "repair", "set_aside_torn_snapshots": "repair",
    "SweepReporter": "progress", "TrialLines": "progress",
    "load_results": "results", "records_from_results": "results", "resume_advice": "results",
})
