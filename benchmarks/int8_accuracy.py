"""Do re-parameterized models survive INT8? Float32 vs ONNX Runtime INT8 per block form.

Trains every (host, method, block form, seed) of the grid below as one trial (``run_trial``,
no Ray) with ``trial.export.int8.enabled`` (``trainables.run.quantize``: QDQ, per-channel INT8
weights, MinMax calibration on 256 training images), and records the fused float32 and the
INT8 test accuracy, the drop, the ONNX Runtime latency of both (same session options, batch
1), and the weight and activation ranges of the fused model that INT8 has to cover:

* weights: per conv, the largest ``max|w| / std(w)`` over output channels (what a per-channel
  INT8 grid must span, in standard deviations), median and max over convs;
* activations: per conv input (quantized per tensor), ``max|a| / p99.9|a|`` on the calibration
  images (the outlier ratio; MinMax calibration spends its 256 levels on the max), median and max.

Rows go to ``--out/rows.jsonl`` as each trial ends, each with the settings it ran under (a
rerun skips the rows already there); ``--out/report.md`` is rewritten after every row: with
several ``--lr`` values, each (host, method, form) at the one with the best mean validation
accuracy of its fused float32 model (test accuracy never chooses), mean ± std over seeds, and
Welch's p for each quantization-aware form against its standard form.

    apt-get install -y dataset-fashion-mnist
    nice -n 10 python benchmarks/int8_accuracy.py --out benchmarks/results/int8
    python benchmarks/int8_accuracy.py --out benchmarks/results/int8 --report-only
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from scipy import stats
from torch import nn

from orchestrator.tracking.fused_model import load_fused
from searchspace import odbb_layers
from trainables import TrialConfig, apply_overrides, run_trial
from trainables.run.build import build_trial_model
from trainables.run.data import build_data
from trainables.run.quantize import calibration_set, weight_ranges

FASHION = {"dataset": "fashion_mnist", "root": "/usr/share/datasets/fashion-mnist", "batch_size": 128}
HOSTS: dict[str, dict[str, Any]] = {
    # configs/fashion_mnist_deep.yaml's 24-layer plain stack; offline: RepVGG's own block, a BN per branch
    "deep24": {"model": {"name": "repvgg_tiny", "options": {"depths": [8, 8, 8], "strides": [2, 2, 2]}},
               "data": FASHION, "forms": ("offline", "offline_qa")},
    # configs/fashion_mnist_shufflenet.yaml's torchvision host (20 converted layers, 19 depthwise);
    # online, as that config trains it (offline DBB on depthwise convs is 5-9x plain on a CPU)
    "shufflenet": {"model": {"name": "torchvision.shufflenet_v2_x0_5"}, "data": {**FASHION, "channels": 3},
                   "forms": ("online", "online_qa")},
}
METHODS: dict[str, dict[str, Any]] = {
    "plain": {"method": "plain", "random_epochs": 0, "search_epochs": 0},
    "repvgg": {"method": "repvgg", "random_epochs": 0, "search_epochs": 0},
    "dbb": {"method": "dbb", "random_epochs": 0, "search_epochs": 0},
    "odbb": {"method": "odbb", "preset": "short"},  # budget: RepVGG's count, 2 branches per layer
}
_QUANTIZED = ("fused_val_acc", "test_acc", "int8_val_acc", "int8_test_acc", "int8_test_drop", "latency_onnx_fp32_ms",
              "latency_int8_ms", "latency_fused_ms", "int8_seconds", "branches_kept", "train_seconds", "peak_memory_mb")


_SETTINGS = ("epochs", "limit_train", "val_fraction", "threads", "calibration_images")


def trial_config(host: str, method: str, form: str, seed: int, lr: float, args: argparse.Namespace) -> TrialConfig:
    spec = HOSTS[host]
    trial = {
        "seed": seed,
        "model": {**spec["model"], "reparam": form},
        "data": {**spec["data"], "val_fraction": args.val_fraction, "limit_train": args.limit_train, "split_seed": 0},
        "search": {**METHODS[method], "epochs": args.epochs},
        "optim": {"lr": lr},
        "runtime": {"device": "cpu", "num_threads": args.threads},
        "export": {"formats": ["state_dict"], "latency_min_run_time": 0.2,
                   "int8": {"enabled": True, "calibration_images": args.calibration_images}},
    }
    cfg = TrialConfig.from_dict(trial)
    if method == "odbb":
        data = build_data(cfg.data, seed)
        layers = len(odbb_layers(build_trial_model(apply_plain(cfg), data.num_classes, data.in_channels)))
        cfg = TrialConfig.from_dict(apply_overrides(trial, {"search.budget": 2 * layers}))
    return cfg


def apply_plain(cfg: TrialConfig) -> TrialConfig:
    """``cfg`` as the plain baseline (to count the host's layers)."""
    return TrialConfig.from_dict(apply_overrides(cfg.to_dict(), {"search.method": "plain"}))


@torch.no_grad()
def ranges(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Weight and activation ranges of the fused ``model`` (module doc), over its convs."""
    weight = weight_ranges(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    seen: list[torch.Tensor] = []
    handles = [c.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].abs().flatten())) for c in convs]
    model(images)
    for h in handles:
        h.remove()
    act = []
    for a in seen:
        sample = a if a.numel() <= 1_000_000 else a[torch.randperm(a.numel())[:1_000_000]]
        act.append(float(a.max() / torch.quantile(sample.double(), 0.999).clamp_min(1e-12)))
    return {"weight_range_median": statistics.median(weight), "weight_range_max": max(weight),
            "act_range_median": statistics.median(act), "act_range_max": max(act)}


def run_row(host: str, method: str, form: str, seed: int, lr: float, args: argparse.Namespace) -> dict[str, Any]:
    cfg = trial_config(host, method, form, seed, lr, args)
    label = f"{host}-{method}-{form}-lr{lr:g}-s{seed}"
    started = time.perf_counter()
    result = run_trial(cfg, args.out / "runs" / label, trial_name=label)
    errors = result.summary.get("export_errors", {})
    row = {"host": host, "method": method, "form": form, "seed": seed, "lr": lr,
           **{k: getattr(args, k) for k in _SETTINGS}, "wall_s": time.perf_counter() - started,
           **{k: result.metrics[k] for k in _QUANTIZED if k in result.metrics}, "errors": errors}
    model, _ = load_fused(result.export_dir)
    data = build_data(cfg.data, seed)
    calib = calibration_set(data.train_eval, args.calibration_images)
    images = torch.stack([calib[i][0] for i in range(len(calib))])
    row.update(ranges(model, images))
    return row


def _welch(a: list[float], b: list[float]) -> str:
    """Welch's t-test p-value of two samples ('-' with fewer than 2 in either; 'n/a' when both are constant)."""
    if len(a) < 2 or len(b) < 2:
        return "-"
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    return "n/a" if math.isnan(p) else f"{p:.3f}"


def _mean_std(values: list[float], scale: float = 1.0) -> str:
    if not values:
        return "-"
    m = statistics.mean(values) * scale
    s = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.2f} ± {s:.2f}"


def _chosen(rows: list[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """The rows of the learning rate with the best mean validation accuracy (fused float32)."""
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for r in rows:
        by_lr.setdefault(r["lr"], []).append(r)
    lr = max(by_lr, key=lambda k: statistics.mean(r["fused_val_acc"] for r in by_lr[k]))
    return lr, by_lr[lr]


def report(rows: list[dict[str, Any]], out: Path) -> str:
    """Markdown table: one line per (host, method, form) at its lr chosen on validation, mean ±
    std over seeds; Welch's p of QA vs standard; the settings the rows ran under."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["host"], r["method"], r["form"]), []).append(r)
    chosen = {key: _chosen(rs) for key, rs in groups.items()}
    settings = sorted({json.dumps({k: r.get(k) for k in _SETTINGS}) for r in rows})
    lines = [*(f"Settings: {s}" for s in settings), "",
             ("| host | method | form | lr (val; tried) | seeds | fp32 val % | fp32 test % | INT8 test % | drop (pts) "
              "| Welch p, QA vs std (INT8 acc / drop) | fp32 ORT ms | INT8 ORT ms | weight range med/max "
              "| act range med/max | train s |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (host, method, form), (lr, rs) in sorted(chosen.items()):
        col = lambda k, rs=rs: [r[k] for r in rs if k in r]
        p = "-"
        if form.endswith("_qa") and (host, method, form.removesuffix("_qa")) in chosen:
            std = chosen[(host, method, form.removesuffix("_qa"))][1]
            p = " / ".join(_welch(col(k), [r[k] for r in std if k in r]) for k in ("int8_test_acc", "int8_test_drop"))
        tried = ", ".join(f"{x:g}" for x in sorted({r["lr"] for r in groups[(host, method, form)]}))
        lines.append(
            f"| {host} | {method} | {form} | {lr:g} ({tried}) | {len(rs)} | {_mean_std(col('fused_val_acc'), 100)} | "
            f"{_mean_std(col('test_acc'), 100)} | "
            f"{_mean_std(col('int8_test_acc'), 100)} | {_mean_std(col('int8_test_drop'), 100)} | {p} | "
            f"{_mean_std(col('latency_onnx_fp32_ms'))} | {_mean_std(col('latency_int8_ms'))} | "
            f"{_mean_std(col('weight_range_median'))} / {_mean_std(col('weight_range_max'))} | "
            f"{_mean_std(col('act_range_median'))} / {_mean_std(col('act_range_max'))} | "
            f"{_mean_std(col('train_seconds'))} |")
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def _order(hosts: list[str], methods: list[str]) -> list[tuple[str, str]]:
    """(host, method) pairs, cheapest informative first: the deep host's plain and RepVGG (the
    published INT8 failure), the torchvision host, then the deep host's DBB and ODBB (offline DBB
    is the slowest to train), so a run cut short still has whole rows."""
    first = [(h, m) for h in hosts[:1] for m in methods if m in ("plain", "repvgg")]
    rest = [(h, m) for h in hosts[1:] for m in methods] + [(h, m) for h in hosts[:1] for m in methods
                                                             if m not in ("plain", "repvgg")]
    return first + rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--hosts", nargs="+", default=list(HOSTS), choices=list(HOSTS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--limit-train", type=int, default=4000)
    parser.add_argument("--val-fraction", type=float, default=0.02)
    parser.add_argument("--lr", type=float, nargs="+", default=[0.05],
                        help="learning rates to try; the report keeps each row group's best on validation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--forms", nargs="+", default=None, help="block forms instead of each host's own pair "
                        "(e.g. online online_qa: offline DBB on the deep host is ~10x plain on a busy CPU)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "rows.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    if not args.report_only:
        done = {(r["host"], r["method"], r["form"], r["lr"], r["seed"]) for r in rows}
        for host, method in _order(args.hosts, args.methods):
            for form in args.forms or HOSTS[host]["forms"]:
                if method == "plain" and form.endswith("_qa"):
                    continue  # kxk alone: no identity or 1x1 to change
                for lr, seed in ((lr, seed) for lr in args.lr for seed in args.seeds):
                    if (host, method, form, lr, seed) in done:
                        continue
                    row = run_row(host, method, form, seed, lr, args)
                    rows.append(row)
                    with path.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
                    report(rows, args.out)
    print(report(rows, args.out))


if __name__ == "__main__":
    main()
