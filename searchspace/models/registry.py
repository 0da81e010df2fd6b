"""Model registry: host networks by name (timm's ``register_model`` idiom).

A factory is any callable ``factory(num_classes, in_channels, branches, **options)``
returning an ``nn.Module`` whose KxK convs are ODBBs. Its keyword parameters are the
model's options; :func:`build_model` rejects any other option with a clear error. A
factory that also takes ``reparam`` can build its ODBBs in the online form.

:func:`build_model` also takes ``torchvision.<builder>`` and ``package.module:function``
names (``models/external.py``): it builds that model and converts it
(:func:`searchspace.convert`), with the options as the builder's keyword arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from ..branches import BRANCH_TYPES
from ..convert import convert
from ..forms import REPARAM_FORMS
from ..odbb import check_branches, check_positive_int
from .external import build_original, is_external

__all__ = ["ModelSpec", "register_model", "build_model", "list_models", "model_options"]

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_FIXED_ARGS = ("num_classes", "in_channels", "branches", "reparam")


@dataclass(frozen=True)
class ModelSpec:
    """How a model was built: enough to build it again (``build_model(name, ...)``)."""

    name: str
    num_classes: int
    in_channels: int
    options: dict[str, Any] = field(default_factory=dict)
    branches: tuple[str, ...] = BRANCH_TYPES
    reparam: str = "offline"


def register_model(fn: Factory | None = None, *, name: str | None = None) -> Any:
    """Register a model factory under ``name`` (default: the function's name).

    Use as ``@register_model`` or ``register_model(factory, name="...")``.
    """

    def decorator(factory: Factory) -> Factory:
        key = name or getattr(factory, "__name__", None)
        if not key:
            raise ValueError(f"register_model needs a name for {factory!r}")
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = factory
        return factory

    return decorator(fn) if fn is not None else decorator


def list_models() -> list[str]:
    """Names of the registered hosts, sorted (``torchvision.<builder>``, ``timm.<name>`` and
    ``package.module:function`` names build too, through :func:`build_model`).
    """
    return sorted(_REGISTRY)


def _factory(name: str) -> Callable[..., nn.Module]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_options(name: str) -> dict[str, Any]:
    """The options ``name`` accepts and their defaults."""
    params = inspect.signature(_factory(name)).parameters.values()
    return {p.name: p.default for p in params
            if p.name not in _FIXED_ARGS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    branches: Iterable[str] = BRANCH_TYPES,
    reparam: str = "offline",
    *,
    options: Mapping[str, Any] | None = None,
    **kw_options: Any,
) -> nn.Module:
    """Build a host whose every KxK conv (+BN) is an ODBB with ``branches`` as candidates.

    All block forms fuse into the same deploy network. The model carries ``model.spec`` (a
    :class:`ModelSpec`) so it can be described and rebuilt. ``torchvision.<builder>``,
    ``timm.<name>`` and ``package.module:function`` build that model and convert its conv -> BN
    pairs with fresh blocks; its trained weights load afterwards
    (:func:`searchspace.load_original_state_dict`), function-preserving.

    Args:
        name: a registered host (:func:`list_models`) or an external name as above.
        num_classes: classes of the head.
        in_channels: input channels.
        branches: candidate branch types of every block.
        reparam: ``offline`` (a module per branch), ``online`` (one composed conv per block,
            :class:`searchspace.online.OnlineODBB`), or their quantization-aware arrangements
            ``offline_qa`` / ``online_qa`` (:mod:`searchspace.qa`).
        options: the host's own keyword arguments, whatever their names (``name``, ``branches``...).
        **kw_options: more options as keywords (merged over ``options``).

    Raises:
        ValueError: an unknown host, form or option, or an external model with nothing to convert.
    """
    if reparam not in REPARAM_FORMS:
        raise ValueError(f"reparam={reparam!r} is invalid; allowed: {', '.join(REPARAM_FORMS)}")
    options = {**(options or {}), **kw_options}
    if is_external(name):
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        names = check_branches(branches)
        original = build_original(name, num_classes, in_channels, options)
        model = convert(original, branches=names, reparam=reparam, preserve=False)
        model.spec = ModelSpec(name, num_classes, in_channels, dict(options), names, reparam)
        return model
    factory = _factory(name)
    takes_reparam = "reparam" in inspect.signature(factory).parameters
    if reparam != "offline" and not takes_reparam:
        raise ValueError(f"model {name!r} has no online form (its factory takes no 'reparam'); allowed: offline")
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    names = check_branches(branches)
    allowed = model_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in allowed.items())
        raise ValueError(f"unknown option {', '.join(map(repr, unknown))} for model {name!r}; allowed: {listing}")
    fixed: dict[str, Any] = {"reparam": reparam} if takes_reparam else {}
    model = factory(num_classes=num_classes, in_channels=in_channels, branches=names, **fixed, **options)
    model.spec = ModelSpec(name, num_classes, in_channels, dict(options), names, reparam)
    return model
