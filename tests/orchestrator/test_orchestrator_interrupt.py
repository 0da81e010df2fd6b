"""Ctrl-C in the middle of a real sweep: exit 130, this tool's --resume command (not Ray's
Tuner.restore hint), unfinished trials off the Pareto front and out of the registry; then
--resume completes it, quietly."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def _command(tmp_path: Path, *extra: str) -> list[str]:
    sets = {"name": "interrupted", "storage_path": str(tmp_path / "ray_results"),
            "mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "search.num_samples": "4",
            "ray.num_cpus": "2", "trial.search.epochs": "6"}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    return [sys.executable, "-m", "orchestrator.run", str(QUICKSTART), *args, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _registry_versions(tmp_path: Path) -> list[object]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return list(client.search_model_versions("name='repnas-interrupted'"))


@pytest.mark.slow
def test_sigint_stops_the_sweep_and_resume_completes_it(tmp_path: Path) -> None:
    proc = subprocess.Popen(_command(tmp_path), cwd=tmp_path, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: list[str] = []
    finished = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if sum(x.startswith("trial ") and (" finished (" in x or " stopped early (" in x) for x in out) >= 2:
                finished.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert finished.wait(600), "".join(out) + (proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
    time.sleep(2)  # the next trials have started
    proc.send_signal(signal.SIGINT)
    code = proc.wait(300)
    reader.join(10)
    err = proc.stderr.read()  # type: ignore[union-attr]
    stdout = "".join(out)
    assert code == 130, stdout + err
    assert "--resume" in err and "python -m orchestrator.run" in err, err
    assert "Tuner.restore" not in stdout + err
    assert "Traceback" not in err, err

    table = list(csv.DictReader((tmp_path / "ray_results" / "interrupted" / "pareto" / "pareto.csv").open()))
    statuses = {row["status"] for row in table}
    assert statuses & {"running", "pending"}, table  # the interrupted trials are shown as such
    for row in table:
        if row["status"] in ("running", "pending"):
            assert row["pareto"] in ("False", "", "0"), row
    assert any(row["pareto"] == "True" for row in table if row["status"] == "finished"), table
    assert _registry_versions(tmp_path) == []  # nothing registered from a partial sweep

    resumed = subprocess.run(_command(tmp_path, "--resume"), cwd=tmp_path, env=_env(), text=True,
                             capture_output=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Restored on" not in resumed.stdout + resumed.stderr  # Ray's INFO lines stay behind --verbose
    table = list(csv.DictReader((tmp_path / "ray_results" / "interrupted" / "pareto" / "pareto.csv").open()))
    assert len(table) == 4 and {row["status"] for row in table} == {"finished"}, table
    assert _registry_versions(tmp_path), "the completed sweep registers its Pareto models"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_stops_tune_gracefully_second_at_once(signum: int, capsys: pytest.CaptureFixture[str]) -> None:
    """With Tune's own stop handler installed (as ``tune.run`` does on entering its loop), the
    first signal sets Tune's stop event and says how to resume; the second raises at once."""
    from ray.tune.tune import _setup_signal_catching

    from orchestrator.ray_tune.interrupt import stop_on_signal

    before = signal.getsignal(signum)
    with stop_on_signal("python -m orchestrator.run s.yaml --resume") as interruption:
        tune_stop = _setup_signal_catching()  # Ray's handler of the graceful stop
        os.kill(os.getpid(), signum)
        time.sleep(0.1)
        assert tune_stop.is_set() and interruption.signal == signum
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
            time.sleep(1)
    assert signal.getsignal(signum) == before
    err = capsys.readouterr().err
    assert "python -m orchestrator.run s.yaml --resume" in err and signal.Signals(signum).name in err


def test_a_signal_before_tunes_loop_stops_at_once() -> None:
    from orchestrator.ray_tune.interrupt import stop_on_signal

    with pytest.raises(KeyboardInterrupt), stop_on_signal("resume"):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
