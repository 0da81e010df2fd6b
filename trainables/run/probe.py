"""What a trial's start does, short of training: the check behind ``--dry-run``, run before Ray
starts in a real sweep too.

:func:`probe_trial` builds the trial's model on the CPU as the trial does (the factory
imported and called, ``model.weights`` read and loaded), then runs one forward pass in eval
mode on a batch of the trial's input shape, so a head that ignores the dataset's class count
or an input too small for the network is a ``ConfigError`` naming the key, not a trial that
dies after Ray started. No data is read and nothing trains.
"""

from __future__ import annotations

import torch

from ..config.datasets import dataset_info
from ..config.sections import TrialConfig
from ..errors import ConfigError
from .build import build_trial_model, dataset_classes
from .weights import WEIGHTS_KEY, read_state_dict

__all__ = ["probe_trial"]

_BATCH = 2  # BatchNorm in eval mode takes any batch; 2 shows a batch dimension that is not squeezed away


def _host(cfg: TrialConfig) -> tuple[str, str]:
    """(key, name) of the host: ``trial.model.factory`` or ``trial.model.name``."""
    if cfg.model.factory:
        return "trial.model.factory", cfg.model.factory
    return "trial.model.name", cfg.model.host


def _input_error(cfg: TrialConfig, shape: tuple[int, ...], err: Exception) -> ConfigError:
    """The forward's failure, named after the key to change."""
    key, host = _host(cfg)
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    side = shape[-1]
    if "too small" in reason or "Kernel size can't be greater" in reason:
        return ConfigError("trial.data.image_size", (
            f"{host} ({key}) cannot take the {side}x{side} images of {cfg.data.dataset}: its feature maps shrink to "
            f"nothing ({reason}); set data.image_size large enough for it (e.g. 32, or 224 for an ImageNet "
            f"network), or use a host built for small images"))
    return ConfigError(key, f"{host} fails on a batch of {cfg.data.dataset} images of shape {shape} "
                            f"(data.image_size {cfg.data.image_size}, data.channels {cfg.data.channels}): "
                            f"{type(err).__name__}: {reason}")


def probe_trial(cfg: TrialConfig, data_here: bool = True) -> list[str]:
    """Build ``cfg``'s model on the CPU and run one forward; ``ConfigError`` naming the key when
    the trial would fail at its start. ``data_here``: an image folder's classes are read here
    (false on a cluster, whose workers may hold data the driver does not: without its class
    folders here the model is then not probed). Returns lines saying what was taken from ``model.weights`` when it was not a
    plain state_dict."""
    notes = []
    if cfg.model.weights is not None:
        taken = read_state_dict(str(cfg.model.weights), mmap=True).taken
        if taken:
            notes.append(f"{WEIGHTS_KEY}: {taken} from {cfg.model.weights}")
    classes, channels = dataset_classes(cfg), cfg.data.in_channels
    side = cfg.data.image_size or dataset_info(cfg.data.dataset).size  # an image folder's: its first image's
    if classes is None:
        if not data_here:
            return notes  # the head, the weights' head and an architecture file all need the class count
        raise ConfigError("trial.data.root", f"{cfg.data.root} holds no train/<class>/ folders of images "
                                             "(an ImageNet-style root: train/<class>/*.jpg and val/<class>/*.jpg)")
    model = build_trial_model(cfg, classes, channels)
    if side is None:
        return notes  # an image folder without data.image_size: its size is its first image's, read by the trial
    shape = (_BATCH, channels, side, side)
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(shape))
    except Exception as err:  # noqa: BLE001 - whatever the network raises, the trial would raise at step 1
        raise _input_error(cfg, shape, err) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (_BATCH, classes):
        key, host = _host(cfg)
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(key, f"{host} returns {got} for a batch of {_BATCH} images, expected ({_BATCH}, {classes}): "
                               f"one logit per class of {cfg.data.dataset}; "
                               + ("the factory must build its head from its num_classes argument"
                                  if cfg.model.factory else "check model.options"))
    return notes
