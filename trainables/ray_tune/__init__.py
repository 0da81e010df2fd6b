"""The trial's side of Ray: the Tune trainable (``make_trainable``), DDP inside a trial through
Ray Train, and the Ray internals a trial uses (``adapter``). The driver's side is
``orchestrator.ray_tune``."""

from .tune import TRAINABLE_NAME, make_trainable

__all__ = ["make_trainable", "TRAINABLE_NAME"]
