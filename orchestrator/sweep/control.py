"""``search.control``: the trials that also train every setting plain.

A grid gets the control method as one more value of the space's method dimension
(``search.method``, or a ``search`` group of mappings), or, without one, a new ``search.method``
grid of the base trial's method and the control (:func:`with_control`): it then trains the
control at every other setting of the space (learning rates, seeds, ...) with the base trial's
schedule. Optuna and random sweeps leave the space alone (the sampler never proposes the
control); each trial they propose is followed by its control (:func:`control_of`: the same
values, the method swapped), by ``ray_tune.controls`` or in the random sweep's list
(:func:`with_controls`). Either way these are exactly the trials each searched trial is
compared with (``results.controls``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from trainables.errors import ConfigError

from .space import SpaceParam, sample_overrides, trial_count

if TYPE_CHECKING:
    from .schema import SweepConfig

__all__ = ["with_control", "check_unsampled_control", "control_of", "is_control", "with_controls", "listed_trials",
           "method_keys"]

_METHOD = "search.method"


def _is_group(p: SpaceParam) -> bool:
    """A ``search`` dimension whose values are mappings (a method with its own options)."""
    return p.key.removeprefix("trial.") == "search" and p.sampled and all(isinstance(v, Mapping) for v in p.values)


def with_control(space: Sequence[SpaceParam], control: str, base_method: Any) -> tuple[SpaceParam, ...]:
    """``space`` whose method dimension includes ``control`` (unchanged where it already does)."""
    out = list(space)
    for i, p in enumerate(out):
        key = p.key.removeprefix("trial.")
        if key == _METHOD and p.sampled:
            if control not in p.values:
                out[i] = replace(p, values=(*p.values, control))
            return tuple(out)
        if _is_group(p):
            if not any(v.get("method") == control for v in p.values):
                out[i] = replace(p, values=(*p.values, {"method": control}))
            return tuple(out)
    if base_method == control:
        raise ConfigError("search.control", f"every trial already trains {control!r} (trial.search.method); "
                                            f"the control compares another method with it")
    out = [p for p in out if p.key.removeprefix("trial.") != _METHOD]  # a constant method is the base's
    return (*out, SpaceParam(_METHOD, "grid", (base_method, control)))


def check_unsampled_control(space: Sequence[SpaceParam], control: str, algorithm: str) -> None:
    """Refuse a sampled method dimension that holds ``control``: outside a grid every proposal
    gets its own control, so a sampled control trial would only be paired with itself."""
    for p in space:
        key = p.key.removeprefix("trial.")
        if (key == _METHOD and p.sampled and control in p.values) or \
                (_is_group(p) and any(v.get("method") == control for v in p.values)):
            raise ConfigError(f"space.{p.key}", f"holds the control {control!r}: with search.algorithm "
                                                f"{algorithm} every trial is paired with its own {control} "
                                                f"control (search.control); leave {control!r} out of the space")


def control_of(config: Mapping[str, Any], control: str) -> dict[str, Any]:
    """The control of a proposed trial (its sampled keys): the same values with ``search.method``
    set to ``control``; a ``search`` group of mappings becomes ``{"method": control}``, as the
    grid's control option (:func:`with_control`)."""
    out = dict(config)
    for key, value in config.items():
        own = key.removeprefix("trial.")
        if own == _METHOD:
            out[key] = control
            return out
        if own == "search" and isinstance(value, Mapping):
            out[key] = {"method": control}
            return out
    out[_METHOD] = control
    return out


def is_control(config: Mapping[str, Any], control: str) -> bool:
    """Whether a trial's sampled keys are those of a ``control`` trial (:func:`control_of`'s)."""
    for key, value in config.items():
        own = key.removeprefix("trial.")
        if own == _METHOD:
            return value == control
        if own == "search" and isinstance(value, Mapping):
            return value.get("method") == control
    return False


def method_keys(space: Sequence[SpaceParam]) -> frozenset[str]:
    """The flat trial keys a control replaces (``search.method``, or every key of a ``search``
    group of mappings); a trial and its control agree on every other key."""
    keys = {_METHOD}
    for p in space:
        if _is_group(p):
            keys.update(p.trial_keys())
    return frozenset(keys)


def with_controls(points: Sequence[Mapping[str, Any]], control: str) -> list[dict[str, Any]]:
    """``points`` (trials' sampled keys), each followed by its control."""
    return [trial for p in points for trial in (dict(p), control_of(p, control))]


def listed_trials(cfg: SweepConfig, count: int | None = None) -> list[dict[str, Any]]:
    """The sampled keys of the sweep's first ``count`` trials (default: all of them), each
    searched one followed by its control when the sweep pairs them (``search.paired``): a grid's
    or random sweep's own list, which it proposes in order; examples of an Optuna sweep's."""
    s = cfg.search
    total = trial_count(cfg.space, s.algorithm, s.num_samples, s.paired)
    count = total if count is None else min(count, total)
    points = sample_overrides(cfg.space, s.algorithm, (count + 1) // 2 if s.paired else count, s.seed)
    return with_controls(points, s.control)[:count] if s.control is not None and s.paired else points
