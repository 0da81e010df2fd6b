"""Reading sweep files: one YAML mapping after its ``extends:`` chain, and its ``trial:`` section.

Both the sweep driver (``orchestrator.sweep``) and the one-search CLI (``trainables.cli``)
read sweep files this way, so ``extends:`` means the same to both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .presets import layer_trial

__all__ = ["EXTENDS", "read_sweep_yaml", "load_trial_section"]

EXTENDS = "extends"
"""Sweep-file key naming another sweep file (relative to this one) to start from."""


def read_sweep_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A sweep file as a mapping (``yaml.safe_load``); unreadable or non-mapping files are errors.

    With ``extends: base.yaml`` (relative to this file) the base is read first and this
    file's keys merged on top: mappings merge key by key, other values (lists too)
    replace, and each ``space`` entry replaces the base's entry of that key whole; a
    ``space`` entry set to null removes the base's entry (the key then comes from ``trial:``).
    The ``trial:`` sections layer as every trial layer does (``trainables.config.presets.layer_trial``:
    an empty mapping empties the key; a ``search.preset`` replaces the base's values of its keys).
    """
    return _read_extended(Path(path), ())


def load_trial_section(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``trial:`` mapping of a sweep file (after its ``extends:`` chain); ``{}`` when empty."""
    document = read_sweep_yaml(path)
    if "trial" not in document:
        raise ConfigError("", f"{path} has no top-level `trial:` section (the trial config this command runs)")
    section = document["trial"]
    if section is not None and not isinstance(section, dict):
        raise ConfigError("trial", f"expected a mapping, got {type(section).__name__}")
    return section or {}


def _read_extended(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise ConfigError(EXTENDS, f"sweep files extend each other in a cycle: {chain}")
    data = _read_mapping(path)
    base_name = data.pop(EXTENDS, None)
    if base_name is None:
        return data
    if not isinstance(base_name, str) or not base_name:
        raise ConfigError(EXTENDS, f"expected the path of a sweep file (relative to {str(path)!r}), got {base_name!r}")
    base = _read_extended(path.parent / base_name, (*seen, path.resolve()))
    if isinstance(data.get("trial"), Mapping) and isinstance(base.get("trial"), Mapping):
        data["trial"] = layer_trial(base.pop("trial"), data["trial"])  # a preset here replaces the base's values
    top_space = data.pop("space", None) or {}
    space = {**(base.pop("space", None) or {}), **top_space}
    for key in [key for key, value in top_space.items() if value is None]:
        del space[key]  # null removes the base's entry; only this file's nulls do
    merged = _merge(base, data)
    if space:
        merged["space"] = space
    return merged


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("", f"cannot read sweep file {str(path)!r}: {getattr(err, 'strerror', None) or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError("", f"{str(path)!r} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"{str(path)!r} must hold a mapping of sweep keys, got {type(data).__name__} {data!r:.60}")
    return data
