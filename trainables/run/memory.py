"""Peak training memory of one trial: CUDA tensors on a GPU, the process's peak RSS on CPU.

Ray reuses trial processes, so a process-lifetime maximum would carry one trial's peak
into the next. On Linux (glibc) a new window first hands freed heap memory back to the
system (``malloc_trim``), so the previous trial's freed tensors do not count, then resets
the RSS high-water mark (``VmHWM``) through ``/proc/self/clear_refs``. The CPU figure is
the whole process (torch, Ray, MLflow libraries included): compare trials with it, read
training memory alone from ``benchmarks/train_cost.py``. Where the reset is not possible
it is the process's lifetime peak (``getrusage``), an upper bound.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
import resource
from pathlib import Path

import torch

__all__ = ["PeakMemory"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_RESET_HWM = "5"  # proc(5): "reset the peak resident set size (VmHWM)"


def _hwm_kib() -> int | None:
    try:
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _malloc_trim() -> None:
    """Return freed heap memory to the system (glibc only; a no-op elsewhere)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Tracks the peak memory of the current process on ``device`` since :meth:`reset`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        """Start a new measurement window."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        gc.collect()
        _malloc_trim()
        try:
            _CLEAR_REFS.write_text(_RESET_HWM)
        except OSError:
            pass  # not Linux or not permitted: the lifetime peak remains

    def peak_mb(self) -> float:
        """Peak MiB in the window: allocated CUDA tensors, or resident set size on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        kib = _hwm_kib()
        if kib is None:
            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return kib / 1024
