"""The outer search algorithm: a sweep's ``search:`` section -> a Ray Tune searcher.

Optuna's sampler may start from earlier sweeps' finished trials (:class:`WarmTrial`, read by
``tracking.warm_start``): they are added to its study, with every objective's value, before
it proposes anything, and never trained again. With ``search.control`` Optuna's proposals are
each followed by their control (``ray_tune.controls``). With ``search.skip_repeats`` the searcher
is wrapped, outside that, so that no configuration is trained twice (``ray_tune.repeats``). Grid
and random sweeps run through a :class:`VariantList`, the list ``--dry-run`` previews, so that a
grid's duplicates are repeats too (a random sweep's list holds each trial's control after it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from trainables.config.metrics import scheduler_metric_names
from trainables.config.repeat import Repeat

from ..sweep import SweepSearchConfig
from .realign import SnapshotTrial, proposal

__all__ = ["WarmTrial", "VariantList", "make_searcher"]


@dataclass(frozen=True)
class WarmTrial:
    """A trial of an earlier sweep given to the sampler: its values of this sweep's sampled keys
    (``point``) and its result (``repeat``: the trial, its metrics, its run). A trial that
    sweep's scheduler ``stopped`` early reaches the study as pruned, with the objective at each
    epoch it reported (``intermediate``; single-objective only, as Optuna's), which TPE ranks
    below every finished trial; it is never a known result for skipping repeats."""

    point: Mapping[str, Any]
    repeat: Repeat
    stopped: bool = False
    intermediate: Mapping[int, float] = field(default_factory=dict)


def _sampler(search: SweepSearchConfig) -> Any:
    import optuna

    kwargs: dict[str, Any] = {"seed": search.seed}
    if search.sampler in ("nsgaii", "nsgaiii") and search.population_size is not None:
        kwargs["population_size"] = search.population_size
    cls = {"tpe": optuna.samplers.TPESampler, "nsgaii": optuna.samplers.NSGAIISampler,
           "nsgaiii": optuna.samplers.NSGAIIISampler, "random": optuna.samplers.RandomSampler}
    return cls[search.sampler](**kwargs)


def _warm_study(search: SweepSearchConfig, param_space: Mapping[str, Any], warm: Sequence[WarmTrial]) -> dict[str, Any]:
    """OptunaSearch's ``storage`` and ``study_name``: an in-memory study already holding the warm
    trials (OptunaSearch loads it when Tune gives it the space): finished ones with every
    objective's value, stopped ones pruned with their intermediate values. Both count towards
    TPE's ``n_startup_trials``."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    distributions = OptunaSearch.convert_search_space(dict(param_space))
    storage = optuna.storages.InMemoryStorage()
    name = "repnas-warm-start"
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line on the console
    try:
        study = optuna.create_study(storage=storage, study_name=name,
                                    directions=["maximize" if o.mode == "max" else "minimize" for o in search.objectives])
    finally:
        optuna.logging.set_verbosity(level)
    for trial in warm:
        if trial.stopped:
            study.add_trial(optuna.trial.create_trial(params=dict(trial.point), distributions=distributions,
                                                      state=optuna.trial.TrialState.PRUNED,
                                                      intermediate_values=dict(trial.intermediate)))
            continue
        values = [trial.repeat.metrics[o.metric] for o in search.objectives]
        study.add_trial(optuna.trial.create_trial(params=dict(trial.point), distributions=distributions, values=values))
    return {"storage": storage, "study_name": name}


class VariantList(Searcher):
    """Grid and random sweeps as a Tune searcher: the sweep's trials, drawn up front
    (``sweep.sample_overrides``, the list ``--dry-run`` previews), proposed in order. As a
    searcher it can be wrapped by ``RepeatSkipper``, so a grid that holds one configuration twice
    trains it once: the twin waits for the original and takes its result."""

    def __init__(self, points: Sequence[Mapping[str, Any]]) -> None:
        super().__init__()
        self.points = [dict(p) for p in points]
        self.taken: list[int] = []  # indices of the points proposed, in order

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        taken = set(self.taken)
        index = next((i for i in range(len(self.points)) if i not in taken), None)
        if index is None:
            return None  # every point proposed; Tune stops at num_samples (= len(points))
        self.taken.append(index)
        return dict(self.points[index])

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Nothing to learn: the list is fixed."""

    def realign(self, trials: Sequence[SnapshotTrial]) -> None:
        """The points taken are those of ``trials`` (``ray_tune.realign``): a lost one is
        proposed again, one already in a trial is not."""
        self.taken = []
        for trial in trials:
            point = proposal(trial.config)
            index = next((i for i, p in enumerate(self.points) if p == point and i not in self.taken), None)
            if index is not None:
                self.taken.append(index)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"points": self.points, "taken": self.taken}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.points = state["points"]
        self.taken = state["taken"] if "taken" in state else list(range(state["next"]))  # saved before "taken"


def make_searcher(search: SweepSearchConfig, param_space: Mapping[str, Any] | None = None,
                  warm: Sequence[WarmTrial] = (), base_trial: Mapping[str, Any] | None = None,
                  variants: Sequence[Mapping[str, Any]] | None = None, limit: int | None = None) -> Searcher | Any:
    """OptunaSearch (objective lists go to the searcher only; ``warm`` trials in its study; each
    proposal followed by its control with ``search.control``; repeats skipped, proposals compared
    as trials over ``base_trial``, the sweep's ``trial:``); for grid and random sweeps, the sweep's
    ``variants`` (every trial's sampled keys, controls included) through a :class:`VariantList`
    (repeats skipped with ``skip_repeats``). ``param_space``: Tune's, needed with ``warm``.
    ``limit``: the sweep's trial count, for the repeat check (``RepeatSkipper``)."""
    from .controls import ControlPairer
    from .repeats import RepeatSkipper

    if search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        metrics = [o.metric for o in search.objectives]
        modes = [o.mode for o in search.objectives]
        study = _warm_study(search, param_space or {}, warm) if warm else {}
        # one objective reported every epoch goes as a plain metric (Optuna sees its history); one
        # reported only at the end as a one-item list, which OptunaSearch reads at completion only
        single = len(metrics) == 1 and metrics[0] in scheduler_metric_names()
        searcher = OptunaSearch(metric=metrics[0] if single else metrics, mode=modes[0] if single else modes,
                                sampler=_sampler(search), **study)
        if search.control is not None:
            searcher = ControlPairer(searcher, search.control)
        if search.skip_repeats:
            return RepeatSkipper(searcher, [(t.point, t.repeat) for t in warm if not t.stopped], base_trial, limit)
        return searcher
    listed = VariantList(variants or ())
    return RepeatSkipper(listed, (), base_trial, limit) if search.skip_repeats else listed
