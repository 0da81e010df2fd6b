"""What a trial's metrics hold apart from the wall-clock: the part two runs must agree on."""

from __future__ import annotations

TIMING = frozenset({"epoch_time_s", "train_seconds", "gpu_seconds", "latency_fused_ms", "latency_unfused_ms",
                    "peak_memory_mb"})
"""Metrics that are measured, not computed: they differ between identical runs."""


def computed(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` without the measured times and memory."""
    return {k: v for k, v in metrics.items() if k not in TIMING}
