"""Orchestration overhead: a sweep of N short trials through the real driver (Ray Tune +
MLflow on sqlite + Pareto + registry) versus the same trials back to back in one process
through ``trainables.run_trial`` (no Ray, no MLflow).

    python benchmarks/sweep_overhead.py [--trials 4 [8]] [--epochs 3] [--concurrency 1 2] [--breakdown] [--running-ray]

Both sides run identical trial configs (grid over ``search.budget``) with one CPU thread per
trial. With concurrency 1 the ratio is pure overhead (Ray start, workers, checkpoints to
storage, MLflow logging and model registration); with 2 on a 2-CPU machine, parallelism
pays some of it back. Several ``--trials`` counts split the concurrency-1 overhead into a
cost per added trial and a fixed cost per sweep (a least-squares line). ``--running-ray``
starts a Ray head on 127.0.0.1 before timing anything and points every sweep at it
(``ray.address``), as on a cluster: Ray's start and stop are then not the sweep's. The MLflow
database is created before timing in both modes (a store is created once, not per sweep).
``--breakdown`` times named steps in every process of both sides
(``benchmarks/timing/sitecustomize.py``) and prints where the first sweep's overhead goes,
in seconds per trial.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TIMING = Path(__file__).resolve().parent / "timing"
BUDGETS = (0.2, 0.34, 0.5, 0.75, 0.25, 0.4, 0.6, 0.9)


def _trial(epochs: int) -> dict:
    return {"seed": 0, "model": {"name": "repvgg_tiny"}, "data": {"dataset": "digits"},
            "search": {"epochs": epochs, "random_epochs": 1, "search_epochs": 1},
            "runtime": {"device": "cpu", "num_threads": 1},
            "export": {"formats": ["state_dict", "torch_export"]}}


def _env(timing: Path | None) -> dict[str, str]:
    """The subprocess environment: no inherited Ray/MLflow addresses; the timing hook if asked."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    if timing is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TIMING), env.get("PYTHONPATH")) if p)
        env["REPNAS_TIMING"] = str(timing)
    return env


def run_sweep(workdir: Path, trials: int, epochs: int, concurrency: int, timing: Path | None = None,
              address: str | None = None) -> float:
    """Wall seconds of ``python -m orchestrator.run`` for the sweep (process start to exit);
    ``address``: a running Ray to join instead of starting one."""
    sweep = {
        "name": f"overhead-n{trials}-c{concurrency}", "storage_path": str(workdir / "ray_results"),
        "ray": {"address": address} if address else {"num_cpus": max(2, concurrency)}, "resources": {"cpus": 1},
        "search": {"algorithm": "grid", "num_samples": 1, "max_concurrent": concurrency},
        "mlflow": {"tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}", "register": "pareto"},
        "space": {"search.budget": {"grid": list(BUDGETS[:trials])}},
        "trial": _trial(epochs),
    }
    path = workdir / f"sweep-c{concurrency}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.run", str(path)], cwd=workdir, env=_env(timing),
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return wall


def run_back_to_back(workdir: Path, trials: int, epochs: int, timing: Path | None = None) -> float:
    """Wall seconds of a fresh process running the same trials with ``run_trial``, in sequence
    (process start included, like the sweep)."""
    code = (
        "import sys, json, pathlib\n"
        "from trainables import TrialConfig, apply_overrides, run_trial\n"
        "base, budgets, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), pathlib.Path(sys.argv[3])\n"
        "for i, b in enumerate(budgets):\n"
        "    run_trial(TrialConfig.from_dict(apply_overrides(base, {'search.budget': b})), out / f't{i}')\n"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, json.dumps(_trial(epochs)), json.dumps(list(BUDGETS[:trials])),
                    str(workdir / f"plain-{trials}")], check=True, capture_output=True, env=_env(timing))
    return time.perf_counter() - start


