"""Build the trial's model from its config: the ODBB supernet or a fixed architecture.

``search.method`` decides: ``odbb`` builds the supernet over ``search.candidates``; a
baseline name, an explicit branch list or an architecture JSON builds a model whose
ODBBs hold exactly those branches (all active, trained without alpha). Errors that only
show once the model exists (budget above the candidate count, a layer floor above the
budget, bad model options) are raised here as ``ConfigError`` naming the key.
``check_trial_model`` raises the same errors before any trial runs, without data or training.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from searchspace import BRANCH_TYPES, IDENTITY, Architecture, LayerArch, architecture_of, build_from_architecture, build_model, odbb_layers

from .config import BASELINES, TrialConfig
from .gates import budget_to_k, min_kept
from .schema import ConfigError

__all__ = ["build_trial_model", "check_trial_model", "num_candidates"]

# (classes, input channels) of the built-in datasets, known without reading them
# (imagefolder: classes are its folders, so only the channels are known here).
_SHAPES: dict[str, tuple[int | None, int]] = {"digits": (10, 1), "mnist": (10, 1), "fashion_mnist": (10, 1),
                                              "cifar10": (10, 3), "cifar100": (100, 3), "imagefolder": (None, 3)}


def num_candidates(model: nn.Module) -> int:
    """Candidate branches over all ODBB layers (identity excluded)."""
    return sum(len(block.branch_names) for _, block in odbb_layers(model))


def _build(cfg: TrialConfig, num_classes: int, in_channels: int, branches: list[str] | tuple[str, ...]) -> nn.Module:
    try:
        return build_model(cfg.model.name, num_classes, in_channels, branches, cfg.model.reparam, **cfg.model.options)
    except (TypeError, ValueError) as err:
        raise ConfigError("trial.model.options", str(err)) from None


def _fixed_architecture(cfg: TrialConfig, num_classes: int, in_channels: int) -> Architecture:
    """The Architecture a non-searching ``search.method`` asks for."""
    method = cfg.search.method
    if isinstance(method, str) and method.endswith(".json"):
        try:
            arch = Architecture.load(Path(method).expanduser())
        except (OSError, ValueError) as err:
            raise ConfigError("trial.search.method", f"cannot read architecture {method}: {err}") from None
        if (arch.num_classes, arch.in_channels) != (num_classes, in_channels):
            raise ConfigError(
                "trial.search.method",
                f"architecture {method} is for {arch.num_classes} classes / {arch.in_channels} input channels, "
                f"the dataset has {num_classes} / {in_channels}",
            )
        return arch
    if isinstance(method, list):
        wanted, identity = [b for b in method if b != IDENTITY], IDENTITY in method
    else:
        wanted, identity = list(BASELINES[method][0]), BASELINES[method][1]
    host = architecture_of(_build(cfg, num_classes, in_channels, BRANCH_TYPES))
    layers = []
    for layer in host.layers:
        kept = [b for b in layer.branches if b in wanted]
        if not kept and not (identity and layer.identity):
            raise ConfigError("trial.search.method", f"layer {layer.name} would keep no branch of {wanted}")
        layers.append(LayerArch(layer.name, kept, identity and layer.identity))
    return Architecture(host.model, host.num_classes, host.in_channels, host.options, layers)


def _layer_sizes(model: nn.Module) -> list[int]:
    return [len(block.branch_names) for _, block in odbb_layers(model)]


def _check_budget(cfg: TrialConfig, sizes: list[int]) -> None:
    """The budget against the candidate count, and the per-layer floor against the budget."""
    try:
        k = budget_to_k(cfg.search.budget, sum(sizes))
    except ValueError as err:
        raise ConfigError("trial.search.budget", f"{err} ({cfg.model.name} with candidates {cfg.search.candidates})") from None
    floor = cfg.search.layer_floor
    forced = min_kept(sizes, floor)
    if forced > k:
        raise ConfigError("trial.search.layer_floor", f"a floor of {floor} per layer keeps {forced} branches over "
                                                      f"{len(sizes)} layers, more than the budget's {k}")


def build_trial_model(cfg: TrialConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The model the engine trains; checks the budget against the real candidate count."""
    if cfg.search.searching:
        model = _build(cfg, num_classes, in_channels, cfg.search.candidates)
        _check_budget(cfg, _layer_sizes(model))
        return model
    arch = _fixed_architecture(cfg, num_classes, in_channels)
    try:
        return build_from_architecture(arch, cfg.model.reparam)
    except ValueError as err:
        raise ConfigError("trial.search.method", str(err)) from None


def check_trial_model(cfg: TrialConfig, cache: dict[str, list[int] | None] | None = None) -> None:
    """Raise the ``ConfigError`` that :func:`build_trial_model` would raise in the trial (unknown
    model options, a budget above the candidate count, a layer floor above the budget, a layer
    left without branches), from the config alone (a searching model is built on the meta
    device). ``cache`` keeps each model's per-layer candidate counts between calls (one build
    per model)."""
    classes, channels = _SHAPES[cfg.data.dataset]
    method = cfg.search.method
    if classes is None and isinstance(method, str) and method.endswith(".json"):
        return  # the architecture's class count can only be compared with the data
    key = json.dumps([cfg.model.name, cfg.model.options, cfg.search.candidates,
                      "odbb" if cfg.search.searching else method, cfg.data.dataset], sort_keys=True, default=str)
    cache = {} if cache is None else cache
    if key not in cache:
        if cfg.search.searching:
            with torch.device("meta"):
                cache[key] = _layer_sizes(_build(cfg, classes or 2, channels, cfg.search.candidates))
        else:  # reads the host's layers, so built on the CPU (once per method)
            _fixed_architecture(cfg, classes or 2, channels)
            cache[key] = None
    if cache[key] is not None:
        _check_budget(cfg, cache[key])
