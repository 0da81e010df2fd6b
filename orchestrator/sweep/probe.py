"""The start of every distinct trial a sweep can sample, short of training, before Ray starts.

``--dry-run`` and a real sweep run the same :func:`probe_sweep`: the device each trial asks
for exists (with a local Ray: the machine's GPUs), and for the base trial and each sampled
combination of the keys that decide the model, :func:`trainables.run.probe.probe_trial` builds the
model on the CPU, loads its weights and runs one forward on a batch of the real input shape.
Errors name ``trial.<key>``, or ``space.<key>`` with the sampled value that causes them
(:func:`~orchestrator.sweep.trials.check_sampled`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from trainables.config.sections import TrialConfig
from trainables.errors import ConfigError

from .load import local_gpu_count, starts_local_ray
from .trials import check_sampled

if TYPE_CHECKING:
    from .schema import SweepConfig

__all__ = ["probe_sweep"]


def _check_device(trial: TrialConfig, local: bool) -> None:
    if trial.runtime.device == "cuda" and local and local_gpu_count() == 0:
        raise ConfigError("trial.runtime.device", "cuda requested but this machine has no GPU that torch can use "
                                                  "(torch.cuda.is_available() is False) and the sweep's local Ray "
                                                  "runs here; use runtime.device: auto or cpu, or ray.address of a "
                                                  "cluster with GPUs")


def _probe_key(trial: TrialConfig) -> str:
    """What decides a probe's outcome (the budget is checked on the meta device already)."""
    d = trial.to_dict()
    return json.dumps([d["model"], d["data"], d["search"]["method"], d["search"]["candidates"],
                       d["runtime"]["device"]], sort_keys=True, default=str)


def probe_sweep(cfg: SweepConfig) -> list[str]:
    """Check that every distinct trial of ``cfg`` would start (``ConfigError`` naming the key when
    one would not); returns the lines saying what was taken from weights files."""
    from trainables.run.probe import probe_trial  # torch and the model zoo: only when probing

    local = starts_local_ray(cfg)  # this machine's GPUs are the trials'
    outcomes: dict[str, list[str] | ConfigError] = {}  # one build per distinct model, data and device

    def check(trial: TrialConfig) -> None:
        key = _probe_key(trial)
        if key not in outcomes:
            try:
                _check_device(trial, local)
                outcomes[key] = probe_trial(trial, data_here=local)
            except ConfigError as err:
                outcomes[key] = err
        outcome = outcomes[key]
        if isinstance(outcome, ConfigError):
            raise outcome

    check_sampled(cfg.trial, cfg.sampled, check)
    return list(dict.fromkeys(line for lines in outcomes.values() if isinstance(lines, list) for line in lines))
