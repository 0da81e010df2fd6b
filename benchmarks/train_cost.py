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
  Compiled rows compile in a first, unmeasured warm-up (under the profiler compilation
  crawls) and take the peak over a second one; on CPU the tensors alive before it (weights,
  buffers, gradients, alpha, optimiser state) are added to what it allocates.

Runtime settings (``trial.runtime``), each a table column; give several values to measure
them side by side (every combination, compiled rows after all eager ones):

* ``--precision fp32 bf16 fp16``: autocast dtype (``runtime.precision``; fp16 with its loss scaler).
* ``--channels-last off on``: model and inputs in ``torch.channels_last``.
* ``--compile off on``: ``runtime.compile``. The engine compiles only fixed architectures, so
  a searching config (``odbb@...``, measured in its search phase) runs eagerly under ``on``:
  its row repeats the eager row, marked ``eager (search)``. ``search`` forces torch.compile on
  the search phase as well, to measure what that would cost (a new mask every step means a new
  graph: the ``graphs`` column counts dynamo's compiled graphs, ``breaks`` its graph breaks).

Ratios: ``x plain`` is to the plain network of the first form with the same runtime settings;
``x eager plain`` to that plain network eager (compile off), where both were measured.
``warm-up s`` is the wall time of the build and the warm-up steps (torch.compile's compilation
happens there; 3 steps, twice for compiled rows). ``--time-limit`` bounds the whole measurement: rows that would start after it,
or run past it, are listed as not measured.

    python benchmarks/train_cost.py [--device cpu|cuda] [--batch-size 32] [--steps 10]
        [--threads N] [--models repvgg_a0 resnet18] [--configs plain dbb ...]
        [--reparam offline online] [--sizes 224 32] [--precision fp32 ...] [--channels-last off ...]
        [--compile off ...] [--time-limit S] [--json out.json]

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
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # this checkout's packages, also where the project is not installed (a GPU image)
    sys.path.insert(0, _ROOT)

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
PRECISIONS = ("fp32", "bf16", "fp16")
SWITCH = {"off": False, "on": True}
COMPILE = ("off", "on", "search")


def _runtime_label(precision: str, channels_last: str, compile_mode: str) -> str:
    """The key of one runtime setting in the results: ``bf16 cl compiled``, ``fp32``, ..."""
    parts = [precision, "cl" if SWITCH[channels_last] else "", {"off": "", "on": "compiled",
                                                               "search": "compiled+search"}[compile_mode]]
    return " ".join(p for p in parts if p)


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


def _peak_bytes(device: Any, run: Callable[[], None], base: int = 0, resident: int = 0) -> int:
    """The most bytes of tensors alive at once while ``run()`` runs. CUDA: allocated bytes over
    ``base`` (what was allocated before the model was built). CPU: the profiler sees only what
    ``run()`` allocates, so the tensors alive before it are added as ``resident``."""
    import torch

    if device.type != "cuda":
        return resident + _cpu_tensor_peak(run)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _resident_bytes(engine: Any) -> int:
    """Bytes of the tensors a trained engine holds between steps: the model's parameters, buffers
    and gradients, alpha and its gradient, both optimisers' state."""
    import torch

    tensors = [*engine.model.parameters(), *engine.model.buffers()]
    tensors += [p.grad for p in engine.model.parameters() if p.grad is not None]
    if engine.alpha is not None:
        tensors += [engine.alpha] + ([engine.alpha.grad] if engine.alpha.grad is not None else [])
    for optimizer in (engine.optimizer, engine.arch_optimizer):
        for state in (optimizer.state.values() if optimizer is not None else ()):
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t.device.type == "cpu"}
    return sum(storages.values())


