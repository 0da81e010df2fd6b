"""Training cost of multi-branch training: step time and peak memory, as ratios to plain.

Every configuration trains through the real ``SearchEngine`` (supernets in the search
phase: noise, top-k, straight-through gates, two optimisers; baselines with a fixed mask)
on synthetic batches, in each re-parameterization form (``offline``: a module per branch;
``online``: one composed conv per block) and at each input size (``--sizes``; ResNet-18
takes the ImageNet stem at 64 pixels and up, the small stem below), each in its own
subprocess so peak memory is not shared. Ratios are to the offline plain network of the
same host and size (only the KxK conv and its BN per layer):

* Peak memory = the most bytes of tensors alive at once, from just before the model is
  built to the end of the warm-up steps: weights, gradients, optimiser state, activations
  and everything autograd keeps (not the torch libraries, not allocator caches). On CUDA
  ``torch.cuda.max_memory_allocated``; on CPU the same sum, from the allocation events of
  ``torch.profiler`` (``profile_memory=True``) around the build and the warm-up, while the
  timed steps run unprofiled. (A process's max RSS growth, used before, moved by 5-10%
  between identical runs with glibc's heap; the tensor peak is the same every run.)

    python benchmarks/train_cost.py [--device cpu|cuda] [--batch-size 32] [--steps 10]
        [--threads N] [--models repvgg_a0 resnet18] [--configs plain dbb ...]
        [--reparam offline online] [--sizes 224 32] [--json out.json]

The search-quality host (configs/fashion_mnist.yaml) and all its methods:

    python benchmarks/train_cost.py --models repvgg_tiny_s2 --batch-size 128 --threads 1 \
        --configs plain repvgg acnet dbb all "odbb k=5" "odbb k=10" "odbb k=15" "odbb k=20"

A converted torchvision host (any ``torchvision.<builder>``, 3 channels, 32 pixels by default;
``odbb k=N`` takes any branch count), here the fine-tuning benchmark's (configs/fashion_mnist_shufflenet.yaml):

    python benchmarks/train_cost.py --models torchvision.shufflenet_v2_x0_5 --sizes 28 --batch-size 128 --threads 1 \
        --configs plain dbb "odbb k=61" --reparam offline online

The headroom host (configs/fashion_mnist_deep.yaml, trained online):

    python benchmarks/train_cost.py --models repvgg_tiny_deep --batch-size 128 --threads 1 --reparam online \
        --configs plain repvgg acnet dbb all "odbb k=48" "odbb k=96"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from typing import Any

CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {"method": "plain"},
    "repvgg": {"method": "repvgg"},
    "acnet": {"method": "acnet"},
    "dbb": {"method": "dbb"},
    "all": {"method": "all"},
    "odbb@0.17": {"method": "odbb", "budget": 0.17},
    "odbb@0.34": {"method": "odbb", "budget": 0.34},
    "odbb@1.0": {"method": "odbb", "budget": 1.0},
    **{f"odbb k={k}": {"method": "odbb", "budget": k} for k in (5, 10, 15, 20, 48, 96)},
}
DEFAULT_CONFIGS = ("plain", "repvgg", "dbb", "all", "odbb@0.17", "odbb@0.34", "odbb@1.0")
MODELS: dict[str, dict[str, Any]] = {  # model config, input channels and default input size
    "repvgg_a0": {"name": "repvgg_a0", "options": {}, "channels": 3, "size": 32},
    "resnet18": {"name": "resnet18", "options": {}, "channels": 3, "size": 32},
    # the host of configs/fashion_mnist.yaml (30 candidates), on Fashion-MNIST-shaped input
    "repvgg_tiny_s2": {"name": "repvgg_tiny", "options": {"strides": [2, 2, 2]}, "channels": 1, "size": 28},
    # the 24-layer host of configs/fashion_mnist_deep.yaml (144 candidates)
    "repvgg_tiny_deep": {"name": "repvgg_tiny", "options": {"depths": [8, 8, 8], "strides": [2, 2, 2]},
                         "channels": 1, "size": 28},
}
REPARAM = ("offline", "online")


def _model_spec(model_key: str) -> dict[str, Any]:
    """A host of ``MODELS``, or ``torchvision.<builder>`` (converted; 3 channels, 32 pixels by default)."""
    if model_key in MODELS:
        return MODELS[model_key]
    return {"name": model_key, "options": {}, "channels": 3, "size": 32}


def _config(config_key: str) -> dict[str, Any]:
    """The ``trial.search`` keys of a config name: ``CONFIGS``, or ``odbb k=N`` / ``odbb@R`` for any N / R."""
    if config_key in CONFIGS:
        return CONFIGS[config_key]
    if config_key.startswith("odbb k="):
        return {"method": "odbb", "budget": int(config_key.removeprefix("odbb k="))}
    return {"method": "odbb", "budget": float(config_key.removeprefix("odbb@"))}


def _config_name(text: str) -> str:
    """argparse type of ``--configs``: a known name, ``odbb k=N`` or ``odbb@R``."""
    try:
        if text in CONFIGS or (text.startswith(("odbb k=", "odbb@")) and _config(text)):
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"unknown config {text!r}; allowed: {', '.join(CONFIGS)}, 'odbb k=N' or 'odbb@R'")


def _model_name(text: str) -> str:
    """argparse type of ``--models``: a key of ``MODELS`` or ``torchvision.<builder>``."""
    if text not in MODELS and not text.startswith("torchvision."):
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; allowed: {', '.join(MODELS)} or torchvision.<builder>")
    return text


def _model_config(model_key: str, size: int, reparam: str) -> dict[str, Any]:
    """The ``trial.model`` section: ResNet-18 with the ImageNet stem from 64 pixels up, the small stem below."""
    spec = _model_spec(model_key)
    options = dict(spec["options"])
    if spec["name"].startswith("resnet"):
        options["stem"] = "imagenet" if size >= 64 else "small"
    return {"name": spec["name"], "options": options, "reparam": reparam}


def _cpu_tensor_peak(run: Callable[[], None]) -> int:
    """The most bytes of CPU tensors alive at once while ``run()`` runs (tensors made before it
    are not counted), summed from the profiler's allocation and free events in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = prof.profiler.kineto_results.events()  # FunctionEvents drop some "[memory]" events
    live = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"):
        live += nbytes
        peak = max(peak, live)
    return peak


