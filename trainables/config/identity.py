"""The one trial identity: which keys decide a trial's result.

Two trials whose identities are equal train the same bits, so one's result stands for the
other's. Three places ask: resuming a checkpoint (``trainables.run.trial``: the checkpoint's
trial must have this trial's identity), the repeat check of a sweep
(``orchestrator.ray_tune.repeats``: a proposal with a known or running identity is not trained
again) and warm starts (``orchestrator.tracking.warm_start``: an earlier sweep's trial is a
result of this sweep's trial at the same point only if their identities agree).

A trial's identity is every dotted key of its config except:

- the inert ``search.*`` keys (:func:`inert_keys`): options that cannot act given the others;
- :data:`NOT_DECIDING`: keys that change how fast a trial runs or what it writes, never what it
  learns. Those that act during training are tested by training both values to the same bits
  (``data.num_workers``: tests/trainables/test_trainables_identity.py; ``checkpoint.*``:
  tests/trainables/test_trainables_preemption.py); the others act only after training (latency
  measurement, export formats). ``export.int8.*`` stays in: it decides the INT8 metrics. ``runtime.precision``, ``runtime.device``,
  ``runtime.num_threads`` (measured: 1 and 2 intra-op threads give different sums in the last bits),
  ``runtime.channels_last``, ``runtime.compile``, ``runtime.workers`` and ``runtime.sync_bn``
  change the numbers or may, and are part of the identity. A sweep resolves an unset
  ``num_threads`` from ``resources.cpus`` (``TrialConfig.with_threads``), so every trial of a sweep,
  resumed on any node, has the same.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .schema import flatten_overrides
from .sections import SearchConfig, TrialConfig

__all__ = ["NOT_DECIDING", "inert_keys", "trial_identity", "identity_key", "identity_difference"]

NOT_DECIDING: frozenset[str] = frozenset({
    "data.num_workers",             # loader processes: the order comes from the seeded sampler (tested)
    "runtime.latency_batch_size",   # what the latency measurement feeds, after training
    "export.formats",               # which files the fused model is written to
    "export.latency_min_run_time",  # how long latency is measured
    "checkpoint.every_steps",       # mid-epoch checkpoints: same bits (tests/trainables/test_trainables_preemption.py)
    "checkpoint.every_seconds",
})
"""Keys outside every trial's identity: how a trial runs or what it writes, not what it learns."""


def inert_keys(search: SearchConfig) -> frozenset[str]:
    """The ``search.*`` keys whose values cannot change a trial's training given the others:
    ``preset`` (its values are already in the other keys); for a search, ``random_sampling``
    without a random phase, the fix recipe (``fix_bn``, ``fix_bn_batches``,
    ``fixed_lr_schedule``) under ``two_stage``, ``fix_bn_batches`` without recalibration,
    ``noise_final`` with constant noise and ``arch_lr_travel`` without ``arch_lr: auto``; for a
    fixed architecture, ``budget`` and ``layer_floor`` (only a search keeps a subset of branches).
    Each rule is checked by training both values (tests/trainables/test_trainables_inert_keys.py)."""
    if not search.searching:
        return frozenset({"search.preset", "search.budget", "search.layer_floor"})
    inert = {"preset"}
    if search.random_epochs == 0:
        inert.add("random_sampling")
    if search.two_stage:
        inert |= {"fix_bn", "fix_bn_batches", "fixed_lr_schedule"}
    if search.fix_bn == "reset":
        inert.add("fix_bn_batches")
    if search.noise_schedule == "constant":
        inert.add("noise_final")
    if search.arch_lr != "auto":
        inert.add("arch_lr_travel")
    return frozenset(f"search.{key}" for key in inert)


def trial_identity(trial: TrialConfig) -> dict[str, Any]:
    """The trial's deciding keys and values (dotted, without the ``trial.`` prefix)."""
    left_out = inert_keys(trial.search) | NOT_DECIDING
    return {k: v for k, v in flatten_overrides(trial.to_dict()).items() if k not in left_out}


def identity_key(trial: TrialConfig) -> str:
    """:func:`trial_identity` as one canonical string (equal strings: equal identities)."""
    return json.dumps(trial_identity(trial), sort_keys=True, default=str)


_UNKNOWN = object()


def identity_difference(trial: TrialConfig, other: Mapping[str, Any]) -> str | None:
    """The first deciding key of ``trial`` whose value in ``other`` (another trial's flat keys,
    e.g. an MLflow run's params) differs, or None when ``other`` has ``trial``'s identity. A key
    ``other`` does not hold (a run logged before the key existed) counts as the default's: the
    behaviour the key keeps when unset. One with no default (an entry of ``model.options``) is
    not compared."""
    defaults = flatten_overrides(TrialConfig().to_dict())
    for key, value in sorted(trial_identity(trial).items()):
        theirs = other.get(key, defaults.get(key, _UNKNOWN))
        if theirs is not _UNKNOWN and theirs != value:
            return key
    return None