def _worker(model_key: str, config_key: str, reparam: str, size: int, args: argparse.Namespace) -> dict[str, float]:
    """Measure one configuration in this process (run via a fresh subprocess)."""
    import torch
    from torch._dynamo.utils import counters
    from torch.utils.data import DataLoader, TensorDataset

    from trainables.config.sections import TrialConfig
    from trainables.run.build import build_trial_model
    from trainables.search.engine import SearchEngine

    device = torch.device(args.device)
    warmup, batch_size, steps = 3, args.batch_size, args.steps
    compile_mode = args.compile[0]
    search = {"epochs": 1000, "random_epochs": 0, "search_epochs": 999, **_config(config_key)}
    runtime = {"precision": args.precision[0], "channels_last": SWITCH[args.channels_last[0]],
               "compile": compile_mode != "off"}
    cfg = TrialConfig.from_dict({"model": _model_config(model_key, size, reparam), "search": search,
                                 "runtime": runtime})
    channels, height, width = _model_spec(model_key)["channels"], size, size
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn((warmup + steps) * batch_size, channels, height, width, generator=generator)
    targets = torch.randint(0, 10, (len(inputs),), generator=generator)
    data = TensorDataset(inputs, targets)
    pin = device.type == "cuda"  # as a trial's loaders on a GPU: non-blocking copies from pinned memory
    warm_loader = DataLoader(torch.utils.data.Subset(data, range(warmup * batch_size)), batch_size=batch_size,
                             pin_memory=pin)
    loader = DataLoader(torch.utils.data.Subset(data, range(warmup * batch_size, len(data))), batch_size=batch_size,
                        pin_memory=pin)
    engines: list[SearchEngine] = []

    def build_and_warm_up() -> None:
        model = build_trial_model(cfg, 10, channels)
        engine = SearchEngine(model, cfg.search, cfg.optim, steps_per_epoch=2 * warmup + steps, seed=0,
                              device=device, runtime=cfg.runtime)
        if compile_mode == "search" and cfg.search.searching:  # what the engine refuses to do
            engine.train_model = torch.compile(engine.model)
        engines.append(engine)
        engine.train_epoch(warm_loader)

    started = time.perf_counter()
    base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    if compile_mode == "off":  # the peak over the build and the warm-up
        peak = _peak_bytes(device, build_and_warm_up, base)
    else:  # compilation happens in a first warm-up, unmeasured (under the profiler it crawls);
        build_and_warm_up()  # the peak is over a second one, the tensors alive before it included
        peak = _peak_bytes(device, lambda: engines[0].train_epoch(warm_loader), base, _resident_bytes(engines[0]))
    warmup_s = time.perf_counter() - started
    engine = engines[0]
    start = time.perf_counter()
    engine.train_epoch(loader)
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / steps
    return {"step_s": step_s, "peak_mb": peak / 2**20, "warmup_s": warmup_s,
            "branches": float(engine.eval_mask().sum()), "candidates": float(engine.masks.num_candidates),
            "graphs": float(counters["stats"]["unique_graphs"]),
            "breaks": float(sum(counters["graph_break"].values()))}


