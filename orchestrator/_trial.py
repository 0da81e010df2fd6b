"""The orchestrator's view of ``trainables``: metric names and trial-config validation."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

from trainables.config import TrialConfig
from trainables.metrics import EPOCH_METRICS, FINAL_METRICS, OPTIONAL_FINAL_METRICS
from trainables.schema import ConfigError, apply_overrides, did_you_mean, flatten_overrides, join_path

from .space import SpaceParam

__all__ = ["metric_names", "epoch_metric_names", "validate", "resolve"]

_NOT_OBJECTIVES = ("done", "epoch", "phase_id")


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
    """Validate ``trial:`` and every value the space can sample (errors name ``space.<key>``)."""
    config = resolve(base_trial, {})
    for p in params:
        path = join_path("space", p.key)
        check_key(p.key, path)
        for value in p.probe_values():
            try:
                resolve(base_trial, {p.key: value})
            except ConfigError as err:
                raise ConfigError(path, f"value {value!r} is invalid: {err}") from None
    return config
