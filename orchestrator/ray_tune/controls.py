"""Each proposal followed by its control: a searcher wrapper (``search.control`` outside a grid).

A grid holds its controls in its space (``sweep.control.with_control``); Optuna must not: it
would sample the control as one more method and learn from it. :class:`ControlPairer` sits
between the repeat check and the searcher (Tune -> ``RepeatSkipper`` -> ControlPairer ->
OptunaSearch): after each proposal of its searcher it proposes that proposal's control
(``sweep.control.control_of``: the same values, trained plain), whose results the searcher is
never told. Two proposals whose controls are the same trial (they differ only in the method)
thus give the repeat check two equal proposals: the second control is a repeat, not trained
again. Tune runs ``2 x num_samples`` trials (``ray_tune.tuner``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray.tune.search import Searcher

from ..sweep.control import control_of, is_control
from .realign import SnapshotTrial, proposal, realign_searcher
from .wrapper import SearcherWrapper

__all__ = ["ControlPairer"]


class ControlPairer(SearcherWrapper):
    """Wrap ``searcher`` so that each of its proposals is followed by its ``control`` trial.

    Tune saves the inner searcher through ``save``/``restore`` and this wrapper's own state
    (the control proposed next, the control trials running) through ``get_state``/``set_state``,
    so a control due when the driver stopped is still proposed after ``--resume``.
    """

    def __init__(self, searcher: Searcher, control: str) -> None:
        super().__init__(searcher)
        self.control = control
        self.due: dict[str, Any] | None = None  # the control of the last proposal, not yet proposed
        self.controls: dict[str, dict[str, Any]] = {}  # proposed controls that have not completed, by trial id

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.due is not None:
            config, self.due = self.due, None
            self.controls[trial_id] = config
            return config
        config = self.searcher.suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return config
        self.due = control_of(config, self.control)
        return config

    def set_state(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("controls"), set):  # saved before the controls' configs were kept
            state = {**state, "controls": dict.fromkeys(state["controls"], {})}
        super().set_state(state)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id not in self.controls:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if self.controls.pop(trial_id, None) is not None:
            return  # the searcher never proposed it: nothing to learn
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def realign(self, trials: Sequence[SnapshotTrial]) -> None:
        """Agree with the trials Tune restored (``ray_tune.realign``): the open controls are the
        snapshot's, the last proposal's control is due when no trial is it (a lost one is proposed
        again; one whose proposal was lost is not), and the searcher gets the proposals (not the
        controls) to do the same."""
        controls = {t.trial_id for t in trials if is_control(t.config, self.control)}
        self.controls = {t.trial_id: proposal(t.config) for t in trials if t.trial_id in controls and not t.done}
        searched = [i for i, t in enumerate(trials) if t.trial_id not in controls]
        self.due = None
        if searched:  # the last proposal's control is due unless a trial after it already is that control
            last = control_of(proposal(trials[searched[-1]].config), self.control)
            if all(proposal(t.config) != last for t in trials[searched[-1] + 1:]):
                self.due = last
        realign_searcher(self.searcher, [trials[i] for i in searched])
