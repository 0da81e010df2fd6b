"""The part every searcher wrapper of a sweep shares (``RepeatSkipper``, ``ControlPairer``).

Tune saves a search algorithm through ``save``/``restore`` and, as for its own
``ConcurrencyLimiter``, a wrapper's state through ``get_state``/``set_state``: the inner
searcher is saved by its own ``save``, the wrapper's attributes (all but ``searcher``) as state,
so a resumed sweep carries on where the wrapper stood.
"""

from __future__ import annotations

import copy
from typing import Any

from ray.tune.search import Searcher

__all__ = ["SearcherWrapper"]


class SearcherWrapper(Searcher):
    """A :class:`Searcher` around ``searcher``: properties set on, and saves done by, the inner one."""

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def get_state(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["searcher"]
        return copy.deepcopy(state)

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
