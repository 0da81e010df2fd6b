"""A sweep that never pays twice, through the CLI and across a driver kill: every configuration
is trained once, repeats of this sweep's trials and of a warm start's carry their result and
link, the sampler's warm start is recorded once, and the front's hypervolume is on the parent run."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow.artifacts
import pytest
from _faults import Driver, cli, mlflow_children, sweep, write
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

LRS = [0.05, 0.1]


def _sweep(tmp_path: Path, name: str, samples: int, **search: Any) -> dict[str, Any]:
    """Two configurations (lr), proposed ``samples`` times by Optuna, 2 epochs each."""
    data = sweep(tmp_path, name, search={"algorithm": "optuna", "num_samples": samples, "max_concurrent": 2, "seed": 0,
                                         "objectives": [{"metric": "val_acc", "mode": "max"},
                                                        {"metric": "branches_kept", "mode": "min"}], **search},
                 space={"optim.lr": {"choice": LRS}, "search.budget": {"choice": [0.5]}})
    data["trial"]["search"]["epochs"] = 2
    return data


def _runs(uri: str, experiment: str) -> tuple[Any, list[Any]]:
    return mlflow_children(uri, experiment)


def test_repeats_and_warm_starts_are_trained_once_across_a_kill(tmp_path: Path,
                                                                start_driver: Callable[..., Driver]) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = cli("orchestrator.run", [str(write(tmp_path, _sweep(tmp_path, "first", 5)))], tmp_path, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    client = MlflowClient(uri)
    parent, kids = _runs(uri, "first")
    trained = [k for k in kids if "repnas.model_uri" in k.data.tags]
    repeats = [k for k in kids if "repnas.repeat_of" in k.data.tags]
    configs = {k.data.params["optim.lr"] for k in kids}
    assert len(kids) == 5 and len(trained) == len(configs) and len(repeats) == 5 - len(configs)  # each config once
    assert f"{len(trained)} trial(s) trained" in first.stdout
    assert f"{len(repeats)} repeated configuration(s) not trained again" in first.stdout
    by_id = {k.info.run_id: k for k in kids}
    for r in repeats:  # linked to the trained run of the same configuration, with its result
        original = by_id[r.data.tags["repnas.repeat_of_run"]]
        assert original.data.tags["repnas.trial_name"] == r.data.tags["repnas.repeat_of"]
        assert original.data.params == r.data.params and r.data.metrics["val_acc"] == original.data.metrics["val_acc"]
        assert r.info.status == "FINISHED" and "repnas.model_uri" not in r.data.tags
    assert parent.data.metrics["pareto_hypervolume"] > 0 and json.loads(parent.data.tags["repnas.hypervolume_reference"]) \
        == [0.0, 30.0]
    registered = client.search_model_versions("name = 'repnas-first'")
    assert {v.run_id for v in registered} <= {k.info.run_id for k in trained}  # no repeat has a model to register

    # a follow-up warm-started from it, killed after its first result and resumed: nothing trains at all
    path = write(tmp_path, _sweep(tmp_path, "second", 4, warm_start=["first"]))
    driver = start_driver([str(path)], "second.log")
    experiment = tmp_path / "ray_results" / "second"
    driver.wait_for(lambda: any(p.stat().st_size for p in experiment.glob("repnas_trial_*/result.json")), "a result")
    driver.sigkill()
    resumed = cli("orchestrator.run", [str(path), "--resume"], tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "A new study created" not in resumed.stdout + resumed.stderr + driver.output()  # Optuna's notice
    assert len(configs) < len(LRS) or (
        "0 trial(s) trained" in resumed.stdout and "4 repeated configuration(s)" in resumed.stdout)
    parent, kids = _runs(uri, "second")
    warm_repeats = [k for k in kids if "repnas.repeat_of" in k.data.tags]
    assert len(kids) == 4 and all(k.data.tags["repnas.repeat_of"].startswith("first/repnas_trial_") for k in warm_repeats)
    assert all(k.data.tags["repnas.repeat_of_run"] in {t.info.run_id for t in trained} for k in warm_repeats)
    assert len(configs) < len(LRS) or len(warm_repeats) == 4
    assert Counter(k.data.tags["repnas.trial_name"] for k in kids).most_common(1)[0][1] == 1  # one run per trial
    local = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="warm_start.json",
                                                tracking_uri=uri, dst_path=str(tmp_path / "dl"))
    warm = json.loads(Path(local).read_text())
    assert sorted(str(t["point"]["optim.lr"]) for t in warm) == sorted(configs)  # the trained trials of "first", once
    assert parent.data.tags["repnas.warm_start"] == \
        f"warm start: {len(trained)} trial(s) of sweep 'first' (not used: {len(repeats)} repeats)"


@pytest.mark.parametrize("concurrency", [2, 4])
def test_a_duplicated_grid_point_trains_once_across_a_kill(concurrency: int, tmp_path: Path,
                                                          start_driver: Callable[..., Driver]) -> None:
    """``search.budget: {grid: [0.34, 0.34, 0.5]}``: the twin trains nothing, logs no model and
    carries its original's result, whether both run at once or not, and after a kill and --resume."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = sweep(tmp_path, "grid", search={"algorithm": "grid", "num_samples": 1, "max_concurrent": concurrency,
                                           "seed": 0}, space={"search.budget": {"grid": [0.34, 0.34, 0.5]}})
    data["trial"]["search"]["epochs"] = 2
    path = write(tmp_path, data)
    driver = start_driver([str(path)], "grid.log")
    experiment = tmp_path / "ray_results" / "grid"
    driver.wait_for(lambda: any(p.stat().st_size for p in experiment.glob("repnas_trial_*/result.json")), "a result")
    driver.sigkill()
    resumed = cli("orchestrator.run", [str(path), "--resume"], tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    _, runs = _runs(uri, "grid")
    # a trial Ray had started but not yet recorded when the driver died is an orphan; here that can
    # only be a released twin, whose run (a copy of its original's result) is deleted on resume
    assert not [k for k in runs if k.data.tags.get("repnas.orphaned") == "true"]
    kids = runs
    trained = [k for k in kids if "repnas.model_uri" in k.data.tags]
    repeats = [k for k in kids if "repnas.repeat_of" in k.data.tags]
    assert len(kids) == 3 and len(trained) == 2 and len(repeats) == 1
    twin = repeats[0]
    original = next(k for k in trained if k.info.run_id == twin.data.tags["repnas.repeat_of_run"])
    assert twin.data.params["search.budget"] == original.data.params["search.budget"] == "0.34"
    assert twin.data.metrics["val_acc"] == original.data.metrics["val_acc"]
    versions = MlflowClient(uri).search_model_versions("name = 'repnas-grid'")
    assert {v.run_id for v in versions} <= {k.info.run_id for k in trained}


def test_a_warm_start_from_bf16_trials_does_not_stand_for_fp32_ones(tmp_path: Path) -> None:
    """The precision decides a trial's result: a follow-up in fp32 warm-started from a bf16 sweep
    trains its own trials, and the warm start says why it used none of the earlier ones."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bf16 = _sweep(tmp_path, "bf16", 2)
    bf16["trial"].setdefault("runtime", {})["precision"] = "bf16"
    first = cli("orchestrator.run", [str(write(tmp_path, bf16))], tmp_path, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    fp32 = cli("orchestrator.run", [str(write(tmp_path, _sweep(tmp_path, "fp32", 2, warm_start=["bf16"])))],
               tmp_path, timeout=600)
    assert fp32.returncode == 0, fp32.stdout[-3000:] + fp32.stderr[-3000:]
    _, bf16_kids = _runs(uri, "bf16")
    parent, kids = _runs(uri, "fp32")
    trained = [k for k in kids if "repnas.model_uri" in k.data.tags]
    assert not [k for k in kids if "repnas.repeat_of" in k.data.tags]
    assert len(trained) == len({k.data.params["optim.lr"] for k in kids}) >= 1
    assert "with another runtime.precision" in parent.data.tags.get("repnas.warm_start", "") + fp32.stdout
