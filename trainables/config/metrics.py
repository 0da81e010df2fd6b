"""Names of the flat scalar metrics a trial reports (the contract with the orchestrator)."""

from __future__ import annotations

__all__ = ["PHASES", "PHASE_RANDOM", "PHASE_SEARCH", "PHASE_FIXED", "EPOCH_METRICS", "FINAL_METRICS", "OPTIONAL_FINAL_METRICS",
           "objective_metric_names", "scheduler_metric_names"]

PHASE_RANDOM, PHASE_SEARCH, PHASE_FIXED = 0, 1, 2
PHASES = ("random", "search", "fixed")
"""``phase_id`` -> name."""

EPOCH_METRICS = (
    "epoch",
    "epochs_trained",
    "phase_id",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "branches_kept",
    "branches_total",
    "lr",
    "epoch_time_s",
    "train_seconds",
    "gpu_seconds",
    "peak_memory_mb",
)
"""Reported after every epoch. ``epoch`` counts completed epochs (1-based); ``epochs_trained``
those of the network the trial delivers (``two_stage`` restarts it at the rebuild: the time a
scheduler judges trials at). ``train_seconds`` sums ``epoch_time_s`` over the trial's epochs so
far (its training cost, across resumes); ``gpu_seconds`` is that times the GPUs the trial holds
(a fraction when trials share a GPU; 0 on CPU): the cost a sweep can minimise.
``peak_memory_mb`` is the trial's peak so far: CUDA tensors on a GPU, process RSS on CPU
(``trainables.run.memory``)."""

FINAL_METRICS = (
    "fused_val_acc",
    "fused_max_logit_diff",
    "params_fused",
    "params_unfused",
    "flops_fused",
    "flops_unfused",
    "latency_fused_ms",
    "latency_unfused_ms",
    "done",
)
"""Added to the last epoch's report."""

OPTIONAL_FINAL_METRICS = ("test_acc", "weights_val_acc", "weights_test_acc")
"""``test_acc``: added to the last report when the dataset has a test split (fused model's
accuracy). ``weights_val_acc``/``weights_test_acc``: with ``model.weights``, the accuracy of the
loaded model before any training step (measured once, at the start; in every report); new
branches start at zero, so this is the weights' own accuracy."""

_NOT_OBJECTIVES = ("done", "epoch", "epochs_trained", "phase_id")  # markers and counters, not quantities to optimise


def objective_metric_names() -> tuple[str, ...]:
    """Every metric a trial reports that can be a search objective or a stop criterion."""
    names = EPOCH_METRICS + FINAL_METRICS + OPTIONAL_FINAL_METRICS
    return tuple(n for n in names if n not in _NOT_OBJECTIVES) + ("epoch",)


def scheduler_metric_names() -> tuple[str, ...]:
    """Metrics reported after every epoch: what a trial scheduler such as ASHA can compare."""
    return tuple(n for n in EPOCH_METRICS if n not in _NOT_OBJECTIVES)
