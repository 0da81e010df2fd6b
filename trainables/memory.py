"""Peak training memory of one trial: CUDA tensors on a GPU, the process's peak RSS on CPU.

Ray reuses trial processes, so a process-lifetime maximum would carry one trial's peak
into the next: on Linux the RSS high-water mark (``VmHWM``) is reset through
``/proc/self/clear_refs`` when the trial starts. Where that is not possible the figure
is the process's lifetime peak (``getrusage``), an upper bound.
"""

from __future__ import annotations

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
