"""The model a trial names: a registered host, ``torchvision.<builder>``, ``timm.<name>`` or a
user's ``package.module:function``, and the options its builder may take.

Checked from the config alone (a factory is not imported here: its own parameters are
checked where the model is built, ``trainables.run.build``). Options are the builder's own
keyword arguments whatever their names; refused are only those filled from the data
(``num_classes``, ``in_chans``/``in_channels``) and downloads (``searchspace.refused_options``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from searchspace import (
    TIMM_PREFIX,
    TORCHVISION_PREFIX,
    list_models,
    refused_options,
    timm_model_names,
    torchvision_model_names,
)

from ..errors import ConfigError
from .schema import did_you_mean, join_path

__all__ = ["check_model_name", "check_factory_name", "check_options"]


def check_model_name(name: str, path: str) -> None:
    """Raise ``ConfigError`` at ``path`` unless ``name`` names a model that can be built here."""
    if name.startswith(TORCHVISION_PREFIX):
        names = torchvision_model_names()
        if name not in names:
            raise ConfigError(path, f"unknown torchvision model {name!r}{did_you_mean(name, names)}; expected "
                                    f"torchvision.<builder> for a builder of torchvision.models.list_models()")
    elif name.startswith(TIMM_PREFIX):
        _check_timm_name(name, path)
    elif name not in list_models():
        names = list_models()
        hint = did_you_mean(name, names) or _torchvision_hint(name)
        raise ConfigError(path, f"unknown model {name!r}{hint}; available: {', '.join(names)}, "
                                f"torchvision.<builder> or timm.<name>")


def _check_timm_name(name: str, path: str) -> None:
    try:
        names = timm_model_names()
    except ImportError:
        raise ConfigError(path, f"{name} needs timm, which is not installed; install it with "
                                f"pip install 'repnas-tune[timm]' (timm>=1.0)") from None
    if name not in names:
        raise ConfigError(path, f"unknown timm model {name!r}{did_you_mean(name, names)}; expected "
                                f"timm.<name> for a name of timm.list_models()")


def _torchvision_hint(name: str) -> str:
    """`` (did you mean 'torchvision.<name>'?)`` when ``name`` is a torchvision builder's name."""
    return did_you_mean(TORCHVISION_PREFIX + name, torchvision_model_names()) if "." not in name else ""


def check_factory_name(factory: str, path: str) -> None:
    """Raise ``ConfigError`` at ``path`` unless ``factory`` reads ``package.module:function``."""
    module, _, function = factory.partition(":")
    parts = [*module.split("."), *function.split(".")]
    if not module or not function or not all(p.isidentifier() for p in parts):
        raise ConfigError(path, f"{factory!r} is invalid; expected 'package.module:function'")


def check_options(host: str, options: Mapping[str, Any], path: str) -> None:
    """Raise ``ConfigError`` at ``<path>.<key>`` for an option the host's builder cannot take
    (filled from the data, or a download)."""
    for key, why in refused_options(host, options).items():
        raise ConfigError(join_path(path, key), f"{host} does not take {key!r} as an option: {why}")