@contextmanager
def running_ray(workdir: Path) -> Iterator[str]:
    """A Ray head on 127.0.0.1 (2 CPUs, no dashboard) for the block; its address."""
    port = _free_port()
    temp = workdir / "ray-head"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--port", str(port), "--num-cpus", "2",
           "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp), "--include-dashboard", "false",
           "--disable-usage-stats"]
    env = {**_env(None), "RAY_AUTH_MODE": "disabled"}  # a benchmark cluster on 127.0.0.1 only
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True, env=env,
                       check=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(fixed seconds per sweep, seconds per added trial): the least-squares line through
    (trials, overhead seconds)."""
    n = len(points)
    mean_x, mean_y = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    return mean_y - slope * mean_x, slope


def _spans(path: Path) -> dict[int, list[dict]]:
    by_pid: dict[int, list[dict]] = {}
    for line in path.read_text().splitlines():
        span = json.loads(line)
        by_pid.setdefault(span["pid"], []).append(span)
    return by_pid


_HOOKS = tuple("orchestrator.tracking.child_run.MLflowTrialHook." + h for h in ("on_start", "on_epoch", "on_end"))
_IN_TRIAL = (*_HOOKS, "ray.tune.report")  # what the sweep adds inside a trial


def per_trial_costs(sweep_spans: Path) -> list[float]:
    """Seconds the sweep adds inside each trial (MLflow hooks, Ray's checkpoint copies: the spans
    within its ``run_trial``), in the order the trials ran. The first trial of a worker also pays
    first imports (``mlflow.pytorch``), so the median of the others is the cost of an added trial,
    measured directly rather than as a difference of two noisy walls."""
    costs = []
    for spans in _spans(sweep_spans).values():
        for trial in sorted((x for x in spans if x["f"] == "trainables.run.trial.run_trial"), key=lambda x: x["s"]):
            inside = [x for x in spans if x["f"] in _IN_TRIAL and trial["s"] <= x["s"] <= trial["s"] + trial["d"]]
            costs.append(sum(x["d"] for x in inside))
    return costs


def breakdown(plain_spans: Path, sweep_spans: Path, trials: int, overhead: float) -> list[tuple[str, float]]:
    """(step, seconds per trial) of a concurrency-1 sweep's ``overhead`` (wall seconds over the
    plain run), from the timing spans of both sides; the last rows are trial work both sides do."""
    (plain,) = [s for s in _spans(plain_spans).values() if any(x["f"] == "trainables.run.trial.run_trial" for x in s)]
    by_pid = _spans(sweep_spans)
    (driver,) = [s for s in by_pid.values() if any(x["f"] == "ray.tune.tuner.Tuner.fit" for x in s)]
    workers = [x for s in by_pid.values() if s is not driver for x in s]

    def first(spans: list[dict], name: str) -> dict:
        return min((x for x in spans if x["f"] == name), key=lambda x: x["s"])

    def total(spans: list[dict], name: str) -> float:
        return sum(x["d"] for x in spans if x["f"] == name)

    def end(span: dict) -> float:
        return span["s"] + span["d"]

    p0, d0 = first(plain, "process")["s"], first(driver, "process")["s"]
    fit, connect, parent = (first(driver, n) for n in ("ray.tune.tuner.Tuner.fit", "orchestrator.ray_tune.cluster.connect",
                                                      "orchestrator.tracking.parent_run.start_parent_run"))
    trial = "trainables.run.trial.run_trial"
    worker_trial = total(workers, trial) - sum(total(workers, f) for f in _IN_TRIAL) \
        - total(workers, "trainables.run.checkpoint.save_checkpoint")
    plain_trial = total(plain, trial) - total(plain, "trainables.run.checkpoint.save_checkpoint")
    rows = [
        ("driver start to ray.init: imports, validation, lock (over the plain run's)",
         (connect["s"] - d0) - (first(plain, trial)["s"] - p0)),
        ("Ray start (ray.init)", connect["d"]),
        ("MLflow: database and parent run", parent["d"]),
        ("other driver steps before the trials (Tuner)", fit["s"] - end(parent)),
        ("trial worker start (process, imports) until its first trial", first(workers, trial)["s"] - fit["s"]),
        ("MLflow child run opened (on_start)", total(workers, _HOOKS[0])),
        ("MLflow per-epoch metrics (on_epoch)", total(workers, _HOOKS[1])),
        ("MLflow final metrics, artifacts, fused model (on_end)", total(workers, _HOOKS[2])),
        ("  of which mlflow.pytorch.log_model of the fused model", total(workers, "orchestrator.tracking.fused_model.log_fused_model")),
        ("checkpoint persisted to Ray storage (tune.report)", total(workers, "ray.tune.report")),
        ("checkpoint writing (over the plain run's)", total(workers, "trainables.run.checkpoint.save_checkpoint")
         - total(plain, "trainables.run.checkpoint.save_checkpoint")),
        ("training and export itself (over the plain run's: noise)", worker_trial - plain_trial),
        ("Tune between trials", end(fit) - first(workers, trial)["s"] - total(workers, trial)),
        ("after the trials: MLflow sync, Pareto table and plot, registry, summary",
         end(first(driver, "orchestrator.results.sweep_summary.print_summary")) - end(fit)),
        ("exit: Ray shutdown, interpreter teardown",
         first(driver, "exit")["s"] - end(first(driver, "orchestrator.results.sweep_summary.print_summary"))),
    ]
    rows.append(("rest: interpreter start and exit of both sides",
                 overhead - sum(seconds for name, seconds in rows if not name.startswith(" "))))
    rows += [
        ("in both: export formats (state_dict, torch_export)", total(plain, "trainables.run.export._write_formats")),
        ("in both: latency measurement (fused, unfused)", total(plain, "trainables.run.export.measure_latency")),
    ]
    return [(name, seconds / trials) for name, seconds in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[4])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--breakdown", action="store_true",
                        help="time named steps of both sides; table of the first sweep (use --concurrency 1 first)")
    parser.add_argument("--running-ray", action="store_true", help="join a Ray head started before timing")
    args = parser.parse_args()
    if args.breakdown and args.running_ray:  # the trial workers would be the head's, without the timing hook
        parser.error("--breakdown times the processes a sweep starts (its Ray included); run it without --running-ray")
    from orchestrator.tracking.sqlite import create_database

    with tempfile.TemporaryDirectory(prefix="repnas-overhead-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        create_database(work / "mlflow.db")
        address = stack.enter_context(running_ray(work)) if args.running_ray else None
        spans = [work / "plain.jsonl", work / "sweep.jsonl"] if args.breakdown else [None, None]
        table, overheads = [], []
        for j, trials in enumerate(args.trials):
            first = spans if j == 0 else [None, None]
            plain = run_back_to_back(work, trials, args.epochs, first[0])
            rows = [(c, run_sweep(work, trials, args.epochs, c, first[1] if i == 0 else None, address))
                    for i, c in enumerate(args.concurrency)]
            table.append((trials, plain, rows))
            overheads.append((trials, rows[0][1] - plain))
            if j == 0 and args.breakdown:
                steps = breakdown(spans[0], spans[1], trials, rows[0][1] - plain)
                costs = per_trial_costs(spans[1])
    where = f"joining the Ray at {address}" if address else "each sweep starting its own Ray"
    print(f"{args.epochs} epochs a trial (digits, repvgg_tiny, 1 thread per trial), {os.cpu_count()} CPUs, {where}")
    print(f"{'':36}{'wall s':>8}{'ratio':>8}{'per trial s':>13}")
    for trials, plain, rows in table:
        print(f"{f'{trials} trials back to back, one process':36}{plain:8.1f}{1.0:8.2f}{plain / trials:13.1f}")
        for c, wall in rows:
            print(f"{f'{trials} trials, sweep, {c} concurrent':36}{wall:8.1f}{wall / plain:8.2f}{wall / trials:13.1f}")
        print(f"overhead per trial at concurrency {rows[0][0]}: {(rows[0][1] - plain) / trials:.2f} s")
    if len(overheads) > 1:
        fixed, per_trial = fit_line(overheads)
        print(f"overhead at concurrency {args.concurrency[0]} = {fixed:.1f} s per sweep + {per_trial:.2f} s per trial "
              f"(least squares over {', '.join(str(t) for t, _ in overheads)} trials)")
    if args.breakdown:
        print(f"\n{'where it goes, concurrency ' + str(args.concurrency[0]):80}{'s per trial':>12}")
        for name, seconds in steps:
            print(f"{name:80}{seconds:12.2f}")
        later = sorted(costs[1:])
        if later:
            print(f"\nadded inside each trial (MLflow hooks, checkpoint copies): first {costs[0]:.2f} s, then median "
                  f"{statistics.median(later):.2f} s (range {later[0]:.2f}-{later[-1]:.2f}) over {len(later)} trials")


if __name__ == "__main__":
    main()
