"""Serialisable description of a searched architecture and the way back to a model.

An :class:`Architecture` names the host (as ``build_model`` does) and, per ODBB layer,
which candidate branches it keeps and whether it has the identity branch. JSON layout::

    {"format": "searchspace.architecture/v1", "model": "repvgg_a0", "num_classes": 10,
     "in_channels": 3, "options": {...},
     "layers": [{"name": "stages.0.0.conv", "branches": ["kxk", "1x1_kxk"], "identity": false}, ...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .branches import BRANCH_TYPES
from .models.registry import ModelSpec, build_model
from .odbb import check_branches
from .reparam import odbb_layers

__all__ = ["FORMAT", "LayerArch", "Architecture", "architecture_of", "build_from_architecture"]

FORMAT = "searchspace.architecture/v1"
"""Value of the ``format`` key; bump the version on incompatible layout changes."""


@dataclass
class LayerArch:
    """One ODBB layer: its qualified name, kept branches (``BRANCH_TYPES`` order), identity flag."""

    name: str
    branches: list[str]
    identity: bool


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``data[key]`` checked for presence and type, with an error naming both."""
    if key not in data:
        raise ValueError(f"{where}: missing required key {key!r}")
    value = data[key]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{where}: {key}={value!r} is invalid; allowed: {names}")
    return value


@dataclass
class Architecture:
    """A host model (``build_model`` arguments) and the branches each ODBB layer keeps."""

    model: str
    num_classes: int
    in_channels: int
    options: dict[str, Any] = field(default_factory=dict)
    layers: list[LayerArch] = field(default_factory=list)

    @property
    def num_branches(self) -> int:
        """Searchable branches kept over all layers (identity not counted)."""
        return sum(len(layer.branches) for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict, with the ``format`` key."""
        return {
            "format": FORMAT,
            "model": self.model,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "options": dict(self.options),
            "layers": [{"name": la.name, "branches": list(la.branches), "identity": la.identity} for la in self.layers],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Architecture:
        """Validate and read a dict made by :meth:`to_dict`; errors name the bad value."""
        if not isinstance(data, dict):
            raise ValueError(f"architecture: {type(data).__name__} is invalid; allowed: a JSON object")
        fmt = data.get("format")
        if fmt != FORMAT:
            raise ValueError(f"architecture: format={fmt!r} is not supported; allowed: {FORMAT!r}")
        unknown = sorted(set(data) - {"format", "model", "num_classes", "in_channels", "options", "layers"})
        if unknown:
            raise ValueError(f"architecture: unknown key {unknown[0]!r}; allowed: format, model, num_classes, "
                             "in_channels, options, layers")
        layers = []
        for i, item in enumerate(_require(data, "layers", list, "architecture")):
            where = f"architecture.layers[{i}]"
            if not isinstance(item, dict):
                raise ValueError(f"{where}: {item!r} is invalid; allowed: an object with name, branches, identity")
            branches = _require(item, "branches", list, where)
            try:
                kept = check_branches(branches)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
            layers.append(LayerArch(_require(item, "name", str, where), list(kept),
                                    _require(item, "identity", bool, where)))
        return cls(
            model=_require(data, "model", str, "architecture"),
            num_classes=_require(data, "num_classes", int, "architecture"),
            in_channels=_require(data, "in_channels", int, "architecture"),
            options=dict(_require(data, "options", dict, "architecture")),
            layers=layers,
        )

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of :meth:`to_dict`."""
        try:
            return json.dumps(self.to_dict(), indent=indent)
        except TypeError as err:
            raise ValueError(f"architecture options {self.options!r} are not JSON-serialisable: {err}") from None

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        """Parse and validate JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"architecture: invalid JSON ({err}); allowed: the output of Architecture.to_json"
            ) from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path``."""
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Architecture:
        """Read an architecture saved with :meth:`save`."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def architecture_of(model: nn.Module) -> Architecture:
    """What ``model`` keeps: the active branches of each ODBB, as an :class:`Architecture`.

    Args:
        model: a model built by ``build_model`` (it carries ``model.spec``).

    Raises:
        ValueError: ``model`` has no ``ModelSpec`` (not built by ``build_model``).
    """
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"{type(model).__name__} has no ModelSpec in .spec; allowed: models from build_model()")
    layers = [LayerArch(name, list(block.active_branches), block.has_identity) for name, block in odbb_layers(model)]
    return Architecture(spec.name, spec.num_classes, spec.in_channels, dict(spec.options), layers)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, module)


def build_from_architecture(arch: Architecture, reparam: str = "offline") -> nn.Module:
    """A fresh model whose ODBBs hold exactly the listed branches (all active) and identity flags.

    ``reparam`` picks the training form of the blocks (``build_model``'s); the architecture
    itself is the same in both.
    """
    model = build_model(arch.model, arch.num_classes, arch.in_channels, BRANCH_TYPES, reparam, options=arch.options)
    blocks = odbb_layers(model)
    expected = [name for name, _ in blocks]
    given = [layer.name for layer in arch.layers]
    if given != expected:
        diff = sorted(set(given) ^ set(expected)) or "order differs"
        raise ValueError(f"architecture layers {diff} do not match model {arch.model!r}; allowed layers: {expected}")
    for (name, old), layer in zip(blocks, arch.layers):
        try:
            block = type(old)(old.in_channels, old.out_channels, old.kernel_size, old.stride, old.groups,
                         branches=layer.branches, identity=layer.identity)
        except ValueError as err:
            raise ValueError(f"layer {name!r}: {err}") from None
        requested = check_branches(layer.branches)
        if block.branch_names != requested or block.has_identity != layer.identity:
            raise ValueError(
                f"layer {name!r}: branches={list(requested)}, identity={layer.identity} cannot exist there; "
                f"allowed: a subset of {list(old.branch_names)}, identity={old.has_identity}"
            )
        _replace(model, name, block)
    model.spec = ModelSpec(arch.model, arch.num_classes, arch.in_channels, dict(arch.options), BRANCH_TYPES, reparam)
    return model
