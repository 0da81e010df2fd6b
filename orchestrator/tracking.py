"""MLflow tracking: one parent run per sweep (driver), one child run per trial (hook).

The parent run id is kept in ``<storage>/<name>/repnas_sweep.json`` so a restarted driver
reuses it; each child run id is kept in the trial checkpoint (hook state) and, failing
that, found again by its ``repnas.trial_name`` tag, so a trial never gets two runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from trainables.hooks import TrialHook
from trainables.schema import flatten_overrides

from . import _storage
from ._sqlite import use_wal
from .redact import public_items, redact

if TYPE_CHECKING:
    from mlflow.entities import Run
    from trainables.config import TrialConfig

    from .config import SweepConfig

__all__ = ["SweepState", "MLflowTrialHook", "start_parent_run", "finish_parent_run",
           "child_runs", "complete_run", "log_parent_artifacts", "client_defaults", "mlflow_params",
           "numeric_metrics", "STATE_FILE"]

STATE_FILE = "repnas_sweep.json"
TAG_SWEEP, TAG_TRIAL, TAG_TRIAL_ID = "repnas.sweep", "repnas.trial_name", "repnas.trial_id"
TAG_MODEL_URI, TAG_ERROR, TAG_PARENT = "repnas.model_uri", "repnas.error", "mlflow.parentRunId"
TAG_STOPPED = "repnas.stopped_early"
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
        text = _storage.read_text(cls.path(cfg))
        return cls(**{**json.loads(text), "tracking_uri": cfg.mlflow.tracking_uri}) if text else None

    def save(self, cfg: SweepConfig) -> None:
        """Write the state file (atomically on local disks), without credentials."""
        _storage.write_text(self.path(cfg), json.dumps({**asdict(self), "tracking_uri": redact(self.tracking_uri)}, indent=2))


def mlflow_params(data: Mapping[str, Any]) -> list[Param]:
    """MLflow params of a nested config: flattened, secret keys skipped, URIs redacted."""
    return [Param(k, redact(str(v))[:6000]) for k, v in public_items(flatten_overrides(data)).items()]


def client_defaults() -> None:
    """MLflow client settings unless set in the environment: short HTTP retries (an unreachable
    server costs seconds, not minutes per call; the hook buffers instead) and no run URLs
    printed (a tracking URI may carry credentials); SQLite stores in WAL mode (``_sqlite``)."""
    for key, value in _CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    use_wal()


def numeric_metrics(values: Mapping[str, Any], step: int, timestamp_ms: int) -> list[Metric]:
    """MLflow metrics of the numeric entries of ``values`` (bools and strings skipped)."""
    return [Metric(k, float(v), timestamp_ms, step) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]


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
    location = None
    uri = cfg.mlflow.tracking_uri
    if uri.startswith("sqlite:///"):  # artifacts next to the database, not in the cwd
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return client.create_experiment(cfg.experiment_name, artifact_location=location)


def start_parent_run(cfg: SweepConfig, resume: bool) -> SweepState:
    """Create the sweep's parent run (or reopen it on resume) and persist its id."""
    client_defaults()
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
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags
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


def finish_parent_run(state: SweepState, ok: bool) -> None:
    """Mark the parent run FINISHED or FAILED."""
    MlflowClient(state.tracking_uri).set_terminated(state.parent_run_id, "FINISHED" if ok else "FAILED")


def child_runs(state: SweepState) -> dict[str, Run]:
    """The sweep's child runs by trial name."""
    client = MlflowClient(state.tracking_uri)
    runs = client.search_runs([state.experiment_id], f"tags.{TAG_PARENT} = '{state.parent_run_id}'",
                              max_results=50000)
    return {r.data.tags.get(TAG_TRIAL, r.info.run_name): r for r in runs}


def _current_trial_id() -> str | None:
    try:
        import warnings

        from ray import tune

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "only meant to be called inside a Tuner"
            return tune.get_context().get_trial_id()
    except Exception:  # noqa: BLE001 - outside a Tune session there is no trial id
        return None


