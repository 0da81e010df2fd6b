"""CPU eval latency: multi-branch ODBB model vs its deploy copy vs an independent plain conv net.

For each host (RepVGG-A0, ResNet-18) and batch size, three models run the same input:

* ``multi``: ``build_model(name, 1000)`` in eval mode, every branch active;
* ``deploy``: ``searchspace.reparameterize(multi)``;
* ``plain``: the same layer shapes built here from ``nn.Conv2d`` (with bias) + ReLU, not
  from searchspace, so it is what a hand-written deploy network costs.

Timing uses ``torch.utils.benchmark.Timer.blocked_autorange``. The three variants are
measured in short interleaved rounds (order rotated every round); the table reports the best (minimum) block time
over all rounds, which other load on a shared machine can only increase, and the
deploy/plain ratio of the medians too (a lucky fastest run can skew a best-of ratio).
Target: deploy/plain <= 1.02.

    python benchmarks/fusion_latency.py [--rounds 9] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.benchmark import Timer

from searchspace import build_model, reparameterize

REPVGG_A0 = ((48, 48, 96, 192, 1280), (1, 2, 4, 14, 1))
RESNET18 = ((64, 128, 256, 512), (2, 2, 2, 2))


def plain_repvgg_a0(num_classes: int = 1000) -> nn.Module:
    """RepVGG-A0 at inference: 3x3 conv (bias) + ReLU layers, stride 2 first in each stage."""
    layers: list[nn.Module] = []
    cin = 3
    for width, depth in zip(*REPVGG_A0):
        for i in range(depth):
            layers += [nn.Conv2d(cin, width, 3, 2 if i == 0 else 1, 1), nn.ReLU()]
            cin = width
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(0.1), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers, *head)


class _PlainBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU()
        self.conv2, self.act2 = nn.Conv2d(cout, cout, 3, 1, 1), nn.ReLU()
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act2(self.conv2(self.act1(self.conv1(x))) + self.shortcut(x))


def plain_resnet18(num_classes: int = 1000) -> nn.Module:
    """ResNet-18 at inference: convs with bias (BN folded), ImageNet stem."""
    widths, depths = RESNET18
    layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = widths[0]
    for s, (width, depth) in enumerate(zip(widths, depths)):
        for i in range(depth):
            layers.append(_PlainBasicBlock(cin, width, 2 if s > 0 and i == 0 else 1))
            cin = width
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(0.0), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers, *head)


PLAIN: dict[str, Callable[[], nn.Module]] = {"repvgg_a0": plain_repvgg_a0, "resnet18": plain_resnet18}


def _conv_shapes(model: nn.Module) -> list[tuple]:
    return [(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
            for m in model.modules() if isinstance(m, nn.Conv2d)]


def _time_ms(models: dict[str, nn.Module], x: Tensor, rounds: int, min_run_time: float,
             threads: int) -> dict[str, tuple[float, float]]:
    """(best, median) per-call time in ms of each model over interleaved rounds of blocked_autorange."""
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m(x)  # warm-up: allocations, one-time kernel selection
        keys = list(models)
        for r in range(rounds):
            for key in keys[r % len(keys):] + keys[:r % len(keys)]:  # rotate: no variant always runs first
                timer = Timer("m(x)", globals={"m": models[key], "x": x}, num_threads=threads)
                times[key] += [t * 1e3 for t in timer.blocked_autorange(min_run_time=min_run_time).times]
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def run(names: Sequence[str], batches: Sequence[tuple[int, int]], rounds: int, min_run_time: float,
        threads: int) -> list[dict]:
    """Measure every (model, batch, size) and return rows for the table."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rows = []
    for name in names:
        multi = build_model(name, 1000).eval()
        deploy = reparameterize(multi)
        plain = PLAIN[name]().eval()
        assert _conv_shapes(deploy) == _conv_shapes(plain), f"{name}: plain net differs in shape"
        assert sum(p.numel() for p in deploy.parameters()) == sum(p.numel() for p in plain.parameters())
        for batch, size in batches:
            x = torch.randn(batch, 3, size, size)
            t = _time_ms({"multi": multi, "deploy": deploy, "plain": plain}, x, rounds, min_run_time, threads)
            ms = {k: best for k, (best, _) in t.items()}
            rows.append({"model": name, "batch": batch, "input": f"{size}x{size}", **ms,
                         "deploy/plain": ms["deploy"] / ms["plain"], "multi/deploy": ms["multi"] / ms["deploy"],
                         "deploy/plain median": t["deploy"][1] / t["plain"][1]})
            print(f"  measured {name} batch {batch} @ {size}: (best, median) ms {t}", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    """The result table in Markdown (ms: best per-call time over all rounds)."""
    lines = [("| model | batch | input | multi-branch ms | deploy ms | plain ms | deploy/plain | multi/deploy "
             "| deploy/plain of medians |"),
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['input']} | {r['multi']:.1f} | {r['deploy']:.1f} | "
                     f"{r['plain']:.1f} | {r['deploy/plain']:.3f} | {r['multi/deploy']:.2f} "
                     f"| {r['deploy/plain median']:.3f} |")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PLAIN), choices=list(PLAIN))
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds per configuration")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per blocked_autorange")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--b1-size", type=int, default=224, help="input size at batch 1")
    parser.add_argument("--b32-size", type=int, default=112, help="input size at batch 32")
    args = parser.parse_args(argv)
    started = datetime.datetime.now()
    print(f"# {started:%Y-%m-%d %H:%M} | torch {torch.__version__} | {args.threads} threads | {_cpu_name()} "
          f"| {platform.system()} {platform.release()}", flush=True)
    rows = run(args.models, [(1, args.b1_size), (32, args.b32_size)], args.rounds, args.min_run_time, args.threads)
    print(markdown(rows))
    print(f"# total {(datetime.datetime.now() - started).total_seconds():.0f} s")


if __name__ == "__main__":
    main()
