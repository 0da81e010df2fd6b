"""One trial's run, with or without Ray: data, the model, epochs with checkpoints, export.

:func:`run_trial` is the single entry that the CLI and the Ray Tune trainable both call.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .data import DataBundle, LoaderSettings, build_data, make_loader
from .hooks import TrialHook
from .quantize import INT8_FILE, quantize_onnx
from .trial import CHECKPOINT_DIR, EXPORT_DIR, TrialResult, run_trial

__all__ = ["run_trial", "TrialResult", "TrialHook", "CHECKPOINT_DIR", "EXPORT_DIR", "DataBundle", "LoaderSettings",
           "build_data", "make_loader", "save_checkpoint", "load_checkpoint", "INT8_FILE", "quantize_onnx"]
