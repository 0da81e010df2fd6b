"""Warm starts (``search.warm_start``): earlier sweeps' finished trials, read from MLflow, for
the sampler to start from.

Each entry names an earlier sweep: its sweep file (its ``name`` and ``mlflow`` keys find its
runs), or its name in this sweep's tracking store. Read from MLflow, so it works after Ray's
results are gone. A trial is used when it finished with a finite value of every objective, or
its scheduler stopped it early (it reaches the study as pruned, with the single objective's
value at each epoch: what an ASHA sweep learnt is mostly in such trials); when its values of
this sweep's sampled keys lie in this space; and when it has the identity of this sweep's trial
at that point (``trainables.config.identity``: every key that decides a result, ``runtime.precision``
and the other runtime keys that change the numbers included). Failed trials and repeats
are not used. Bad entries are ``ConfigError`` s naming ``search.warm_start[i]`` (exit 2 before
Ray starts): an unknown sweep, or one whose space shares no sampled key with this one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from mlflow.tracking import MlflowClient

from trainables.config.identity import identity_difference
from trainables.config.repeat import Repeat
from trainables.config.schema import flatten_overrides
from trainables.errors import ConfigError

from ..ray_tune.searchers import WarmTrial
from ..records import TrialStatus, status_from_mlflow
from ..sweep import SpaceParam, SweepConfig, load_sweep, parse_space
from .parent_run import (
    TAG_ERROR,
    TAG_PARENT,
    TAG_REPEAT_OF,
    TAG_STOPPED,
    TAG_SWEEP,
    TAG_TRIAL,
    client_defaults,
)
from .runs import typed

if TYPE_CHECKING:
    from mlflow.entities import Run

    from .parent_run import SweepState

__all__ = ["WarmStart", "resolve_warm_start", "record_warm_start", "WARM_START_ARTIFACT", "TAG_WARM_START"]

WARM_START_ARTIFACT, TAG_WARM_START = "warm_start.json", "repnas.warm_start"


@dataclass
class WarmStart:
    """The warm-start trials of a sweep and, per earlier sweep, how many were used and why others were not."""

    trials: list[WarmTrial] = field(default_factory=list)
    used: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """One line per earlier sweep, for the console and the parent run."""
        out = []
        for sweep, count in self.used.items():
            stopped = sum(t.stopped for t in self.trials if t.repeat.sweep == sweep)
            why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.get(sweep, {}).items()))
            out.append(f"warm start: {count} trial(s) of sweep {sweep!r}"
                       + (f", {stopped} of them stopped early (given as pruned)" if stopped else "")
                       + (f" (not used: {why})" if why else ""))
        return out

    def to_json(self) -> list[dict[str, Any]]:
        """What the parent run records (``warm_start.json``)."""
        return [{"sweep": t.repeat.sweep, "trial": t.repeat.trial, "run_id": t.repeat.run_id, "point": dict(t.point),
                 "metrics": t.repeat.metrics, "stopped": t.stopped} for t in self.trials]


@dataclass(frozen=True)
class _Source:
    """An earlier sweep: its name, tracking store and sampled keys, and its parent runs."""

    name: str
    client: MlflowClient
    space_keys: frozenset[str]
    parents: list[Run]


def resolve_warm_start(cfg: SweepConfig) -> WarmStart:
    """The warm-start trials of ``cfg`` (empty without ``search.warm_start``)."""
    warm = WarmStart()
    if not cfg.search.warm_start:
        return warm
    client_defaults(cfg.mlflow.tracking_uri)
    for i, entry in enumerate(cfg.search.warm_start):
        path = f"search.warm_start[{i}]"
        source = _source(cfg, entry, path)
        sampled = {p.key.removeprefix("trial.") for p in cfg.sampled}
        if not source.space_keys & sampled:
            raise ConfigError(path, f"sweep {source.name!r} samples {sorted(source.space_keys)}, which share no key "
                                    f"with this sweep's space {sorted(sampled)}; nothing it learnt applies here")
        warm.used[source.name], warm.skipped[source.name] = 0, {}
        for parent in source.parents:
            for run in _children(source.client, parent):
                trial, why = _fit(cfg, source.client, run, source.name)
                if trial is None:
                    warm.skipped[source.name][why] = warm.skipped[source.name].get(why, 0) + 1
                    continue
                warm.trials.append(trial)
                warm.used[source.name] += 1
    return warm


def _source(cfg: SweepConfig, entry: str, path: str) -> _Source:
    """The earlier sweep ``entry`` names: a sweep file (relative to this one's folder or the
    working directory), else a sweep name in this sweep's tracking store."""
    here = Path(cfg.source).parent if cfg.source else Path.cwd()
    candidates = [here / entry, Path(entry)]
    if entry.endswith((".yaml", ".yml")) or any(c.is_file() for c in candidates):
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(path, f"sweep file {entry} not found (looked in {here} and the working directory)")
        try:
            other = load_sweep(found)
        except ConfigError as err:
            raise ConfigError(path, f"sweep file {found} is invalid: {err}") from None
        client = MlflowClient(other.mlflow.tracking_uri)
        parents = _parents(client, other.name, other.experiment_name)
        if not parents:
            raise ConfigError(path, f"sweep {other.name!r} ({found}) has no runs in {other.mlflow.tracking_uri}; "
                                    "run it first")
        return _Source(other.name, client, frozenset(p.key.removeprefix("trial.") for p in other.sampled), parents)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    parents = _parents(client, entry, None)
    if not parents:
        raise ConfigError(path, f"no sweep named {entry!r} in {cfg.mlflow.tracking_uri}; give its sweep file "
                                "(configs/....yaml) or the name of a sweep tracked there")
    return _Source(entry, client, _logged_space_keys(client, parents), parents)


