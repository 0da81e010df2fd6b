"""Register chosen trials' fused models in the MLflow Model Registry, with aliases."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from ..records import TrialRecord
from .parent_run import TAG_TRIAL, fluent_tracking_uri

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


def register_models(tracking_uri: str, name: str, chosen: Sequence[tuple[TrialRecord, list[str]]]) -> list[Registered]:
    """Register each chosen record's fused model under ``name`` (once per run, however often this
    runs) and point its aliases at that version (``results.pareto.registry_aliases`` chooses)."""
    client = MlflowClient(tracking_uri)
    out = []
    with fluent_tracking_uri(tracking_uri):  # mlflow.register_model is fluent
        for record, aliases in chosen:
            version = _version_for(client, name, record)
            for alias in aliases:
                client.set_registered_model_alias(name, alias, version)
            out.append(Registered(record.trial_name, version, aliases))
    return out
