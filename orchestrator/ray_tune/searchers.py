"""The outer search algorithm: a sweep's ``search:`` section -> a Ray Tune searcher."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..sweep import SearcherConfig

if TYPE_CHECKING:
    from ray.tune.search import Searcher

__all__ = ["make_searcher"]


def _sampler(search: SearcherConfig) -> Any:
    import optuna

    kwargs: dict[str, Any] = {"seed": search.seed}
    if search.sampler in ("nsgaii", "nsgaiii") and search.population_size is not None:
        kwargs["population_size"] = search.population_size
    cls = {"tpe": optuna.samplers.TPESampler, "nsgaii": optuna.samplers.NSGAIISampler,
           "nsgaiii": optuna.samplers.NSGAIIISampler, "random": optuna.samplers.RandomSampler}
    return cls[search.sampler](**kwargs)


def make_searcher(search: SearcherConfig) -> Searcher | Any:
    """OptunaSearch (objective lists go to the searcher only) or a BasicVariantGenerator."""
    if search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        metrics = [o.metric for o in search.objectives]
        modes = [o.mode for o in search.objectives]
        if len(metrics) == 1:
            return OptunaSearch(metric=metrics[0], mode=modes[0], sampler=_sampler(search))
        return OptunaSearch(metric=metrics, mode=modes, sampler=_sampler(search))
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(max_concurrent=search.max_concurrent or 0, random_state=search.seed)
