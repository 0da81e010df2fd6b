"""The orchestrator's view of ``trainables``: metric names and trial-config validation."""

from __future__ import annotations

import dataclasses
import itertools
import typing
from collections.abc import Callable, Sequence
from typing import Any

from trainables.build import check_trial_model
from trainables.config import TrialConfig
from trainables.metrics import EPOCH_METRICS, FINAL_METRICS, OPTIONAL_FINAL_METRICS
from trainables.schema import ConfigError, apply_overrides, did_you_mean, flatten_overrides, join_path

from .space import SpaceParam

__all__ = ["metric_names", "epoch_metric_names", "validate", "resolve"]

_NOT_OBJECTIVES = ("done", "epoch", "phase_id")
_MODEL_SECTIONS = ("model", "search", "data")  # keys that decide the model and its budget
_MAX_COMBINATIONS = 512  # beyond this, each key's values are checked one at a time


def metric_names() -> tuple[str, ...]:
    """Every metric a trial reports that can be an objective or a stop criterion."""
    names = EPOCH_METRICS + FINAL_METRICS + OPTIONAL_FINAL_METRICS
    return tuple(n for n in names if n not in _NOT_OBJECTIVES) + ("epoch",)


def epoch_metric_names() -> tuple[str, ...]:
    """Metrics reported after every epoch (what a scheduler such as ASHA can use)."""
    return tuple(n for n in EPOCH_METRICS if n not in _NOT_OBJECTIVES)


def resolve(base_trial: dict[str, Any], overrides: dict[str, Any]) -> TrialConfig:
    """The TrialConfig a trial with these sampled ``overrides`` will run (mapping values are
    groups of keys set together, see ``flatten_overrides``)."""
    return TrialConfig.from_dict(apply_overrides(base_trial, flatten_overrides(overrides)), "trial")


def check_key(key: str, path: str) -> None:
    """Raise unless dotted ``key`` names a TrialConfig field (anything below a mapping field)."""
    node: Any = TrialConfig
    for i, part in enumerate(key.split(".")):
        if not dataclasses.is_dataclass(node):
            if node is Any or typing.get_origin(node) is dict:
                return  # below a free-form mapping such as model.options
            raise ConfigError(path, f"{key!r} is not a trial key: {'.'.join(key.split('.')[:i])} is a value, not a mapping")
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            where = ".".join(key.split(".")[:i]) or "trial"
            raise ConfigError(path, f"{key!r} is not a trial key: {where} has no {part!r}"
                                    f"{did_you_mean(part, names)}; keys there: {', '.join(names)}")
        node = typing.get_type_hints(node)[part]


def validate(base_trial: dict[str, Any], params: Sequence[SpaceParam]) -> TrialConfig:
    """Validate ``trial:`` and every trial the space can sample, without data or training: each
    key's values (the ends of a range), and every combination of the values of the keys that
    decide the model (``model.*``, ``search.*``, ``data.*``), built on the meta device so a
    budget above the host's candidate count is an error here. Errors name ``space.<key>``
    (``trial.<key>`` when the trial section itself is wrong)."""
    config = resolve(base_trial, {})
    for p in params:
        check_key(p.key, join_path("space", p.key))
    related = [p for p in params if p.key.split(".", 1)[0] in _MODEL_SECTIONS]
    if _count(related) <= _MAX_COMBINATIONS:
        combos = [dict(zip((p.key for p in related), values))
                  for values in itertools.product(*(p.probe_values() for p in related))]
    else:
        combos = [{p.key: v} for p in related for v in p.probe_values()]
    cache: dict[str, list[int] | None] = {}

    def check(combo: dict[str, Any]) -> None:
        check_trial_model(resolve(base_trial, combo), cache)

    for combo in combos:
        try:
            check(combo)
        except ConfigError as err:
            raise _named(err, combo, check) from None
    for p in params:
        if p not in related:
            for value in p.probe_values():
                try:
                    resolve(base_trial, {p.key: value})
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
