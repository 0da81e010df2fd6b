"""The RepNAS one-stage search engine: gates and schedules (pure math), the recipe's stateful
pieces, mixed precision, divergence checks, and :class:`SearchEngine`, which trains one supernet
through the random, search and fixed phases."""

from . import gates
from .engine import SearchEngine
from .masks import MaskSampler
from .sync import EngineSync
from .failures import check_finite, failure_metrics

__all__ = ["SearchEngine", "MaskSampler", "EngineSync", "gates", "check_finite", "failure_metrics"]
