"""Install the lowest and the highest supported Ray / MLflow / Optuna into fresh virtual
environments and run the fast test lane, the kill test, and the DDP and Optuna sweeps (which the
other two do not reach: Train v2's defaults, Optuna's API) in each.

    python .ci/version_matrix.py [--only lowest highest] [--keep] [--json FILE]

The supported ranges in pyproject.toml (and ``TESTED`` in ``orchestrator/ray_tune/adapter.py`` and
``orchestrator/mlflow_adapter.py``) are the ends of this matrix; README, "Supported versions",
has its latest table. Each environment takes ~6 GB (torch's CUDA build) and 10-30 minutes on
2 CPUs; it is created under ``$TMPDIR`` and removed afterwards unless ``--keep``. Exit code 1
if any environment fails to install or to pass.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
MATRIX: dict[str, list[str]] = {
    "lowest": ["ray[tune]==2.52.0", "mlflow==3.9.0", "optuna==4.0.0"],
    "highest": ["ray[tune]==2.60.0", "mlflow==3.17.2", "optuna==5.1.0"],
}
"""The pins of each environment: the ends of the ranges pyproject.toml declares."""
SHOWN = ("ray", "mlflow", "optuna", "torch", "sqlalchemy", "numpy")
STEPS: dict[str, list[str]] = {
    "fast lane": ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow and not reliability"],
    "kill test": ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/reliability/test_reliability_kills.py"],
    "DDP and Optuna sweeps": ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/trainables/test_trainables_distributed.py",
                              "tests/orchestrator/test_orchestrator_sweep.py::test_sweep_sqlite_then_refuse_rerun"],
}


def _run(cmd: list[str], log: Path, cwd: Path = ROOT) -> tuple[int, float]:
    """Run ``cmd``, appending its output to ``log``; (exit code, seconds)."""
    start = time.monotonic()
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        code = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    return code, time.monotonic() - start


def _summary_line(log: Path, offset: int) -> str:
    """pytest's summary line (``N passed, M skipped in Ts``) in the log after byte ``offset``
    (one step's output; a step that printed none must not show the previous step's)."""
    with log.open("rb") as out:
        out.seek(offset)
        text = out.read().decode(errors="replace")
    words = ("passed", "failed", "error")
    lines = [line for line in text.splitlines() if " in " in line and any(w in line for w in words)]
    return lines[-1].strip("= ") if lines else "no pytest summary"


def _pip_error(log: Path) -> str:
    """pip's last ``ERROR:`` line in the log (its conclusion): why an install failed."""
    lines = [line for line in log.read_text().splitlines() if line.startswith("ERROR:")]
    return lines[-1].removeprefix("ERROR:").strip() if lines else "see the log"


def run_environment(name: str, pins: list[str], keep: bool) -> dict[str, object]:
    """One fresh venv with ``pins``: install, record versions, run every step."""
    venv = Path(tempfile.mkdtemp(prefix=f"repnas-matrix-{name}-"))
    log = venv.with_suffix(".log")
    python = str(venv / "bin" / "python")
    row: dict[str, object] = {"name": name, "pins": pins, "log": str(log)}
    try:
        steps = [[sys.executable, "-m", "venv", str(venv)],
                 [python, "-m", "pip", "install", "--quiet", *TORCH],
                 [python, "-m", "pip", "install", "--quiet", "-e", ".[test]", *pins]]
        for cmd in steps:
            code, _ = _run(cmd, log)
            if code:
                row["install"] = f"install failed (exit {code}): {_pip_error(log)}"
                return row
        freeze = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                                check=True).stdout
        row["versions"] = {p["name"].lower(): p["version"] for p in json.loads(freeze) if p["name"].lower() in SHOWN}
        for step, args in STEPS.items():
            offset = log.stat().st_size
            code, seconds = _run([python, *args], log)
            row[step] = {"exit": code, "seconds": round(seconds), "summary": _summary_line(log, offset)}
        return row
    finally:
        if not keep:
            shutil.rmtree(venv, ignore_errors=True)


def _ok(row: dict[str, object]) -> bool:
    return "install" not in row and all(isinstance(row.get(s), dict) and row[s]["exit"] == 0 for s in STEPS)


def markdown(rows: list[dict[str, object]]) -> str:
    """The README's table: environment, installed versions, each step's result."""
    lines = ["| environment | " + " | ".join(SHOWN) + " | " + " | ".join(STEPS) + " |",
             "|---|" + "---|" * (len(SHOWN) + len(STEPS))]
    for row in rows:
        versions = row.get("versions", {})
        cells = [str(versions.get(d, "-")) for d in SHOWN]  # type: ignore[union-attr]
        results = [row["install"] if "install" in row else
                   f"{'pass' if row[s]['exit'] == 0 else 'FAIL'}: {row[s]['summary']}" for s in STEPS]  # type: ignore[index]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " | " + " | ".join(map(str, results)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the matrix; print the table; 0 when every environment passed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(MATRIX), default=list(MATRIX))
    parser.add_argument("--keep", action="store_true", help="keep the virtual environments")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    rows = []
    for name in args.only:
        print(f"{name}: {' '.join(MATRIX[name])} ...", flush=True)
        rows.append(run_environment(name, MATRIX[name], args.keep))
        print(f"{name}: {'pass' if _ok(rows[-1]) else 'FAIL'} (log: {rows[-1]['log']})", flush=True)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(_ok(r) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
