"""Orchestration overhead: a sweep of N short trials through the real driver (Ray Tune +
MLflow on sqlite + Pareto + registry) versus the same trials back to back in one process
through ``trainables.run_trial`` (no Ray, no MLflow).

    python benchmarks/sweep_overhead.py [--trials 4] [--epochs 3] [--concurrency 1 2]

Both sides run identical trial configs (grid over ``search.budget``) with one CPU thread per
trial. With concurrency 1 the ratio is pure overhead (Ray start, workers, checkpoints to
storage, MLflow logging and model registration); with 2 on a 2-CPU machine, parallelism
pays some of it back.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BUDGETS = (0.2, 0.34, 0.5, 0.75, 0.25, 0.4, 0.6, 0.9)


def _trial(epochs: int) -> dict:
    return {"seed": 0, "model": {"name": "repvgg_tiny"}, "data": {"dataset": "digits"},
            "search": {"epochs": epochs, "random_epochs": 1, "search_epochs": 1},
            "runtime": {"device": "cpu", "num_threads": 1},
            "export": {"formats": ["state_dict", "torch_export"]}}


def run_sweep(workdir: Path, trials: int, epochs: int, concurrency: int) -> float:
    """Wall seconds of ``python -m orchestrator.run`` for the sweep (process start to exit)."""
    sweep = {
        "name": f"overhead-c{concurrency}", "storage_path": str(workdir / "ray_results"),
        "ray": {"num_cpus": max(2, concurrency)}, "resources": {"cpus": 1},
        "search": {"algorithm": "grid", "num_samples": 1, "max_concurrent": concurrency},
        "mlflow": {"tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}", "register": "pareto"},
        "space": {"search.budget": {"grid": list(BUDGETS[:trials])}},
        "trial": _trial(epochs),
    }
    path = workdir / f"sweep-c{concurrency}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.run", str(path)], cwd=workdir, env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return wall


def run_back_to_back(workdir: Path, trials: int, epochs: int) -> float:
    """Wall seconds of a fresh process running the same trials with ``run_trial``, in sequence
    (process start included, like the sweep)."""
    code = (
        "import sys, json, pathlib\n"
        "from trainables import TrialConfig, apply_overrides, run_trial\n"
        "base, budgets, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), pathlib.Path(sys.argv[3])\n"
        "for i, b in enumerate(budgets):\n"
        "    run_trial(TrialConfig.from_dict(apply_overrides(base, {'search.budget': b})), out / f't{i}')\n"
    )
    import json

    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, json.dumps(_trial(epochs)), json.dumps(list(BUDGETS[:trials])),
                    str(workdir / "plain")], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="repnas-overhead-") as tmp:
        work = Path(tmp)
        plain = run_back_to_back(work, args.trials, args.epochs)
        rows = [(c, run_sweep(work, args.trials, args.epochs, c)) for c in args.concurrency]
    print(f"{args.trials} trials x {args.epochs} epochs (digits, repvgg_tiny, 1 thread per trial), "
          f"{os.cpu_count()} CPUs")
    print(f"{'':32}{'wall s':>8}{'ratio':>8}{'per trial s':>13}")
    print(f"{'back to back, one process':32}{plain:8.1f}{1.0:8.2f}{plain / args.trials:13.1f}")
    for c, wall in rows:
        print(f"{f'sweep driver, {c} concurrent':32}{wall:8.1f}{wall / plain:8.2f}{wall / args.trials:13.1f}")
    print(f"overhead per trial at concurrency 1: {(rows[0][1] - plain) / args.trials:.1f} s")


if __name__ == "__main__":
    main()
