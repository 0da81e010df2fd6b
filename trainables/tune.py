"""The Ray Tune function trainable: one RepNAS trial per Tune trial.

``make_trainable(base_trial, hooks)`` returns ``repnas_trial(config)`` (so Ray names trials
``repnas_trial_<id>``). ``config`` holds only the sampled outer keys, dotted relative to
the ``trial:`` section (``"search.budget"``, ``"optim.lr"``; a leading ``"trial."`` is
accepted), applied on top of ``base_trial``.
Every epoch is reported with ``ray.tune.report(metrics, checkpoint=...)``; a restored trial
continues from ``ray.tune.get_checkpoint()``. The last checkpoint holds ``export/``.
Only ``ray.tune`` APIs are used (``ray.train.report`` raises inside Tune in Ray 2.60).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import TrialConfig
from .hooks import TrialHook
from .schema import apply_overrides
from .trial import run_trial

__all__ = ["make_trainable", "trial_config_from"]


def trial_config_from(base_trial: Mapping[str, Any], config: Mapping[str, Any]) -> TrialConfig:
    """The TrialConfig of one Tune trial: ``base_trial`` with the dotted ``config`` keys applied."""
    overrides = {key.removeprefix("trial."): value for key, value in config.items()}
    return TrialConfig.from_dict(apply_overrides(base_trial, overrides))


def _trial_cpus() -> int | None:
    """CPUs Ray reserved for this trial (None when unknown)."""
    from ray import tune

    try:
        cpus = tune.get_context().get_trial_resources().required_resources.get("CPU")
    except Exception:  # noqa: BLE001 - outside a Tune session
        return None
    return max(1, int(cpus)) if cpus else None


def make_trainable(base_trial: Mapping[str, Any], hooks: Sequence[TrialHook] = ()) -> Callable[[dict[str, Any]], None]:
    """A Ray Tune function trainable running ``run_trial`` on ``base_trial`` + the sampled keys.

    ``base_trial`` is validated here, on the driver, so config errors surface before any
    trial starts. Each trial gets its own deep copy of ``hooks``.
    """
    base = dict(base_trial)
    TrialConfig.from_dict(base)

    def repnas_trial(config: dict[str, Any]) -> None:
        from ray import tune

        cfg = trial_config_from(base, config)
        if cfg.runtime.num_threads is None:
            cfg.runtime.num_threads = _trial_cpus()
        context = tune.get_context()
        workdir = Path(tempfile.mkdtemp(prefix=f"repnas-{context.get_trial_id()}-"))
        try:
            resume_from = None
            checkpoint = tune.get_checkpoint()
            if checkpoint is not None:
                resume_from = Path(checkpoint.to_directory(str(workdir / "restored")))

            def report(metrics: dict[str, float], checkpoint_dir: Path) -> None:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

            run_trial(cfg, workdir, hooks=copy.deepcopy(list(hooks)), resume_from=resume_from,
                      report=report, trial_name=context.get_trial_name())
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    return repnas_trial
