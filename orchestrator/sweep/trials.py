"""Validate a sweep's trials before Ray starts: ``trial:`` and every trial the space can sample.

Errors come in the order a person reads the file: the fixed ``trial:`` section first, named
``trial.<key>``; then the space, where ``space.<key>`` is blamed only when a sampled value
causes the error, naming that value.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from trainables.run.build import check_trial_model
from trainables.config.sections import TrialConfig, check_trial_key
from trainables.config.schema import join_path
from trainables.errors import ConfigError

from .space import SpaceParam

__all__ = ["validate_trials", "check_sampled", "TrialCheck"]

TrialCheck = Callable[[TrialConfig], None]
"""A check of one trial's config: raises ``ConfigError`` naming the ``trial.<key>`` at fault."""
_MODEL_SECTIONS = ("model", "search", "data", "runtime")  # keys that decide the model, its budget and device
_MAX_COMBINATIONS = 512  # beyond this, each key's values are checked one at a time


def validate_trials(base_trial: dict[str, Any], params: Sequence[SpaceParam]) -> TrialConfig:
    """Validate ``trial:`` and every trial the space can sample, without data or training: each
    key's values (the ends of a range), and every combination of the values of the keys that
    decide the model (``model.*``, ``search.*``, ``data.*``, ``runtime.*``), built on the meta
    device so a budget above the host's candidate count is an error here. Returns the base
    trial's config."""
    config = TrialConfig.from_overrides(base_trial, {})
    for p in params:
        check_trial_key(p.key, join_path("space", p.key))
    cache: dict[str, list[int] | None] = {}
    check_sampled(base_trial, params, lambda cfg: check_trial_model(cfg, cache))
    for p in params:
        if p.key.split(".", 1)[0] not in _MODEL_SECTIONS:
            for value in p.probe_values():
                try:
                    TrialConfig.from_overrides(base_trial, {p.key: value})
                except ConfigError as err:
                    raise _space_error(err, p.key, value) from None
    return config


def check_sampled(base_trial: dict[str, Any], params: Sequence[SpaceParam], check: TrialCheck) -> None:
    """Run ``check`` on ``trial:`` and on every combination of the sampled values of the keys
    that decide the model. An error of ``trial:`` that the space does not change is raised as
    it is (``trial.<key>``); one that a sampled value causes names ``space.<key>`` and the value."""
    related = [p for p in params if p.key.split(".", 1)[0] in _MODEL_SECTIONS]
    if _count(related) <= _MAX_COMBINATIONS:
        combos = [dict(zip((p.key for p in related), values))
                  for values in itertools.product(*(p.probe_values() for p in related))]
    else:
        combos = [{p.key: v} for p in related for v in p.probe_values()]

    def run(combo: dict[str, Any]) -> str | None:
        """The error of the trial with ``combo`` applied (None when it passes)."""
        try:
            check(TrialConfig.from_overrides(base_trial, combo))
        except ConfigError as err:
            return str(err)
        return None

    base_error = _error_of(check, base_trial)
    if base_error is not None and (not combos or run(combos[0]) == str(base_error)):
        raise base_error  # the fixed section is wrong whatever the space samples
    for combo in combos:
        if run(combo) is not None:
            raise _named(combo, run)


def _error_of(check: TrialCheck, base_trial: dict[str, Any]) -> ConfigError | None:
    try:
        check(TrialConfig.from_overrides(base_trial, {}))
    except ConfigError as err:
        return err
    return None


def _count(params: Sequence[SpaceParam]) -> int:
    total = 1
    for p in params:
        total *= len(p.probe_values())
    return total


def _space_error(err: ConfigError | str, key: str, value: Any) -> ConfigError:
    return ConfigError(join_path("space", key), f"value {value!r} is invalid: {err}")


def _named(combo: dict[str, Any], run: Callable[[dict[str, Any]], str | None]) -> ConfigError:
    """The error of one sampled combination, named after the space key whose value alone causes
    it (or, when only the combination fails, the first key with the others listed)."""
    for key, value in combo.items():
        alone = run({key: value})
        if alone is not None:
            return _space_error(alone, key, value)
    blamed, *rest = combo
    others = {k: combo[k] for k in rest}
    return ConfigError(join_path("space", blamed), f"value {combo[blamed]!r} together with {others} "
                                                   f"is invalid: {run(combo)}")
