"""The RepNAS one-stage search engine: gates and schedules (pure math), the recipe's stateful
pieces, mixed precision, divergence checks, and :class:`SearchEngine`, which trains one supernet
through the random, search and fixed phases."""

from .._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "SearchEngine": "engine", "MaskSampler": "masks", "EngineSync": "sync", "check_finite": "failures",
    "failure_metrics": "failures"
})