def _measure(model_key: str, config_key: str, reparam: str, size: int, runtime: tuple[str, str, str],
             args: argparse.Namespace, timeout: float | None) -> dict[str, float] | str:
    """One row in a fresh subprocess; a string says why it was not measured."""
    precision, channels_last, compile_mode = runtime
    cmd = [sys.executable, __file__, "--worker", model_key, config_key, reparam, str(size), "--device", args.device,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--threads", str(args.threads),
           "--precision", precision, "--channels-last", channels_last, "--compile", compile_mode]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "time limit"
    if out.returncode != 0:
        raise RuntimeError(f"{model_key} {config_key} {reparam} {size} {runtime} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


Row = dict[str, float]
Results = dict[str, dict[str, dict[str, dict[str, Row | str]]]]  # "model @size" -> runtime -> reparam -> config -> row


def _ratio(a: Row | str | None, b: Row | str | None, key: str) -> str:
    return f"{a[key] / b[key]:.2f}" if isinstance(a, dict) and isinstance(b, dict) else ""


def _table(results: Results, args: argparse.Namespace) -> str:
    """One markdown row per measured (or skipped) configuration."""
    lines = [("| model @ input | config | branches kept / candidates | form | precision | channels_last | compile "
             "| step (s) | x plain | x eager plain | online / offline | warm-up s | peak MB | x plain "
             "| online / offline | graphs | breaks |"), "|" + "---|" * 17]
    first = args.reparam[0]
    for label, runtimes in results.items():
        for runtime, forms in runtimes.items():
            precision, channels_last, compile_mode = _split_label(runtime)
            eager = runtimes.get(_runtime_label(precision, channels_last, "off"), {})
            plain, eager_plain = forms[first].get("plain"), eager.get(first, {}).get("plain")
            for config_key in args.configs:
                for reparam in args.reparam:
                    row = forms[reparam].get(config_key)
                    if row is None:
                        continue
                    head = f"| {label} | {config_key} |"
                    mode = "eager (search)" if compile_mode == "on" and _config(config_key)["method"] == "odbb" \
                        else compile_mode
                    settings = f"{reparam} | {precision} | {channels_last} | {mode} |"
                    if isinstance(row, str):
                        lines.append(f"{head} | {settings} not measured: {row} |" + " |" * 9)
                        continue
                    offline = forms.get("offline", {}).get(config_key) if reparam == "online" else None
                    lines.append(
                        f"{head} {int(row['branches'])} / {int(row['candidates'])} | {settings} "
                        f"{row['step_s']:.4f} | {_ratio(row, plain, 'step_s')} | "
                        f"{_ratio(row, eager_plain, 'step_s') if compile_mode != 'off' else ''} | "
                        f"{_ratio(row, offline, 'step_s')} | {row['warmup_s']:.1f} | {row['peak_mb']:.0f} | "
                        f"{_ratio(row, plain, 'peak_mb')} | {_ratio(row, offline, 'peak_mb')} | "
                        f"{int(row['graphs'])} | {int(row['breaks'])} |")
    return "\n".join(lines)


def _split_label(label: str) -> tuple[str, str, str]:
    """Inverse of :func:`_runtime_label`."""
    parts = label.split()
    compile_mode = {"compiled": "on", "compiled+search": "search"}.get(parts[-1], "off")
    return parts[0], "on" if "cl" in parts else "off", compile_mode


def _plan(args: argparse.Namespace) -> list[tuple[tuple[str, str, str], str, int, str, str]]:
    """Every row to measure, eager runtimes first: (runtime, model, size, config, form)."""
    rows = []
    for compile_mode in sorted(args.compile, key=COMPILE.index):
        for precision in args.precision:
            for channels_last in args.channels_last:
                for model_key in args.models:
                    for size in args.sizes or [_model_spec(model_key)["size"]]:
                        for config_key in args.configs:
                            for reparam in args.reparam:
                                rows.append(((precision, channels_last, compile_mode), model_key, size, config_key,
                                             reparam))
    return rows


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
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=PRECISIONS, help="runtime.precision")
    parser.add_argument("--channels-last", nargs="+", default=["off"], choices=list(SWITCH),
                        help="runtime.channels_last")
    parser.add_argument("--compile", nargs="+", default=["off"], choices=COMPILE,
                        help="runtime.compile (search: force it on the search phase too)")
    parser.add_argument("--repeats", type=int, default=1, help="median step time over this many subprocesses")
    parser.add_argument("--time-limit", type=float, help="seconds for all measurements; later rows are skipped")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--worker", nargs=4, metavar=("MODEL", "CONFIG", "REPARAM", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        model_key, config_key, reparam, size = args.worker
        print(json.dumps(_worker(model_key, config_key, reparam, int(size), args)))
        return
    if "plain" not in args.configs:  # the reference of every ratio
        args.configs.insert(0, "plain")
    deadline = None if args.time_limit is None else time.monotonic() + args.time_limit
    results: Results = {}
    for runtime, model_key, size, config_key, reparam in _plan(args):
        label, key = f"{model_key} @{size}", _runtime_label(*runtime)
        forms = results.setdefault(label, {}).setdefault(key, {r: {} for r in args.reparam})
        eager = results[label].get(_runtime_label(runtime[0], runtime[1], "off"), {}).get(reparam, {})
        if runtime[2] == "on" and _config(config_key)["method"] == "odbb" and config_key in eager:
            forms[reparam][config_key] = eager[config_key]  # the engine runs the search phase eagerly
            continue
        runs: list[Row | str] = []
        for _ in range(args.repeats):
            left = None if deadline is None else deadline - time.monotonic()
            runs.append("time limit" if left is not None and left <= 0 else
                        _measure(model_key, config_key, reparam, size, runtime, args, left))
        measured = [r for r in runs if isinstance(r, dict)]
        row: Row | str = runs[-1] if not measured else dict(
            measured[0], step_s=statistics.median(r["step_s"] for r in measured),
            peak_mb=statistics.median(r["peak_mb"] for r in measured))
        forms[reparam][config_key] = row
        shown = row if isinstance(row, str) else (f"{row['step_s']:.4f} s/step, {row['peak_mb']:.0f} MB, "
                                                  f"warm-up {row['warmup_s']:.1f} s")
        print(f"{label:>16} {key:>20} {config_key:>10} {reparam:>7}: {shown}", flush=True)
    print(f"\n{date.today()} {platform.processor() or platform.machine()}, {args.device}, "
          f"{args.threads} threads, batch {args.batch_size}, {args.steps} timed steps\n")
    print(_table(results, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
