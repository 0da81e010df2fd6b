"""The searcher of a resumed sweep made to agree with the trials Tune restored.

Tune saves its trials (the experiment snapshot) and its searcher's state as separate files and
copies them to storage in parallel. A driver killed during the copy leaves a searcher state
newer or older than the snapshot: newer, it counts proposals whose trials ``Tuner.restore``
never sees, and those points of a grid are lost (the sweep ends one trial short); older, it
proposes again a point whose trial the snapshot holds, and the completion of such a trial is
swallowed by Tune's concurrency limiter, so a twin waiting for it waits for ever.

:class:`AlignedSearch` is the search algorithm Tune is given (the sweep's searcher inside it).
When Tune restores it, it reads the snapshot Tune restored from and hands its trials
(:class:`SnapshotTrial`) down the searcher chain (:func:`realign_searcher`): each layer forgets
the proposals whose trials were lost (they are proposed again), adopts the trials it never
proposed, and completes the ones the snapshot finished while it still thought them running.
The trial count is set to the snapshot's. One line says when the two disagreed.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ray.tune.search import ConcurrencyLimiter, SearchGenerator, Searcher

from trainables.config.repeat import REPEAT_KEY

from . import adapter as ray_adapter

__all__ = ["SnapshotTrial", "AlignedSearch", "realign_searcher", "proposal"]


@dataclass(frozen=True)
class SnapshotTrial:
    """A trial as the experiment snapshot holds it: Tune's id, its config, whether it ended
    (``done``: Tune will not run it again nor report its completion) and its last result."""

    trial_id: str
    config: Mapping[str, Any]
    done: bool = False
    result: Mapping[str, Any] | None = None


def proposal(config: Mapping[str, Any]) -> dict[str, Any]:
    """The searcher's proposal behind a trial's config (a repeat's marker left out)."""
    return {k: v for k, v in config.items() if k != REPEAT_KEY}


def realign_searcher(searcher: Searcher, trials: Sequence[SnapshotTrial]) -> None:
    """Make ``searcher`` (and those it wraps) agree with ``trials``, in the order Tune created them."""
    if isinstance(searcher, ConcurrencyLimiter):
        ray_adapter.set_live_trials(searcher, [t.trial_id for t in trials if not t.done])
        realign_searcher(searcher.searcher, trials)
    elif hasattr(searcher, "realign"):
        searcher.realign(trials)
    elif ray_adapter.is_optuna(searcher):
        _realign_optuna(searcher, trials)


def _realign_optuna(searcher: Any, trials: Sequence[SnapshotTrial]) -> None:
    """Lost proposals fail in the study (its sampler ignores them); trials the study never saw
    join it; those the snapshot ended are told their result."""
    known = {t.trial_id for t in trials}
    for trial_id in ray_adapter.optuna_open_trials(searcher):
        if trial_id not in known:
            searcher.on_trial_complete(trial_id, error=True)
    for t in trials:
        if not ray_adapter.optuna_knows(searcher, t.trial_id):
            ray_adapter.optuna_adopt(searcher, t.trial_id, proposal(t.config))
    still_open = set(ray_adapter.optuna_open_trials(searcher))
    for t in trials:
        if t.done and t.trial_id in still_open:
            searcher.on_trial_complete(t.trial_id, result=dict(t.result or {}))


class AlignedSearch(SearchGenerator):
    """Tune's search algorithm around the sweep's searcher, restored in step with the snapshot
    (see the module doc)."""

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        trials = [SnapshotTrial(t.trial_id, dict(t.config), ray_adapter.trial_done(t), t.last_result)
                  for t in ray_adapter.snapshot_trials(dirpath)]
        counted = ray_adapter.generated_count(self)
        if counted != len(trials):
            print(f"resume: the searcher's saved state counts {counted} trial(s), the experiment snapshot "
                  f"{len(trials)} (the driver died while Ray copied them to storage); the searcher follows "
                  f"the snapshot{', lost proposals are made again' if counted > len(trials) else ''}",
                  file=sys.stderr, flush=True)
        ray_adapter.set_generated_count(self, len(trials))
        realign_searcher(self.searcher, trials)
