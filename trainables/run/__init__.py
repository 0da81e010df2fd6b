"""One trial's run, with or without Ray: data, the model, epochs with checkpoints, export.

:func:`run_trial` is the single entry that the CLI and the Ray Tune trainable both call.
"""

from .._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint", "DataBundle": "data", "LoaderSettings":
    "data", "build_data": "data", "make_loader": "data", "TrialHook": "hooks", "CHECKPOINT_DIR": "trial",
    "EXPORT_DIR": "trial", "TrialResult": "trial", "run_trial": "trial", "probe_trial": "probe",
    "read_state_dict": "weights", "StateDict": "weights"
})
