"""The trial's side of Ray: the Tune trainable (``make_trainable``), DDP inside a trial through
Ray Train, and the Ray internals a trial uses (``adapter``). The driver's side is
``orchestrator.ray_tune``."""

from .._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "TRAINABLE_NAME": "tune", "make_trainable": "tune", "trial_name": "tune"
})
