"""Validate a sweep's trials before Ray starts: ``trial:`` and every trial the space can sample."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from trainables.run.build import check_trial_model
from trainables.config.sections import TrialConfig, check_trial_key
from trainables.config.schema import join_path
from trainables.errors import ConfigError

from .space import SpaceParam

__all__ = ["validate_trials"]

_MODEL_SECTIONS = ("model", "search", "data")  # keys that decide the model and its budget
_MAX_COMBINATIONS = 512  # beyond this, each key's values are checked one at a time


def validate_trials(base_trial: dict[str, Any], params: Sequence[SpaceParam]) -> TrialConfig:
    """Validate ``trial:`` and every trial the space can sample, without data or training: each
    key's values (the ends of a range), and every combination of the values of the keys that
    decide the model (``model.*``, ``search.*``, ``data.*``), built on the meta device so a
    budget above the host's candidate count is an error here. Errors name ``space.<key>``
    (``trial.<key>`` when the trial section itself is wrong). Returns the base trial's config."""
    config = TrialConfig.from_overrides(base_trial, {})
    for p in params:
        check_trial_key(p.key, join_path("space", p.key))
    related = [p for p in params if p.key.split(".", 1)[0] in _MODEL_SECTIONS]
    if _count(related) <= _MAX_COMBINATIONS:
        combos = [dict(zip((p.key for p in related), values))
                  for values in itertools.product(*(p.probe_values() for p in related))]
    else:
        combos = [{p.key: v} for p in related for v in p.probe_values()]
    cache: dict[str, list[int] | None] = {}

    def check(combo: dict[str, Any]) -> None:
        check_trial_model(TrialConfig.from_overrides(base_trial, combo), cache)

    for combo in combos:
        try:
            check(combo)
        except ConfigError as err:
            raise _named(err, combo, check) from None
    for p in params:
        if p not in related:
            for value in p.probe_values():
                try:
                    TrialConfig.from_overrides(base_trial, {p.key: value})
                except ConfigError as err:
                    raise _named(err, {p.key: value}, check) from None
    return config


def _count(params: Sequence[SpaceParam]) -> int:
    total = 1
    for p in params:
        total *= len(p.probe_values())
    return total


def _named(err: ConfigError, combo: dict[str, Any], check: Callable[[dict[str, Any]], None]) -> ConfigError:
    """The error of one sampled combination, named after the space key that alone causes it
    (or, when only the combination fails, the first key with the others listed)."""
    if not combo:
        return err
    for key, value in combo.items():
        try:
            check({key: value})
        except ConfigError as alone:
            return ConfigError(join_path("space", key), f"value {value!r} is invalid: {alone}")
    blamed, *rest = combo
    others = {k: combo[k] for k in rest}
    return ConfigError(join_path("space", blamed), f"value {combo[blamed]!r} together with {others} is invalid: {err}")
