"""Child runs of trials Ray never recorded (the driver died before its next snapshot): a repeat's
run is known as one before it holds any metric, and on resume it is deleted (its metrics are a
copy of the run it links to) while a trained trial's run is kept, tagged and KILLED (real MLflow
on sqlite)."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient
from trainables.config.repeat import Repeat

from orchestrator.records import TrialRecord, TrialStatus
from orchestrator.tracking.child_run import ChildRun, TrialLog
from orchestrator.tracking.from_ray import TAG_ORPHANED, SyncReport, _clean_orphans
from orchestrator.tracking.parent_run import TAG_REPEAT_OF, TAG_REPEAT_RUN, SweepState, child_runs


def _open(client: MlflowClient, state: SweepState, name: str, repeat: Repeat | None = None) -> str:
    log = TrialLog(TrialRecord("", name, TrialStatus.RUNNING), {"optim.lr": 0.1}, repeat=repeat)
    return ChildRun.open(client, state.experiment_id, state.parent_run_id, log, running=True).run_id


def test_a_lost_repeat_is_deleted_and_a_lost_trained_trial_kept(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("orphans", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment).info.run_id
    state = SweepState("orphans", client.tracking_uri, experiment, parent)
    original = _open(client, state, "t0")
    client.log_metric(original, "val_acc", 0.9, step=1)
    repeat = _open(client, state, "t1", Repeat("t0", {"val_acc": 0.9}, run_id=original))
    assert client.get_run(repeat).data.tags[TAG_REPEAT_OF] == "t0"  # linked when opened, before any metric
    assert client.get_run(repeat).data.tags[TAG_REPEAT_RUN] == original
    client.log_metric(repeat, "val_acc", 0.9, step=1)  # the copied result; then the driver dies
    trained = _open(client, state, "t2")
    client.log_metric(trained, "val_acc", 0.5, step=1)
    empty = _open(client, state, "t3")

    report = SyncReport()
    _clean_orphans(client, child_runs(state), {"t0"}, report)  # Ray recorded only t0

    assert report.orphans == 3
    left = child_runs(state)
    assert set(left) == {"t0", "t2"}  # the repeat's copy and the empty run are gone
    assert left["t2"].data.tags[TAG_ORPHANED] == "true" and left["t2"].info.status == "KILLED"
    assert TAG_ORPHANED not in left["t0"].data.tags and left["t0"].info.status == "RUNNING"
    assert client.get_run(repeat).info.lifecycle_stage == client.get_run(empty).info.lifecycle_stage == "deleted"
