"""The Ray Tune function trainable under a real local Ray (2 CPUs) and a tiny Tuner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainables import FINAL_METRICS, TrialHook, make_trainable

ray = pytest.importorskip("ray")
tune = pytest.importorskip("ray.tune")


class _Recorder(TrialHook):
    """Picklable hook: counts epochs (state travels in checkpoints), crashes each trial once at epoch 2."""

    def __init__(self, marker_dir: str) -> None:
        self.marker_dir = marker_dir
        self.epochs = 0
        self.trial = ""

    def on_start(self, config: Any, trial_name: str, resumed: bool) -> None:
        self.trial = trial_name
        (Path(self.marker_dir) / f"{trial_name}.start.{'resumed' if resumed else 'fresh'}").touch()

    def on_epoch(self, metrics: dict[str, float], epoch: int) -> None:
        self.epochs += 1
        crashed = Path(self.marker_dir) / f"{self.trial}.crashed"
        if epoch == 2 and not crashed.exists():
            crashed.touch()
            raise RuntimeError("simulated crash after the epoch-1 checkpoint")

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs = state["epochs"]


@pytest.mark.slow
def test_tuner_runs_trials_reports_every_epoch_and_exports(tmp_path: Path, tiny_dict: dict[str, Any]) -> None:
    tiny_dict["search"].update(epochs=2, random_epochs=1, search_epochs=1)
    tiny_dict["runtime"]["num_threads"] = None  # take the trial's CPUs
    markers = tmp_path / "markers"
    markers.mkdir()
    here = str(Path(__file__).parent)  # workers must import this module to unpickle _Recorder
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": here}})
    try:
        tuner = tune.Tuner(
            tune.with_resources(make_trainable(tiny_dict, hooks=[_Recorder(str(markers))]), {"cpu": 1}),
            param_space={"search.budget": tune.grid_search([0.2, 6])},
            tune_config=tune.TuneConfig(metric="val_acc", mode="max"),
            run_config=tune.RunConfig(name="t", storage_path=str(tmp_path), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=1)),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert not results.errors and len(results) == 2
    for result in results:
        # each trial crashed once at epoch 2 and was restored from its epoch-1 checkpoint
        history = result.metrics_dataframe
        assert list(history["epoch"])[-1] == 2.0 and 1.0 in list(history["epoch"])
        state = json.loads((Path(result.checkpoint.path) / "state.json").read_text())
        assert state["hooks"][0]["epochs"] == 2  # counted once per epoch across the restore
        assert [e["epoch"] for e in state["history"]] == [1.0, 2.0]
        assert set(FINAL_METRICS) <= set(result.metrics) and result.metrics["done"] == 1.0
        export = Path(result.checkpoint.path) / "export"
        assert (export / "architecture.json").is_file() and (export / "fused_state_dict.pt").is_file()
    assert len(list(markers.glob("*.start.resumed"))) == 2 and len(list(markers.glob("*.start.fresh"))) == 2
    kept = sorted(r.metrics["branches_kept"] for r in results)
    assert kept[0] >= 6  # budget 0.2 of 30 -> 6, absolute 6 -> 6 (+ kxk fallbacks)
