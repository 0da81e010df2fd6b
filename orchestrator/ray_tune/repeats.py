"""Repeated proposals are not trained again: a searcher wrapper (``search.skip_repeats``).

Trials are deterministic (seeded), so a proposal equal to an earlier trial's configuration,
seed included, would train the same network again: Optuna's TPE proposed the best recipe of
our recipe sweep three times (benchmarks/README.md, "A sweep that never pays twice"). Equal
means the same trial once the sweep's ``trial:`` is layered under it, leaving out the keys
that cannot change its training given the others (``trainables.config.identity.trial_identity``: e.g.
``random_sampling`` without a random phase; three trials of the ASHA recipe sweep differed
only in such keys and trained the same network).
:class:`RepeatSkipper` sits between Tune and the searcher. A proposal equal to a trial that
finished (or that the scheduler stopped: it would stop again) becomes a *repeat*: a trial
whose config carries that trial's result (``trainables.config.repeat``), which the trainable reports
without training. A proposal equal to a running trial is held until that trial ends, then
released as its repeat (or as a normal trial, if it failed). The searcher is told every
result under its own trial ids, as if each proposal had been trained. Warm-start trials of
earlier sweeps (``tracking.warm_start``) count as finished.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ray.tune.search import Searcher

from trainables.config.identity import identity_key
from trainables.config.sections import TrialConfig
from trainables.config.repeat import REPEAT_KEY, Repeat
from trainables.errors import ConfigError
from trainables.ray_tune import trial_name

from ..records import TRIAL_METRICS, TrialStatus, numeric_metrics, status_from_result
from .realign import SnapshotTrial, realign_searcher
from .wrapper import SearcherWrapper

__all__ = ["RepeatSkipper", "config_key"]


def config_key(config: Mapping[str, Any], base_trial: Mapping[str, Any] | None = None) -> str:
    """A proposal's identity, canonical (a repeat's marker left out): with ``base_trial`` (the
    sweep's ``trial:`` mapping), the whole trial it describes without its inert keys; else (or
    when the proposal is not a valid trial: it fails in the trial) its sampled keys and values."""
    sampled = {k: v for k, v in config.items() if k != REPEAT_KEY}
    if base_trial is not None:
        try:
            trial = TrialConfig.from_overrides(base_trial, sampled)
        except ConfigError:
            pass
        else:
            return identity_key(trial)
    return json.dumps(sampled, sort_keys=True, default=str)


class RepeatSkipper(SearcherWrapper):
    """Wrap ``searcher`` so that no configuration is trained twice (see the module doc).

    ``known``: results the sweep already has (warm-start trials of earlier sweeps), by config.
    ``base_trial``: the sweep's ``trial:`` mapping, under which proposals are compared
    (:func:`config_key`; without it, literally). ``limit``: the sweep's trial count (Tune's
    ``num_samples``): once the trials emitted and the proposals held reach it, no new proposal is
    drawn, so a held proposal (and a control that follows it) is not crowded out by later ones.
    Tune saves the inner searcher through ``save``/``restore`` and this wrapper's own state
    through ``get_state``/``set_state`` (as for its ``ConcurrencyLimiter``), so a resumed sweep
    keeps its repeats.
    """

    limit: int | None = None  # the default of a wrapper pickled before it had one

    def __init__(self, searcher: Searcher, known: Iterable[tuple[Mapping[str, Any], Repeat]] = (),
                 base_trial: Mapping[str, Any] | None = None, limit: int | None = None) -> None:
        super().__init__(searcher)
        self.base_trial = None if base_trial is None else dict(base_trial)
        self.limit = limit  # the sweep's trials: no proposal is drawn beyond them, held ones included
        self.finished: dict[str, dict[str, Any]] = {self._key(c): r.to_dict() for c, r in known}
        self.running: dict[str, str] = {}  # config key -> the Tune trial training it
        self.held: list[tuple[str, dict[str, Any]]] = []  # (searcher's trial id, config) equal to a running trial
        self.inner_ids: dict[str, str] = {}  # Tune trial id -> the searcher's trial id, every trial emitted
        self.keys: dict[str, str] = {}  # Tune trial id -> config key, every trial emitted

    def _key(self, config: Mapping[str, Any]) -> str:
        return config_key(config, self.base_trial)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        for i, (inner_id, config) in enumerate(self.held):
            key = self._key(config)
            if key in self.finished or key not in self.running:  # its original ended
                del self.held[i]
                return self._emit(trial_id, inner_id, config)
        if self.limit is not None and len(self.keys) + len(self.held) >= self.limit:
            return None  # the rest are held proposals: Tune's count would otherwise end the sweep without them
        config = self.searcher.suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return config
        if self._key(config) in self.running:
            self.held.append((trial_id, config))
            return None  # Tune asks again later, under a new trial id
        return self._emit(trial_id, trial_id, config)

    def _emit(self, trial_id: str, inner_id: str, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` proposed as Tune trial ``trial_id``: a repeat when its result is known."""
        key = self._key(config)
        self.inner_ids[trial_id], self.keys[trial_id] = inner_id, key
        if key in self.finished:
            return {**config, REPEAT_KEY: self.finished[key]}
        self.running[key] = trial_id
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.searcher.on_trial_result(self.inner_ids.get(trial_id, trial_id), result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(self.inner_ids.get(trial_id, trial_id), result=result, error=error)
        self._ended(trial_id, result, error)

    def _ended(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        """A trial ended: the config it trained is no longer running; its result, if it has one, is known."""
        key = self.keys.get(trial_id)
        if key is None or self.running.get(key) != trial_id:
            return
        del self.running[key]
        status = status_from_result(result or {}, errored=error)
        if status in (TrialStatus.FINISHED, TrialStatus.STOPPED) and key not in self.finished:
            metrics = numeric_metrics(result or {}, TRIAL_METRICS)
            self.finished[key] = Repeat(trial_name(trial_id), metrics).to_dict()

    def realign(self, trials: Sequence[SnapshotTrial]) -> None:
        """Agree with the trials Tune restored (``ray_tune.realign``): a lost trial is forgotten,
        one never emitted is adopted (as running), and one the snapshot ended is completed; the
        searcher gets the same trials under its own ids, held proposals included, and does the same."""
        by_id = {t.trial_id: t for t in trials}
        for trial_id in [t for t in self.keys if t not in by_id]:
            key = self.keys.pop(trial_id)
            del self.inner_ids[trial_id]
            if self.running.get(key) == trial_id:
                del self.running[key]
        for t in trials:
            if t.trial_id not in self.keys:
                self.inner_ids[t.trial_id] = t.trial_id
                key = self.keys[t.trial_id] = self._key(t.config)
                if REPEAT_KEY not in t.config and key not in self.running and key not in self.finished:
                    self.running[key] = t.trial_id
            if t.done:
                self._ended(t.trial_id, dict(t.result or {}), error=False)
        inner = [replace(t, trial_id=self.inner_ids[t.trial_id]) for t in trials]
        realign_searcher(self.searcher, [*inner, *(SnapshotTrial(i, c) for i, c in self.held)])
