"""Recipe presets (``trial.search.preset``) and how trial layers combine.

A trial config is built from layers: a base sweep file's ``trial:``, the extending file's,
``--set``, a sampled trial. :func:`layer_trial` is the one way they combine; a preset set in
a later layer replaces the values an earlier layer gives the keys it sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .schema import apply_overrides, did_you_mean, flatten_overrides, join_path

__all__ = ["RECIPE_PRESETS", "check_preset", "layer_trial", "with_preset"]

RECIPE_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "short": {"random_epochs": 0, "search_epochs": 1, "arch_lr": "auto", "noise_schedule": "cosine",
              "two_stage": True},
}
"""Named search recipes for ``trial.search.preset``: the ``trial.search`` keys each one sets
(over an earlier layer's values, see ``layer_trial``; keys written beside it win).
``paper`` is the defaults (the RepNAS schedule). ``short`` is what the outer sweep
``configs/fashion_mnist_deep_recipe.yaml`` chose on validation for a 10-epoch schedule: no
random phase, one search epoch with alpha's step sized to it and the noise annealed to 0,
then the searched mask retrained from scratch for the remaining epochs (benchmarks/README.md,
"Tuned recipe")."""


def layer_trial(base: Mapping[str, Any], overrides: Mapping[str, Any], path: str = "trial") -> dict[str, Any]:
    """``base`` (a ``trial:`` mapping) with ``overrides`` set as a later layer: the one way trial
    layers combine (an extending sweep file over its base, ``--set``, a sampled trial).

    ``overrides`` holds dotted keys (a leading ``trial.`` is dropped) or nested mappings; a
    mapping value sets each of its keys (``{"search": {"method": "dbb"}}`` sets
    ``search.method``, as a space group does). A ``search.preset`` among them replaces the
    values ``base`` gives the keys that preset sets (a base file's ``search_epochs: 3`` does
    not shadow a later preset); keys set beside the preset still win.
    """
    flat = {key.removeprefix("trial."): value for key, value in flatten_overrides(overrides).items()}
    preset_path = join_path(path, "search.preset")
    if "search.preset" in flat:
        check_preset(flat["search.preset"], preset_path)
        search = base.get("search")
        if isinstance(search, Mapping):
            dropped = RECIPE_PRESETS[flat["search.preset"]]
            base = {**base, "search": {k: v for k, v in search.items() if k not in dropped}}
    return apply_overrides(base, flat)


def with_preset(data: Any, path: str) -> Any:
    """``data`` with ``search.preset``'s keys (``RECIPE_PRESETS``) added where the same mapping does not set them."""
    search = data.get("search") if isinstance(data, Mapping) else None
    if not isinstance(search, Mapping) or "preset" not in search:
        return data
    name = search["preset"]
    check_preset(name, join_path(join_path(path, "search"), "preset"))
    return {**data, "search": {**RECIPE_PRESETS[name], **search}}


def check_preset(name: Any, path: str) -> None:
    """Raise ``ConfigError`` at ``path`` unless ``name`` is a preset of :data:`RECIPE_PRESETS`."""
    if not isinstance(name, str) or name not in RECIPE_PRESETS:
        raise ConfigError(path, f"unknown preset {name!r}{did_you_mean(str(name), RECIPE_PRESETS)}; "
                                f"expected one of: {', '.join(RECIPE_PRESETS)}")
