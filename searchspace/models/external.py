"""Hosts from outside the registry: torchvision classification builders and a user's own factory.

Three name forms reach :func:`searchspace.build_model` besides the registered hosts:

* ``torchvision.<builder>``: any name of ``torchvision.models.list_models(module=torchvision.models)``,
  built with ``weights=None`` (nothing downloads) and ``num_classes``; 3 input channels.
* ``timm.<name>``: any name of ``timm.list_models()`` (timm is an optional extra:
  ``pip install "repnas-tune[timm]"``), built with ``timm.create_model(name, pretrained=False,
  num_classes=..., in_chans=..., **options)``.
* ``package.module:function``: a user's builder, imported; called with its options as keyword
  arguments, plus ``num_classes`` and ``in_channels`` where it has parameters of those names.

Options are the builder's own keyword arguments whatever their names (they travel as one
mapping, never beside this module's own arguments). :func:`refused_options` names the few
that cannot be options: the downloads, and the arguments filled from the data
(``num_classes``; ``in_chans`` for timm; a factory's ``num_classes`` and ``in_channels``).

:func:`build_original` builds the user's model itself; ``build_model`` then converts it
(:func:`searchspace.convert`). Trained weights are the original model's ``state_dict``,
loaded after the conversion with :func:`searchspace.load_original_state_dict`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..errors import FactoryError

__all__ = ["TORCHVISION_PREFIX", "TIMM_PREFIX", "is_external", "torchvision_model_names", "timm_model_names",
           "resolve_factory", "refused_options", "build_original"]

TORCHVISION_PREFIX = "torchvision."
TIMM_PREFIX = "timm."
_DOWNLOADS = "nothing downloads; trained weights come as a local state_dict of the original model (model.weights)"
_REFUSED = {
    TORCHVISION_PREFIX: {"weights": _DOWNLOADS, "progress": _DOWNLOADS, "pretrained": _DOWNLOADS,
                         "num_classes": "set from the dataset's classes"},
    TIMM_PREFIX: {"pretrained": _DOWNLOADS, "pretrained_cfg": _DOWNLOADS, "pretrained_cfg_overlay": _DOWNLOADS,
                  "checkpoint_path": _DOWNLOADS, "num_classes": "set from the dataset's classes",
                  "in_chans": "set from data.channels"},
}
_FACTORY_FILLED = {"num_classes": "set from the dataset's classes", "in_channels": "set from data.channels"}


def is_external(name: str) -> bool:
    """True for ``torchvision.<builder>``, ``timm.<name>`` and ``module:function`` names."""
    return name.startswith((TORCHVISION_PREFIX, TIMM_PREFIX)) or ":" in name


def refused_options(name: str, options: Mapping[str, Any]) -> dict[str, str]:
    """The options of ``options`` that model ``name`` cannot take, each with why (empty: all fine).
    A factory is imported to read its signature."""
    if ":" in name:
        try:
            params = inspect.signature(resolve_factory(name)).parameters
        except (TypeError, ValueError):
            params = {}  # a builtin or C callable, or a factory that does not import (reported by the build)
        refused = {k: why for k, why in _FACTORY_FILLED.items() if k in params}
    else:
        refused = next((r for prefix, r in _REFUSED.items() if name.startswith(prefix)), {})
    return {k: refused[k] for k in options if k in refused}


def timm_model_names() -> list[str]:
    """``timm.<name>`` for every model of ``timm.list_models()``; ``ImportError`` without timm."""
    import timm

    return [TIMM_PREFIX + n for n in timm.list_models()]


def torchvision_model_names() -> list[str]:
    """``torchvision.<builder>`` for every torchvision classification builder, sorted."""
    import torchvision.models

    return [TORCHVISION_PREFIX + n for n in torchvision.models.list_models(module=torchvision.models)]


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    import torchvision.models

    names = torchvision_model_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown torchvision model {name!r}{hint} (allowed: torchvision.<builder> for a builder "
                         f"of torchvision.models.list_models(module=torchvision.models))")
    return torchvision.models.get_model_builder(name.removeprefix(TORCHVISION_PREFIX))


def resolve_factory(name: str) -> Callable[..., nn.Module]:
    """The callable that ``"package.module:function"`` names (``function`` may be dotted)."""
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute or ":" in attribute:
        raise ValueError(f"factory {name!r} is invalid; allowed: 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is the user's to fix
        raise ValueError(f"cannot import module {module_name!r} of factory {name!r}: "
                         f"{type(err).__name__}: {err}") from None
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r} (factory {name!r})")
        found = getattr(found, part)
    if not callable(found):
        raise ValueError(f"factory {name!r} is a {type(found).__name__}, not callable")
    return found


def _timm_model(name: str, num_classes: int, in_channels: int, options: Mapping[str, Any]) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ValueError(f"{name} needs timm, which is not installed; allowed: pip install 'repnas-tune[timm]' "
                         f"(timm>=1.0)") from None
    short = name.removeprefix(TIMM_PREFIX)
    if short not in timm.list_models():
        close = difflib.get_close_matches(short, timm.list_models(), n=1, cutoff=0.6)
        hint = f"; did you mean 'timm.{close[0]}'?" if close else ""
        raise ValueError(f"unknown timm model {name!r}{hint} (allowed: timm.<name> for a name of timm.list_models())")
    return timm.create_model(short, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options)


def build_original(name: str, num_classes: int, in_channels: int = 3,
                   options: Mapping[str, Any] | None = None) -> nn.Module:
    """The user's model named ``name`` (``torchvision.<builder>``, ``timm.<name>`` or
    ``module:function``), unconverted; ``options`` are its builder's keyword arguments."""
    options = dict(options or {})
    refused = refused_options(name, options)
    if refused:
        key = next(iter(refused))
        raise ValueError(f"option {key!r} is not accepted for {name!r}: {refused[key]}")
    if name.startswith(TIMM_PREFIX):
        return _timm_model(name, num_classes, in_channels, options)
    if ":" not in name:
        builder = _torchvision_builder(name)
        if in_channels != 3:
            raise ValueError(f"{name} takes 3 input channels, got in_channels={in_channels}; "
                             f"allowed: 3 (repeat gray images over 3 channels)")
        return builder(weights=None, num_classes=num_classes, **options)
    factory = resolve_factory(name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # a builtin or C callable: options only
    given = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels)) if k in params}
    if params:
        try:
            inspect.signature(factory).bind(**given, **options)
        except TypeError as err:
            raise ValueError(f"options {options} do not fit factory {name!r}: {err}") from None
    try:
        model = factory(**given, **options)
    except Exception as err:  # noqa: BLE001 - the user's code failing is the factory's problem
        raise FactoryError(f"factory {name!r} raised {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise FactoryError(f"factory {name!r} returned a {type(model).__name__}; allowed: an nn.Module "
                           f"(the model itself, e.g. `return Net(num_classes)`)")
    return model
