"""A sweep with ``storage_path: s3://...`` on a real S3 server (moto's, on 127.0.0.1; the ``s3``
fixture), reached as users reach theirs: ``AWS_ENDPOINT_URL`` and the access key in the
environment, read by pyarrow in the driver and in every Ray worker. The driver is killed -9 at
a seeded random instant while trials checkpoint to S3, a second driver is refused meanwhile (its
lease),
and ``--auto-resume`` finishes the sweep: the same results as the uninterrupted local sweep
(``baseline``), one MLflow child run per trial, the Pareto trials' fused models registered, and
``checkpoint.num_to_keep`` holding on the bucket."""

from __future__ import annotations

import json
import random
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from _faults import (
    BUDGETS,
    Driver,
    assert_mlflow_complete,
    assert_same_finals,
    cli,
    result_grid,
    sweep,
    write,
)
from _servers import S3Server
from mlflow.tracking import MlflowClient

from orchestrator.sweep import SweepLock
from trainables.errors import SweepLockedError

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

_CHECKPOINT = re.compile(r"checkpoint_(\d+)$")


def _checkpoints(uri: str) -> dict[str, list[str]]:
    """Checkpoint folders on the bucket, by trial folder."""
    fs, root = pafs.FileSystem.from_uri(uri)
    out: dict[str, list[str]] = {}
    for trial in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if trial.type == pafs.FileType.Directory and trial.base_name.startswith("repnas_trial_"):
            out[trial.base_name] = sorted(
                i.base_name for i in fs.get_file_info(pafs.FileSelector(trial.path, allow_not_found=True))
                if i.type == pafs.FileType.Directory and _CHECKPOINT.match(i.base_name))
    return out


def test_s3_sweep_killed_then_auto_resumed(tmp_path: Path, s3: S3Server, start_driver: Callable[..., Driver],
                                          baseline: dict[float, dict[str, float]]) -> None:
    rng = random.Random(7)
    storage = f"s3://{s3.bucket}/e2e"
    exp = f"{storage}/s3kills"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write(tmp_path, sweep(tmp_path, "s3kills", storage_path=storage))
    driver = start_driver([str(path), "--auto-resume"], log_name="driver0.log", **s3.env)  # nothing there: starts
    target = rng.randint(2, 6)  # checkpoints on the bucket (of 12), then a random fraction of a second
    driver.wait_for(lambda: sum(map(len, _checkpoints(exp).values())) >= target, f"{target} checkpoints on S3", 300)
    with pytest.raises(SweepLockedError, match="already being run by another driver"):  # the driver's lease
        SweepLock(exp).acquire()  # (in-process: a second driver process starts too slowly on a loaded machine)
    time.sleep(rng.uniform(0.0, 0.8))
    driver.sigkill()
    lease = pafs.FileSystem.from_uri(f"{exp}/repnas_sweep.lease")
    assert lease[0].get_file_info(lease[1]).type == pafs.FileType.File  # left by the killed driver

    final = cli("orchestrator.run", [str(path), "--auto-resume"], tmp_path, timeout=600, **s3.env)
    out = final.stdout + final.stderr
    assert final.returncode == 0, out[-5000:]
    assert "resuming sweep 's3kills'" in out  # --auto-resume found the sweep on the bucket
    assert "Could not recover from checkpoint" not in out

    grid = list(result_grid(exp))  # read back from S3
    assert len(grid) == len(BUDGETS)
    got = {r.config["search.budget"]: r for r in grid}
    assert_same_finals(got, baseline)
    names = {r.path.rstrip("/").rsplit("/", 1)[1] for r in got.values()}
    assert_mlflow_complete(uri, "s3kills", names)  # one parent, one child per trial, each epoch once
    client = MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name("s3kills").experiment_id],
                                "tags.mlflow.runName LIKE '%'", max_results=1000)
    parent_id = next(r.info.run_id for r in parent if "mlflow.parentRunId" not in r.data.tags)
    pareto_file = Path(client.download_artifacts(parent_id, "pareto/pareto.json", tempfile.mkdtemp()))
    pareto = [t for t in json.loads(pareto_file.read_text())["trials"] if t["pareto"]]
    versions = client.search_model_versions("name='repnas-s3kills'")
    assert len(versions) == len({v.run_id for v in versions}) == len(pareto) > 0  # fused models, each once
    for trial, kept in _checkpoints(exp).items():  # num_to_keep (2) holds on the bucket
        assert 1 <= len(kept) <= 2, (trial, kept)
    assert lease[0].get_file_info(lease[1]).type == pafs.FileType.NotFound  # released at the end