def _worker(model_key: str, config_key: str, reparam: str, size: int, device_name: str, batch_size: int,
            steps: int) -> dict[str, float]:
    """Measure one configuration in this process (run via a fresh subprocess)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from trainables.build import build_trial_model
    from trainables.config import TrialConfig
    from trainables.engine import SearchEngine

    device = torch.device(device_name)
    warmup = 3
    search = {"epochs": 1000, "random_epochs": 0, "search_epochs": 999, **_config(config_key)}
    cfg = TrialConfig.from_dict({"model": _model_config(model_key, size, reparam), "search": search})
    channels, height, width = _model_spec(model_key)["channels"], size, size
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn((warmup + steps) * batch_size, channels, height, width, generator=generator)
    targets = torch.randint(0, 10, (len(inputs),), generator=generator)
    data = TensorDataset(inputs, targets)
    warm_loader = DataLoader(torch.utils.data.Subset(data, range(warmup * batch_size)), batch_size=batch_size)
    loader = DataLoader(torch.utils.data.Subset(data, range(warmup * batch_size, len(data))), batch_size=batch_size)
    engines: list[SearchEngine] = []

    def build_and_warm_up() -> None:
        model = build_trial_model(cfg, 10, channels)
        engines.append(SearchEngine(model, cfg.search, cfg.optim, steps_per_epoch=warmup + steps, seed=0,
                                    device=device))
        engines[0].train_epoch(warm_loader)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        build_and_warm_up()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _cpu_tensor_peak(build_and_warm_up)
    engine = engines[0]
    start = time.perf_counter()
    engine.train_epoch(loader)
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / steps
    return {"step_s": step_s, "peak_mb": peak / 2**20, "branches": float(engine.eval_mask().sum()),
            "candidates": float(engine.num_candidates)}


def _measure(model_key: str, config_key: str, reparam: str, size: int, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", model_key, config_key, reparam, str(size), "--device", args.device,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{model_key} {config_key} {reparam} {size} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


Results = dict[str, dict[str, dict[str, dict[str, float]]]]  # "model @size" -> reparam -> config -> row


def _table(results: Results, args: argparse.Namespace) -> str:
    memory = "peak tensor MB"
    lines = [f"| model @ input | config | branches kept / candidates | form | step (s) | x plain | online / offline "
             f"| {memory} | x plain | online / offline |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, forms in results.items():
        plain = forms[args.reparam[0]]["plain"]
        for config_key in args.configs:
            for reparam in args.reparam:
                row = forms[reparam][config_key]
                offline = forms.get("offline", {}).get(config_key)
                vs = (f"{row['step_s'] / offline['step_s']:.2f}", f"{row['peak_mb'] / offline['peak_mb']:.2f}") \
                    if reparam == "online" and offline else ("", "")
                lines.append(
                    f"| {label} | {config_key} | {int(row['branches'])} / {int(row['candidates'])} | {reparam} | "
                    f"{row['step_s']:.4f} | {row['step_s'] / plain['step_s']:.2f} | {vs[0]} | "
                    f"{row['peak_mb']:.0f} | {row['peak_mb'] / plain['peak_mb']:.2f} | {vs[1]} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--models", nargs="+", default=["repvgg_a0", "resnet18"], type=_model_name,
                        help=f"{', '.join(MODELS)} or torchvision.<builder>")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), type=_config_name,
                        help=f"{', '.join(CONFIGS)}, 'odbb k=N' or 'odbb@R'")
    parser.add_argument("--reparam", nargs="+", default=list(REPARAM), choices=REPARAM,
                        help="training forms to time; ratios are to the first form's plain network")
    parser.add_argument("--sizes", nargs="+", type=int, help="input sizes (default: each model's own)")
    parser.add_argument("--repeats", type=int, default=1, help="median step time over this many subprocesses")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--worker", nargs=4, metavar=("MODEL", "CONFIG", "REPARAM", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        model_key, config_key, reparam, size = args.worker
        print(json.dumps(_worker(model_key, config_key, reparam, int(size), args.device, args.batch_size, args.steps)))
        return
    if "plain" not in args.configs:  # the reference of every ratio
        args.configs.insert(0, "plain")
    results: Results = {}
    for model_key in args.models:
        for size in args.sizes or [_model_spec(model_key)["size"]]:
            label = f"{model_key} @{size}"
            results[label] = {reparam: {} for reparam in args.reparam}
            for config_key in args.configs:
                for reparam in args.reparam:  # the forms side by side, config by config
                    runs = [_measure(model_key, config_key, reparam, size, args) for _ in range(args.repeats)]
                    row = dict(runs[0], step_s=statistics.median(r["step_s"] for r in runs),
                               peak_mb=statistics.median(r["peak_mb"] for r in runs))
                    results[label][reparam][config_key] = row
                    print(f"{label:>16} {config_key:>10} {reparam:>7}: {row['step_s']:.4f} s/step, "
                          f"{row['peak_mb']:.0f} MB", flush=True)
    print(f"\n{date.today()} {platform.processor() or platform.machine()}, {args.device}, "
          f"{args.threads} threads, batch {args.batch_size}, {args.steps} timed steps\n")
    print(_table(results, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
