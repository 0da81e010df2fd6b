"""The outer search space: YAML spec -> :class:`SpaceParam` -> Ray Tune distributions."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from trainables.config.schema import did_you_mean, flatten_overrides, join_path
from trainables.errors import ConfigError

__all__ = ["SpaceParam", "parse_space", "param_space", "sample_overrides", "trial_count"]

Kind = Literal["choice", "grid", "uniform", "loguniform", "randint", "constant"]
DISTRIBUTIONS: tuple[str, ...] = ("choice", "grid", "uniform", "loguniform", "randint")


@dataclass(frozen=True)
class SpaceParam:
    """One outer-search dimension over a dotted trial key (e.g. ``search.budget``)."""

    key: str
    kind: Kind
    values: tuple[Any, ...]  # choice/grid: options; uniform/loguniform/randint: (lo, hi); constant: (v,)

    @property
    def sampled(self) -> bool:
        """Whether this dimension varies across trials."""
        return self.kind != "constant"

    def probe_values(self) -> tuple[Any, ...]:
        """Values that must all be valid trial values (options, or the range's ends)."""
        if self.kind == "randint":  # Ray's randint excludes the upper bound
            return (self.values[0], self.values[1] - 1)
        return self.values

    def trial_keys(self) -> tuple[str, ...]:
        """The dotted trial keys this dimension sets: its own, or (a group of mappings) each key
        its mappings set."""
        own = self.key.removeprefix("trial.")
        nested = sorted({k for v in self.values if isinstance(v, Mapping) for k in flatten_overrides(v)})
        return tuple(f"{own}.{k}" for k in nested) if nested else (own,)

    def key_values(self, key: str) -> tuple[Any, ...]:
        """This dimension's :meth:`probe_values` at dotted trial ``key`` (a group's values for it,
        from the mappings that set it); empty when it does not set ``key``."""
        own = self.key.removeprefix("trial.")
        if own == key:
            return self.probe_values()
        if not key.startswith(own + "."):
            return ()
        flat = [flatten_overrides(v) for v in self.values if isinstance(v, Mapping)]
        return tuple(f[key[len(own) + 1:]] for f in flat if key[len(own) + 1:] in f)

    def to_spec(self) -> Any:
        """Back to the YAML form."""
        if self.kind == "constant":
            return self.values[0]
        return {self.kind: list(self.values)}


def parse_space(raw: Any, path: str = "space") -> list[SpaceParam]:
    """Parse ``space:`` (dotted trial key -> distribution mapping or constant)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(path, f"expected a mapping of dotted trial keys to distributions; got {raw!r}")
    return [_parse_param(str(key), spec, join_path(path, str(key))) for key, spec in raw.items()]


def _parse_param(key: str, spec: Any, path: str) -> SpaceParam:
    if not isinstance(spec, Mapping):
        return SpaceParam(key, "constant", (spec,))
    if len(spec) != 1:
        raise ConfigError(path, f"expected exactly one of {', '.join(DISTRIBUTIONS)} "
                                f"(e.g. {{choice: [0.25, 0.5]}}); got keys {sorted(map(str, spec))}")
    ((kind, args),) = spec.items()
    kind = str(kind)
    if kind not in DISTRIBUTIONS:
        raise ConfigError(join_path(path, kind), f"unknown distribution{did_you_mean(kind, DISTRIBUTIONS)}; "
                                            f"expected one of {', '.join(DISTRIBUTIONS)}")
    where = join_path(path, kind)
    if not isinstance(args, list):
        raise ConfigError(where, f"expected a list; got {args!r}")
    if kind in ("choice", "grid"):
        if not args:
            raise ConfigError(where, "expected a non-empty list of values")
        return SpaceParam(key, kind, tuple(args))  # type: ignore[arg-type]
    return SpaceParam(key, kind, _bounds(kind, args, where))  # type: ignore[arg-type]


def _bounds(kind: str, args: list[Any], path: str) -> tuple[float, float]:
    if len(args) != 2:
        raise ConfigError(path, f"expected [low, high]; got {len(args)} value(s)")
    want = int if kind == "randint" else (int, float)
    for i, v in enumerate(args):
        if isinstance(v, str) and kind != "randint":
            try:
                v = args[i] = float(v)
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, want) or not math.isfinite(v):
            what = "an integer" if kind == "randint" else "a finite number"
            raise ConfigError(join_path(path, i), f"expected {what}; got {v!r}")
    lo, hi = args
    if not lo < hi:
        raise ConfigError(path, f"expected low < high; got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(path, f"loguniform needs low > 0; got {lo}")
    return (lo, hi)


def _domain(p: SpaceParam, grid_choices: bool) -> Any:
    from ray import tune

    if p.kind == "grid" or (p.kind == "choice" and grid_choices):
        return tune.grid_search(list(p.values))
    if p.kind == "choice":
        return tune.choice(list(p.values))
    make = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[p.kind]
    return make(*p.values)


def param_space(params: Sequence[SpaceParam], algorithm: str) -> dict[str, Any]:
    """Tune ``param_space``: only the sampled dotted keys (constants go into the base trial)."""
    return {p.key: _domain(p, algorithm == "grid") for p in params if p.sampled}


def _grid_params(params: Sequence[SpaceParam], algorithm: str) -> list[SpaceParam]:
    return [p for p in params if p.kind == "grid" or (p.kind == "choice" and algorithm == "grid")]


def trial_count(params: Sequence[SpaceParam], algorithm: str, num_samples: int, paired: bool = False) -> int:
    """Trials the sweep will run: Optuna's ``num_samples``, or Ray's grid size times it; twice
    that when each is ``paired`` with its control (``SweepSearchConfig.paired``)."""
    searched = num_samples if algorithm == "optuna" else \
        math.prod(len(p.values) for p in _grid_params(params, algorithm)) * num_samples
    return 2 * searched if paired else searched


def sample_overrides(params: Sequence[SpaceParam], algorithm: str, count: int,
                     seed: int | None) -> list[dict[str, Any]]:
    """Up to ``count`` example trial overrides, without Ray running (for ``--dry-run``)."""
    rng = random.Random(seed)
    sampled = [p for p in params if p.sampled]
    grid = _grid_params(sampled, algorithm)
    rest = [p for p in sampled if p not in grid]
    points = itertools.islice(itertools.cycle(itertools.product(*(p.values for p in grid))), count)
    out = []
    for point in points:
        override = dict(zip((p.key for p in grid), point))
        for p in rest:
            override[p.key] = _draw(p, rng)
        out.append(override)
    return out


def _draw(p: SpaceParam, rng: random.Random) -> Any:
    if p.kind == "choice":
        return rng.choice(p.values)
    lo, hi = p.values
    if p.kind == "uniform":
        return rng.uniform(lo, hi)
    if p.kind == "loguniform":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return rng.randrange(lo, hi)
