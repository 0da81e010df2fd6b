"""Whole-model re-parameterization: a deploy copy with every fusable module folded."""

from __future__ import annotations

import copy

from torch import nn

from .convert import conversion_of
from .odbb import ODBB
from .original import to_original

__all__ = ["reparameterize", "odbb_layers"]


def odbb_layers(model: nn.Module) -> list[tuple[str, ODBB]]:
    """``(qualified name, block)`` of every ODBB in ``model``, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ODBB)]


def _fuse_children(module: nn.Module) -> None:
    """Replace, recursively and in place, every child that has ``fuse()`` by what it returns."""
    for name, child in module.named_children():
        fuse = getattr(child, "fuse", None)
        if callable(fuse):
            setattr(module, name, fuse())
        else:
            _fuse_children(child)


def reparameterize(model: nn.Module) -> nn.Module:
    """Deploy copy of ``model``: ODBBs and ConvBNs folded into plain convs, in eval mode.

    Folding uses the running BN statistics (eval semantics) and only the active branches; gates
    are ignored. The original model is not modified. BatchNorms that are not inside a module with
    ``fuse()`` are left as they are (the registered hosts have none).

    Args:
        model: a supernet from ``build_model``, ``convert`` or a trial.

    Returns:
        Plain convs only, the same outputs; a converted model comes back as the user's own class
        (:func:`searchspace.to_original`).
    """
    if conversion_of(model) is not None:
        return to_original(model).eval()
    deploy = copy.deepcopy(model)
    _fuse_children(deploy)
    return deploy.eval()
