"""Training cost of multi-branch training: step time and peak memory, as ratios to plain.

Every configuration trains through the real ``SearchEngine`` (supernets in the search
phase: noise, top-k, straight-through gates, two optimisers; baselines with a fixed mask)
on synthetic 32x32x3 batches, in its own subprocess so peak memory is not shared:

* CPU: peak memory = growth of the process's max RSS (``resource.getrusage``) from just
  before the model is built to the end of the timed steps, i.e. weights, optimiser state,
  activations and allocator overhead of training (not the torch libraries).
* CUDA: ``torch.cuda.max_memory_allocated`` over the same span (tensors only).

    python benchmarks/train_cost.py [--device cpu|cuda] [--batch-size 32] [--steps 10]
        [--threads N] [--models repvgg_a0 resnet18] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from typing import Any

CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {"method": "plain"},
    "repvgg": {"method": "repvgg"},
    "dbb": {"method": "dbb"},
    "odbb@0.17": {"method": "odbb", "budget": 0.17},
    "odbb@0.34": {"method": "odbb", "budget": 0.34},
    "odbb@1.0": {"method": "odbb", "budget": 1.0},
}
MODELS: dict[str, dict[str, Any]] = {
    "repvgg_a0": {"name": "repvgg_a0", "options": {}},
    "resnet18": {"name": "resnet18", "options": {"stem": "small"}},
}


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _worker(model_key: str, config_key: str, device_name: str, batch_size: int, steps: int) -> dict[str, float]:
    """Measure one configuration in this process (run via a fresh subprocess)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from trainables.build import build_trial_model
    from trainables.config import TrialConfig
    from trainables.engine import SearchEngine

    device = torch.device(device_name)
    warmup = 3
    search = {"epochs": 1000, "random_epochs": 0, "search_epochs": 999, **CONFIGS[config_key]}
    cfg = TrialConfig.from_dict({"model": MODELS[model_key], "search": search})
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn((warmup + steps) * batch_size, 3, 32, 32, generator=generator)
    targets = torch.randint(0, 10, (len(inputs),), generator=generator)
    data = TensorDataset(inputs, targets)
    warm_loader = DataLoader(torch.utils.data.Subset(data, range(warmup * batch_size)), batch_size=batch_size)
    loader = DataLoader(torch.utils.data.Subset(data, range(warmup * batch_size, len(data))), batch_size=batch_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_before = _max_rss_bytes()
    model = build_trial_model(cfg, 10, 3)
    engine = SearchEngine(model, cfg.search, cfg.optim, steps_per_epoch=warmup + steps, seed=0, device=device)
    engine.train_epoch(warm_loader)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    engine.train_epoch(loader)
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else _max_rss_bytes() - rss_before
    return {"step_s": step_s, "peak_mb": peak / 2**20, "branches": float(engine.eval_mask().sum()),
            "candidates": float(engine.num_candidates)}


def _measure(model_key: str, config_key: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", model_key, config_key, "--device", args.device,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{model_key} {config_key} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(results: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace) -> str:
    memory = "peak alloc MB" if args.device == "cuda" else "peak RSS growth MB"
    lines = [f"| model | config | branches kept / candidates | step (s) | x plain | {memory} | x plain |",
             "|---|---|---|---|---|---|---|"]
    for model_key, rows in results.items():
        plain = rows["plain"]
        for config_key, row in rows.items():
            lines.append(
                f"| {model_key} | {config_key} | {int(row['branches'])} / {int(row['candidates'])} | "
                f"{row['step_s']:.4f} | {row['step_s'] / plain['step_s']:.2f} | "
                f"{row['peak_mb']:.0f} | {row['peak_mb'] / plain['peak_mb']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=1, help="median step time over this many subprocesses")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(_worker(*args.worker, args.device, args.batch_size, args.steps)))
        return
    results: dict[str, dict[str, dict[str, float]]] = {}
    for model_key in args.models:
        results[model_key] = {}
        for config_key in CONFIGS:
            runs = [_measure(model_key, config_key, args) for _ in range(args.repeats)]
            row = dict(runs[0], step_s=statistics.median(r["step_s"] for r in runs),
                       peak_mb=statistics.median(r["peak_mb"] for r in runs))
            results[model_key][config_key] = row
            print(f"{model_key:>10} {config_key:>10}: {row['step_s']:.4f} s/step, {row['peak_mb']:.0f} MB", flush=True)
    print(f"\n{date.today()} {platform.processor() or platform.machine()}, {args.device}, "
          f"{args.threads} threads, batch {args.batch_size}, 32x32x3, {args.steps} timed steps\n")
    print(_table(results, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
