"""The default (quiet) console of a real sweep: a line per finished trial, failures with their
error and error file, tracebacks kept, no per-checkpoint lines or notices that need no action."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow

QuietRun = tuple[Path, subprocess.CompletedProcess[str]]
HIDDEN = ("Checkpoint successfully created", "== Status ==", "Token authentication is enabled",
          "Started a local Ray instance", "Creating initial MLflow database tables", "Created version",
          "No CUDA runtime is found", "A new study created")


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory: pytest.TempPathFactory, kit: Any) -> QuietRun:
    """Four trials: two on digits (finish), two on an image folder whose one class folder holds no
    images (the driver counts class folders; the trial reads them and fails on the worker)."""
    tmp = tmp_path_factory.mktemp("quiet")
    (tmp / "images" / "train" / "cls").mkdir(parents=True)
    sweep = kit.tiny_sweep(tmp, name="quiet", search={"algorithm": "grid", "num_samples": 1})
    sweep["space"] = {"data.dataset": {"grid": ["digits", "imagefolder"]}, "optim.lr": {"grid": [0.05, 0.1]}}
    sweep["trial"]["data"]["root"] = str(tmp / "images")
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return tmp, kit.run_cli([str(path)], cwd=tmp, timeout=400)


def test_quiet_sweep_prints_one_line_per_finished_trial(quiet_run: QuietRun) -> None:
    tmp, proc = quiet_run
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-5000:]
    for text in HIDDEN:
        assert text not in out, text
    finished = re.findall(r"^trial (repnas_trial_\S+) finished \(2 epochs, \d+ s\): val_acc=\S+ branches_kept=\S+ "
                          r"data\.dataset=digits optim\.lr=\S+$", out, re.MULTILINE)
    done = {p.parent.name for p in (tmp / "ray_results" / "quiet").glob("*/params.json")
            if not (p.parent / "error.txt").exists()}
    assert len(finished) == 2 and set(finished) == done, (finished, done)
    assert "Pareto front" in proc.stdout


def test_failing_trial_error_and_error_file_in_quiet_output(quiet_run: QuietRun) -> None:
    tmp, proc = quiet_run
    out = proc.stdout + proc.stderr
    missing = tmp / "images" / "train" / "cls"
    failed = re.findall(r"^trial (repnas_trial_\S+) FAILED before its first epoch: .*ConfigError: trial\.data\.root: "
                        rf"class folder {re.escape(str(missing))} holds no image files.* \(traceback in (\S+)\)$",
                        out, re.MULTILINE)
    assert len(failed) == 2, out[-5000:]
    for name, error_file in failed:
        assert Path(error_file) == tmp / "ray_results" / "quiet" / name / "error.txt"
        assert str(missing) in Path(error_file).read_text()
        assert f"  ! {name}: ConfigError: trial.data.root: class folder {missing} holds no image files" in proc.stdout
    assert out.count("Traceback (most recent call last)") >= 2  # Tune's own report of each failure
