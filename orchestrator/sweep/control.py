"""``search.control``: the space that also trains every setting plain.

The control method becomes one more value of the space's method dimension (``search.method``,
or a ``search`` group of mappings), or, without one, a new ``search.method`` grid of the base
trial's method and the control. A grid then trains the control at every other setting of the
space (learning rates, seeds, ...) with the base trial's schedule: exactly the trials each
searched trial is compared with (``results.controls``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from trainables.errors import ConfigError

from .space import SpaceParam

__all__ = ["with_control"]

_METHOD = "search.method"


def with_control(space: Sequence[SpaceParam], control: str, base_method: Any) -> tuple[SpaceParam, ...]:
    """``space`` whose method dimension includes ``control`` (unchanged where it already does)."""
    out = list(space)
    for i, p in enumerate(out):
        key = p.key.removeprefix("trial.")
        if key == _METHOD and p.sampled:
            if control not in p.values:
                out[i] = replace(p, values=(*p.values, control))
            return tuple(out)
        if key == "search" and p.sampled and all(isinstance(v, Mapping) for v in p.values):
            if not any(v.get("method") == control for v in p.values):
                out[i] = replace(p, values=(*p.values, {"method": control}))
            return tuple(out)
    if base_method == control:
        raise ConfigError("search.control", f"every trial already trains {control!r} (trial.search.method); "
                                            f"the control compares another method with it")
    out = [p for p in out if p.key.removeprefix("trial.") != _METHOD]  # a constant method is the base's
    return (*out, SpaceParam(_METHOD, "grid", (base_method, control)))