def _parents(client: MlflowClient, name: str, experiment: str | None) -> list[Run]:
    """The parent runs of the sweep called ``name`` (in ``experiment``, or in any experiment)."""
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        ids = [found.experiment_id] if found is not None else []
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    runs = client.search_runs(ids, f"tags.`{TAG_SWEEP}` = '{name}'", max_results=1000)
    return [r for r in runs if TAG_PARENT not in r.data.tags]


def _logged_space_keys(client: MlflowClient, parents: list[Run]) -> frozenset[str]:
    """The sampled keys of a sweep known only by name: from the resolved sweep its parent run logged."""
    import tempfile

    keys: set[str] = set()
    for parent in parents:
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(parent.info.run_id, "sweep/resolved_sweep.yaml", tmp)
            space = parse_space((yaml.safe_load(Path(local).read_text()) or {}).get("space"))
        keys |= {p.key.removeprefix("trial.") for p in space if p.sampled}
    return frozenset(keys)


def _children(client: MlflowClient, parent: Run) -> list[Run]:
    return client.search_runs([parent.info.experiment_id], f"tags.{TAG_PARENT} = '{parent.info.run_id}'",
                              max_results=50000)


def _fit(cfg: SweepConfig, client: MlflowClient, run: Run, sweep: str) -> tuple[WarmTrial | None, str]:
    """The warm-start trial ``run`` gives this sweep, or None and why not."""
    tags = run.data.tags
    status = status_from_mlflow(run.info.status, tags.get(TAG_STOPPED) == "true")
    stopped = status is TrialStatus.STOPPED
    if status not in (TrialStatus.FINISHED, TrialStatus.STOPPED) or TAG_ERROR in tags:
        return None, "failed or unfinished"
    if TAG_REPEAT_OF in tags:
        return None, "repeats"
    values = {o.metric: run.data.metrics.get(o.metric, math.nan) for o in cfg.objectives}
    if not stopped and not all(math.isfinite(v) for v in values.values()):
        return None, "without every objective"
    params = {k: typed(v) for k, v in run.data.params.items()}
    point = {}
    for p in cfg.sampled:
        value = _value_in(p, params)
        if value is _MISSING:
            return None, f"outside the space at {p.key}"
        point[p.key] = value
    try:
        here = cfg.trial_config(point)  # this sweep's trial at that point
    except ConfigError:
        return None, "not a valid trial of this sweep"
    differs = identity_difference(here, params)  # the one trial identity, runtime keys included
    if differs is not None:
        return None, f"with another {differs}"
    name = tags.get(TAG_TRIAL, run.info.run_name)
    intermediate = {}
    if stopped and len(cfg.objectives) == 1:  # Optuna keeps intermediate values for one objective only
        history = client.get_metric_history(run.info.run_id, cfg.objectives[0].metric)
        intermediate = {m.step: m.value for m in history if math.isfinite(m.value)}
    return WarmTrial(point, Repeat(name, dict(run.data.metrics), sweep, run.info.run_id), stopped, intermediate), ""


_MISSING = object()


def _value_in(p: SpaceParam, params: dict[str, Any]) -> Any:
    """The value of dimension ``p`` a run's params hold, if it lies in ``p``'s domain."""
    own = p.key.removeprefix("trial.")
    if any(isinstance(v, dict) for v in p.values):  # a group: the option whose keys the run matches
        for option in p.values:
            flat = flatten_overrides({own: option})
            if all(params.get(k, _MISSING) == v for k, v in flat.items()):
                return option
        return _MISSING
    value = params.get(own, _MISSING)
    if p.kind in ("choice", "grid"):
        return value if value in p.values else _MISSING
    low, high = p.values
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _MISSING
    inside = low <= value < high if p.kind == "randint" else low <= value <= high
    return value if inside and (p.kind != "randint" or isinstance(value, int)) else _MISSING


def record_warm_start(state: SweepState, warm: WarmStart) -> None:
    """The warm start on the sweep's parent run: ``warm_start.json`` (every trial given to the
    sampler: its sweep, trial, run, point and metrics) and tag ``repnas.warm_start`` (the counts)."""
    import json
    import tempfile

    client = MlflowClient(state.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / WARM_START_ARTIFACT
        path.write_text(json.dumps(warm.to_json(), indent=1))
        client.log_artifact(state.parent_run_id, str(path))
    client.set_tag(state.parent_run_id, TAG_WARM_START, "; ".join(warm.lines()))
