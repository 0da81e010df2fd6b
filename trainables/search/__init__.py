"""The RepNAS one-stage search engine: gates and schedules (pure math), the recipe's stateful
pieces, mixed precision, divergence checks, and :class:`SearchEngine`, which trains one supernet
through the random, search and fixed phases."""

from . import gates
from .engine import EngineSync, SearchEngine
from .failures import check_finite, failure_metrics

__all__ = ["SearchEngine", "EngineSync", "gates", "check_finite", "failure_metrics"]
