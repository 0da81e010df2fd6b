"""``python -m trainables.cli``: a tiny run, resume, and user errors (exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainables.cli import main


def _sweep(tmp_path: Path, trial: dict[str, Any]) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "space": {}, "trial": trial}))
    return path


def test_cli_runs_resumes_and_writes_outputs(tmp_path: Path, tiny_dict: dict[str, Any], capsys) -> None:
    sweep = _sweep(tmp_path, tiny_dict)
    out = tmp_path / "out"
    # a mapping value sets its keys, as a space group does (random_epochs stays the trial's 1)
    assert main([str(sweep), "--output", str(out), "--set", "search.epochs=2", "--set", "trial.search={search_epochs: 1}"]) == 0
    printed = capsys.readouterr().out
    assert "epoch   2/2" in printed and "fused: val acc" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["done"] == 1.0 and summary["config"]["search"]["epochs"] == 2
    assert (out / "architecture.json").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert main([str(sweep), "--output", str(out), "--set", "search.epochs=2", "--set", "search.search_epochs=1"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([str(sweep), "--output", str(out), "--resume", "--set", "search.epochs=2", "--set", "search.search_epochs=1"]) == 0


_USER_ERRORS = [
    (["--set", "search.budget=0"], "trial.search.budget"),
    (["--set", "search.budget=99"], "only 30 candidates"),
    (["--set", "data.datset=digits"], "did you mean 'dataset'"),
    (["--set", "data.dataset=fashion_mnist", "--set", "data.root=/no/such/dir"], "/no/such/dir"),
    (["--set", "model.name=resnet99"], "trial.model.name"),
    (["--resume"], "no checkpoint"),
    (["--set", "novalue"], "KEY=VALUE"),
]


@pytest.mark.parametrize(("args", "fragment"), _USER_ERRORS)
def test_cli_user_errors_return_2(tmp_path: Path, tiny_dict: dict[str, Any], args: list[str], fragment: str, capsys) -> None:
    sweep = _sweep(tmp_path, tiny_dict)
    assert main([str(sweep), "--output", str(tmp_path / "o"), *args]) == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize(("args", "fragment"), [_USER_ERRORS[1], _USER_ERRORS[3]])
def test_cli_user_errors_exit_2_without_traceback(tmp_path: Path, tiny_dict: dict[str, Any], args: list[str], fragment: str) -> None:
    sweep = _sweep(tmp_path, tiny_dict)
    proc = subprocess.run([sys.executable, "-m", "trainables.cli", str(sweep), "--output", str(tmp_path / "o"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr and "Traceback" not in proc.stderr


def test_cli_missing_file_and_missing_trial_section(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nope.yaml"), "--output", str(tmp_path / "o")]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "s.yaml").write_text("name: x\n")
    assert main([str(tmp_path / "s.yaml"), "--output", str(tmp_path / "o")]) == 2
    assert "no top-level `trial:`" in capsys.readouterr().err


def test_cli_search_runs_where_ray_mlflow_and_optuna_are_not_installed(tmp_path: Path, tiny_dict: dict[str, Any]) -> None:
    """A GPU image may carry only torch and torchvision: a whole CLI search (train, fuse, verify,
    export) must not import Ray, MLflow or Optuna. An import hook makes them uninstalled."""
    sweep = _sweep(tmp_path, {**tiny_dict, "search": {**tiny_dict["search"], "epochs": 2},
                              "export": {"formats": ["state_dict", "torch_export"], "latency_min_run_time": 0.01}})
    code = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('ray', 'mlflow', 'optuna'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, Absent())\n"
        "from trainables.cli import main\n"
        f"sys.exit(main([{str(sweep)!r}, '--output', {str(tmp_path / 'out')!r}]))\n"
    )
    root = Path(__file__).resolve().parents[2]  # this checkout's packages, not an installed copy
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fused: val acc" in proc.stdout and json.loads((tmp_path / "out" / "summary.json").read_text())["final"]["done"] == 1.0