class MLflowTrialHook(TrialHook):
    """Child run per trial: params, per-epoch metrics (step = epoch), exports, fused model.

    Idempotent across restores: the run id is part of the checkpointed state; without
    state an existing child with the same trial name is reused; epochs already logged
    are skipped, so the metric history stays continuous with one point per step.

    Never fails the trial: an MLflow error is logged as a warning, the epoch's metrics
    stay buffered (``pending``, also in the checkpoint) and are sent with the next epoch
    that gets through; ``unlogged`` lists what failed at the time. Whatever is still
    missing is filled in from Ray's results at the end of the sweep or by
    ``python -m orchestrator.sync SWEEP.yaml``.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 model_name: str = MODEL_NAME) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.model_name = model_name
        self.run_id: str | None = None
        self.pending: dict[int, dict[str, float]] = {}
        self.unlogged: list[str] = []
        self._trial: tuple[TrialConfig, str] | None = None
        self._opened = False
        self._logged_through = 0

    @property
    def client(self) -> MlflowClient:
        """A client for the tracking URI (cheap; not pickled)."""
        return MlflowClient(self.tracking_uri)

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "pending": {str(k): v for k, v in self.pending.items()},
                "unlogged": self.unlogged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id") or self.run_id
        self.pending = {int(k): v for k, v in state.get("pending", {}).items()}
        self.unlogged = list(state.get("unlogged", []))

    def _attempt(self, what: str, action: Callable[[], None]) -> None:
        """Run an MLflow action; on failure warn, remember ``what`` and let training go on."""
        try:
            action()
        except Exception as err:  # noqa: BLE001 - any tracking failure must not end the trial
            self.unlogged.append(what)
            reason = redact(str(err).splitlines()[0] if str(err) else type(err).__name__)
            print(f"MLflow at {redact(self.tracking_uri)} failed while logging {what} ({reason}); training "
                  "continues. Fill it in later with `python -m orchestrator.sync SWEEP.yaml`.", file=sys.stderr)

    def _find(self, trial_name: str) -> str | None:
        query = f"tags.{TAG_PARENT} = '{self.parent_run_id}' and tags.`{TAG_TRIAL}` = '{trial_name}'"
        runs = self.client.search_runs([self.experiment_id], query, max_results=1,
                                       order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    def on_start(self, config: TrialConfig, trial_name: str, resumed: bool) -> None:
        client_defaults()
        self._trial = (config, trial_name)
        self._attempt("the child run", self._open)

    def _open(self) -> None:
        """Create or reopen the child run (params once), learn which epochs it already has."""
        if self._opened or self._trial is None:
            return
        config, trial_name = self._trial
        client = self.client
        self.run_id = self.run_id or self._find(trial_name)
        if self.run_id is None:
            tags = {TAG_PARENT: self.parent_run_id, TAG_TRIAL: trial_name}
            trial_id = _current_trial_id()
            if trial_id:
                tags[TAG_TRIAL_ID] = trial_id
            self.run_id = client.create_run(self.experiment_id, run_name=trial_name, tags=tags).info.run_id
        else:
            client.update_run(self.run_id, status="RUNNING")
        run = client.get_run(self.run_id)
        if not run.data.params:
            client.log_batch(self.run_id, params=mlflow_params(config.to_dict()))
        history = client.get_metric_history(self.run_id, "epoch")
        self._logged_through = max((m.step for m in history), default=0)
        self._opened = True

    def on_epoch(self, metrics: dict[str, float], epoch: int) -> None:
        self.pending[epoch] = dict(metrics)
        self._attempt(f"epoch {epoch} metrics", self._flush)

    def _flush(self) -> None:
        """Send the buffered epochs in order (those MLflow already has are dropped)."""
        self._open()
        for step in sorted(self.pending):
            if step > self._logged_through:
                self._log(self.pending[step], step)
                self._logged_through = step
            del self.pending[step]

    def _log(self, metrics: Mapping[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=numeric_metrics(metrics, step, now))

    def on_end(self, metrics: dict[str, float], export_dir: Path) -> None:
        self._attempt("the final metrics, artifacts and fused model", lambda: self._end(metrics, Path(export_dir)))

    def _end(self, metrics: dict[str, float], export_dir: Path) -> None:
        self._flush()
        assert self.run_id is not None
        complete_run(self.client, self.tracking_uri, self.run_id, metrics, export_dir, self.model_name)

    def on_error(self, error: BaseException) -> None:
        self._attempt("the trial's end status", lambda: self._fail(error))

    def _fail(self, error: BaseException) -> None:
        self._open()
        if self.run_id is None:
            return
        client = self.client
        if isinstance(error, SystemExit) and error.code in (0, None):
            # Ray Tune stops a trial (scheduler, stop criteria) with sys.exit(0)
            client.set_tag(self.run_id, TAG_STOPPED, "true")
            client.set_terminated(self.run_id, "FINISHED")
            return
        if isinstance(error, KeyboardInterrupt):
            client.set_terminated(self.run_id, "KILLED")
            return
        client.set_tag(self.run_id, TAG_ERROR, redact(f"{type(error).__name__}: {error}")[:5000])
        client.set_terminated(self.run_id, "FAILED")


def complete_run(client: MlflowClient, tracking_uri: str, run_id: str, metrics: Mapping[str, Any],
                 export_dir: Path, model_name: str = MODEL_NAME) -> None:
    """Finish a trial's child run: final metrics, export artifacts, fused model, FINISHED.

    Idempotent: a run that already has its model only gets its status set."""
    run = client.get_run(run_id)
    if TAG_MODEL_URI not in run.data.tags:
        step = int(metrics.get("epoch", 0) or 0)
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=numeric_metrics(
            {k: v for k, v in metrics.items() if k not in run.data.metrics}, step, now))
        from . import _model

        for f in _model.artifact_files(export_dir):
            client.log_artifact(run_id, str(f))
        model_uri = _model.log_fused_model(tracking_uri, run_id, export_dir, model_name, step)
        client.log_batch(run_id, tags=[RunTag(TAG_MODEL_URI, model_uri)])
    client.set_terminated(run_id, "FINISHED")
