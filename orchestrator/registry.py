"""Register the Pareto trials' fused models in the MLflow Model Registry, with aliases."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from .config import Objective
from .pareto import best_by, front
from .records import TrialRecord
from .tracking import TAG_TRIAL, fluent_tracking_uri

__all__ = ["Registered", "register_models"]


@dataclass
class Registered:
    """One registered model version and its aliases."""

    trial_name: str
    version: str
    aliases: list[str]


def _version_for(client: MlflowClient, name: str, record: TrialRecord) -> str:
    """Existing version from this run (a re-run summary), else a new one."""
    import mlflow

    for mv in client.search_model_versions(f"name = '{name}'"):
        if mv.run_id == record.run_id or mv.tags.get(TAG_TRIAL) == record.trial_name:
            return mv.version
    mv = mlflow.register_model(record.model_uri, name, tags={TAG_TRIAL: record.trial_name})
    return mv.version


def register_models(tracking_uri: str, name: str, records: Sequence[TrialRecord],
                    objectives: Sequence[Objective], which: str) -> list[Registered]:
    """Register ``which`` models ("pareto" | "all" | "none"); aliases ``pareto-<i>`` (front
    order, best first objective first) and ``best-<metric>`` per objective."""
    if which == "none":
        return []
    client = MlflowClient(tracking_uri)
    with_model = [r for r in records if r.model_uri and r.run_id]
    chosen = front(with_model, objectives)
    if which == "all":
        chosen += [r for r in with_model if r not in chosen]
    aliases: dict[str, list[str]] = {r.trial_name: [] for r in chosen}
    for i, r in enumerate(front(with_model, objectives), start=1):
        aliases[r.trial_name].append(f"pareto-{i}")
    for obj in objectives:
        best = best_by(with_model, obj)
        if best is not None and best.trial_name in aliases:
            aliases[best.trial_name].append(f"best-{obj.metric}")
    out = []
    with fluent_tracking_uri(tracking_uri):  # mlflow.register_model is fluent
        for r in chosen:
            version = _version_for(client, name, r)
            for alias in aliases[r.trial_name]:
                client.set_registered_model_alias(name, alias, version)
            out.append(Registered(r.trial_name, version, aliases[r.trial_name]))
    return out
