"""The sweep's MLflow parent run, its child runs' tags and params, MLflow client settings.

The parent run id is kept in ``<storage>/<name>/repnas_sweep.json`` so a restarted driver
reuses it. Each trial's child run is written by ``tracking.child_run`` (its id is kept in
the trial checkpoint and, failing that, found again by its trial-name tag ``TAG_TRIAL``, so a
trial never gets two runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from trainables.config.schema import flatten_overrides

from ..mlflow_adapter import tracking_uri_for_block
from ..records import RunLink
from ..redact import public_items, redact
from ..sweep import storage
from ..sweep.tracking_uri import sqlite_file, sqlite_path
from .sqlite import create_database, use_wal

if TYPE_CHECKING:
    from mlflow.entities import Run

    from ..sweep import SweepConfig

__all__ = ["fluent_tracking_uri", "SweepState", "start_parent_run", "finish_parent_run", "child_runs", "run_links",
           "log_parent_artifacts", "log_parent_values", "client_defaults", "mlflow_params", "STATE_FILE", "MODEL_NAME", "TAG_SWEEP", "TAG_TRIAL",
           "TAG_TRIAL_ID", "TAG_MODEL_URI", "TAG_ERROR", "TAG_PARENT", "TAG_STOPPED", "TAG_REPEAT_OF",
           "TAG_REPEAT_RUN"]

STATE_FILE = "repnas_sweep.json"
TAG_SWEEP, TAG_TRIAL, TAG_TRIAL_ID = "repnas.sweep", "repnas.trial_name", "repnas.trial_id"
TAG_MODEL_URI, TAG_ERROR, TAG_PARENT = "repnas.model_uri", "repnas.error", "mlflow.parentRunId"
TAG_STOPPED = "repnas.stopped_early"
TAG_REPEAT_OF, TAG_REPEAT_RUN = "repnas.repeat_of", "repnas.repeat_of_run"  # a repeat: the earlier trial, its run
MODEL_NAME = "fused_model"
_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # the URL may carry credentials


@dataclass
class SweepState:
    """What a restarted driver needs to continue the same MLflow parent run."""

    name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    @staticmethod
    def path(cfg: SweepConfig) -> str:
        """Where the state lives: next to Tune's experiment state."""
        return f"{cfg.experiment_path}/{STATE_FILE}"

    @classmethod
    def load(cls, cfg: SweepConfig) -> SweepState | None:
        """The saved state, or None for a sweep that never started (with the config's
        tracking URI: the file holds it redacted)."""
        text = storage.read_text(cls.path(cfg))
        return cls(**{**json.loads(text), "tracking_uri": cfg.mlflow.tracking_uri}) if text else None

    def save(self, cfg: SweepConfig) -> None:
        """Write the state file (atomically on local disks), without credentials."""
        storage.write_text(self.path(cfg), json.dumps({**asdict(self), "tracking_uri": redact(self.tracking_uri)}, indent=2))


def mlflow_params(data: Mapping[str, Any]) -> list[Param]:
    """MLflow params of a nested config: flattened, secret keys skipped, URIs redacted."""
    return [Param(k, redact(str(v))[:6000]) for k, v in public_items(flatten_overrides(data)).items()]


def client_defaults(tracking_uri: str) -> None:
    """MLflow client settings unless set in the environment: short HTTP retries (an unreachable
    server costs seconds, not minutes per call; the hook buffers instead) and no run URLs
    printed (a tracking URI may carry credentials); a SQLite store at ``tracking_uri`` in WAL
    mode (``tracking.sqlite``)."""
    for key, value in _CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    db = sqlite_file(tracking_uri)
    if db is not None:
        use_wal(db)


@contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (``mlflow.start_run``, ``log_model``, ``register_model``) pointed at
    ``uri`` for the block only: MLflow's own setting and ``MLFLOW_TRACKING_URI`` (which MLflow
    sets too, and which would override the next sweep file's ``mlflow.tracking_uri`` read in the
    same process) are both as before afterwards, for a library user's own MLflow calls too."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with tracking_uri_for_block(uri):
            yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def _git_commit(where: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _experiment_id(client: MlflowClient, cfg: SweepConfig) -> str:
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    db = sqlite_path(cfg.mlflow.tracking_uri)  # artifacts next to the database, not in the cwd
    location = (Path(db).parent / "mlartifacts").as_uri() if db else None
    return client.create_experiment(cfg.experiment_name, artifact_location=location)


def start_parent_run(cfg: SweepConfig, resume: bool) -> SweepState:
    """Create the sweep's parent run (or reopen it on resume) and persist its id."""
    client_defaults(cfg.mlflow.tracking_uri)
    db = sqlite_file(cfg.mlflow.tracking_uri)
    if db is not None:
        create_database(db)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    state = SweepState.load(cfg) if resume else None
    if state is not None:
        client.update_run(state.parent_run_id, status="RUNNING")
        return state
    experiment_id = _experiment_id(client, cfg)
    orphan = _unsaved_parent(client, experiment_id, cfg) if resume else None
    if orphan is not None:  # the driver died before it saved the parent run's id: reopen that run
        client.update_run(orphan, status="RUNNING")
        state = SweepState(cfg.name, cfg.mlflow.tracking_uri, experiment_id, orphan)
        state.save(cfg)
        return state
    tags = {TAG_SWEEP: cfg.name, "repnas.objectives": ",".join(f"{o.metric}:{o.mode}" for o in cfg.objectives),
            "repnas.storage": cfg.experiment_path}
    commit = _git_commit(Path(cfg.source).parent if cfg.source else Path.cwd())
    if commit:
        tags["mlflow.source.git.commit"] = commit
    run = client.create_run(experiment_id, run_name=cfg.name, tags=tags)
    resolved = cfg.to_dict()
    resolved.pop("trial")
    client.log_batch(run.info.run_id, params=mlflow_params(resolved))  # MLflow splits large batches
    state = SweepState(cfg.name, cfg.mlflow.tracking_uri, experiment_id, run.info.run_id)
    state.save(cfg)
    _log_sweep_files(client, run.info.run_id, cfg)
    return state


def _unsaved_parent(client: MlflowClient, experiment_id: str, cfg: SweepConfig) -> str | None:
    """The id of this sweep's parent run when a killed driver created it but never saved it."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_SWEEP}` = '{cfg.name}'",
                              order_by=["attributes.start_time ASC"], max_results=100)
    parents = [r for r in runs if TAG_PARENT not in r.data.tags
               and r.data.tags.get("repnas.storage") == cfg.experiment_path]
    return parents[0].info.run_id if parents else None


def _log_sweep_files(client: MlflowClient, run_id: str, cfg: SweepConfig) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        files = {"resolved_sweep.yaml": yaml.safe_dump(cfg.to_dict(), sort_keys=False)}
        if cfg.source and Path(cfg.source).is_file():
            files[Path(cfg.source).name] = Path(cfg.source).read_text()
        for name, text in files.items():
            (Path(tmp) / name).write_text(redact(text))
            client.log_artifact(run_id, str(Path(tmp) / name), "sweep")


def log_parent_artifacts(state: SweepState, files: list[Path], artifact_path: str) -> None:
    """Attach result files (Pareto table, plot) to the parent run."""
    client = MlflowClient(state.tracking_uri)
    for f in files:
        client.log_artifact(state.parent_run_id, str(f), artifact_path)


def log_parent_values(state: SweepState, metrics: Mapping[str, float], tags: Mapping[str, str],
                      run_id: str | None = None) -> None:
    """Sweep-level metrics (the Pareto hypervolume) and tags on the parent run (or on the sweep's
    child run ``run_id``: values known once the sweep ended, such as a trial's gain over its control)."""
    client = MlflowClient(state.tracking_uri)
    client.log_batch(run_id or state.parent_run_id, metrics=[Metric(k, float(v), int(time.time() * 1000), 0)
                                                             for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])


def finish_parent_run(state: SweepState, ok: bool) -> None:
    """Mark the parent run FINISHED or FAILED."""
    MlflowClient(state.tracking_uri).set_terminated(state.parent_run_id, "FINISHED" if ok else "FAILED")


def child_runs(state: SweepState) -> dict[str, Run]:
    """The sweep's child runs by trial name."""
    client = MlflowClient(state.tracking_uri)
    runs = client.search_runs([state.experiment_id], f"tags.{TAG_PARENT} = '{state.parent_run_id}'",
                              max_results=50000)
    return {r.data.tags.get(TAG_TRIAL, r.info.run_name): r for r in runs}


def run_links(runs: dict[str, Run]) -> dict[str, RunLink]:
    """Trial name -> (child run id, fused model URI) of ``child_runs``."""
    return {name: (run.info.run_id, run.data.tags.get(TAG_MODEL_URI)) for name, run in runs.items()}
