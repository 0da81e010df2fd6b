"""The benchmark scripts' own logic (their figures come from running them, see benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

from searchspace import Architecture
from trainables import TrialConfig
from trainables.run.build import build_trial_model

_ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, _ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_mask_control_draws_a_seeded_k_branch_architecture(tmp_path: Path) -> None:
    control = _script("random_mask_control")
    cfg = TrialConfig.from_dict({"model": {"name": "repvgg_tiny"}, "data": {"dataset": "digits"},
                                 "search": {"epochs": 2, "random_epochs": 1, "search_epochs": 1}})
    first, again, other = (control.random_architecture(cfg, 12, s) for s in (0, 0, 1))
    assert first == again and first != other  # seeded: one mask per seed
    for arch in (first, other):
        with_identity = [layer for layer in arch.layers if layer.identity]
        fallbacks = sum(layer.branches == ["kxk"] for layer in arch.layers if not layer.identity)
        assert 12 <= arch.num_branches <= 12 + fallbacks and with_identity
        assert all(layer.branches or layer.identity for layer in arch.layers)  # no layer left empty
    path = tmp_path / "arch.json"
    first.save(path)
    fixed = TrialConfig.from_dict({**cfg.to_dict(), "search": {**cfg.to_dict()["search"], "method": str(path)}})
    model = build_trial_model(fixed, 10, 1)  # the trial builds exactly the drawn architecture
    assert Architecture.load(path).layers == first.layers
    assert sum(len(b.active_branches) for b in model.modules() if hasattr(b, "active_branches")) == first.num_branches


def test_train_cost_cpu_tensor_peak_counts_live_tensors_only() -> None:
    """Peak = the most bytes alive at once during the call: freed tensors do not add up, kept ones count."""
    import torch

    cost = _script("train_cost")
    kept: list[torch.Tensor] = []

    def run() -> None:
        for _ in range(3):
            scratch = torch.ones(2**20)  # 4 MiB, freed each round
            del scratch
        kept.append(torch.ones(2**19))  # 2 MiB, alive at the end
        torch.ones(2**18).sum()  # 1 MiB temporary beside it

    peak = cost._cpu_tensor_peak(run)
    assert 4 * 2**20 <= peak < 4 * 2**20 + 2**16
    assert cost._cpu_tensor_peak(lambda: None) == 0


def test_sweep_overhead_breakdown_spans_name_functions_that_exist() -> None:
    """Every function the --breakdown timing wraps still exists (a rename would break the benchmark)."""
    import importlib
    import os

    os.environ.pop("REPNAS_TIMING", None)  # load the span table without installing the import hook
    spec = importlib.util.spec_from_file_location("_timing", _ROOT / "benchmarks" / "timing" / "sitecustomize.py")
    timing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timing)
    for module_name, qualnames in timing.SPANS.items():
        module = importlib.import_module(module_name)
        for qualname in qualnames:
            owner = module
            for part in qualname.split("."):
                owner = getattr(owner, part)
            assert callable(owner), f"{module_name}.{qualname}"
    wrapped = {f"{m}.{q}" for m, qs in timing.SPANS.items() for q in qs}
    overhead = (_ROOT / "benchmarks" / "sweep_overhead.py").read_text()
    read = set(re.findall(r'"((?:orchestrator|trainables|ray)\.[\w.]+[^.])"', overhead))
    read |= {prefix + h for prefix in re.findall(r'"((?:orchestrator|trainables)\.[\w.]+\.)" \+', overhead)
             for h in ("on_start", "on_epoch", "on_end")}
    read -= {"orchestrator.run", "ray.scripts.scripts"}  # commands it starts (the driver, a Ray head), not spans
    assert "orchestrator.tracking.child_run.MLflowTrialHook.on_end" in read and read <= wrapped, read - wrapped


def test_train_cost_measures_eager_rows_first_and_labels_every_runtime_setting() -> None:
    """Compiled rows come after every eager one (a --time-limit cuts compilation first), each
    runtime label reads back as its settings, and a row cut by the limit is listed as such."""
    import argparse

    cost = _script("train_cost")
    args = argparse.Namespace(compile=["on", "off"], precision=["bf16", "fp32"], channels_last=["on"],
                              models=["repvgg_tiny_s2"], sizes=None, configs=["plain", "odbb@0.34"],
                              reparam=["offline", "online"])
    plan = cost._plan(args)
    modes = [runtime[2] for runtime, *_ in plan]
    assert len(plan) == 16 and modes == ["off"] * 8 + ["on"] * 8
    assert [runtime[0] for runtime, *_ in plan[:8]] == ["bf16"] * 4 + ["fp32"] * 4
    for runtime, *_ in plan:
        assert cost._split_label(cost._runtime_label(*runtime)) == runtime
    assert cost._split_label("fp16") == ("fp16", "off", "off")
    row = {"step_s": 0.2, "peak_mb": 30.0, "warmup_s": 1.0, "branches": 5.0, "candidates": 30.0, "graphs": 1.0,
           "breaks": 0.0}
    results = {"m @28": {"bf16 cl": {"offline": {"plain": dict(row, step_s=0.1, peak_mb=20.0)}, "online": {}},
                         "bf16 cl compiled": {"offline": {"plain": dict(row, step_s=0.05)},
                                              "online": {"plain": row, "odbb@0.34": "time limit"}}}}
    table = cost._table(results, argparse.Namespace(configs=["plain", "odbb@0.34"], reparam=["offline", "online"]))
    lines = table.splitlines()
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    compiled_online = next(line for line in lines if "| online | bf16 | on | on |" in line and "| plain |" in line)
    assert "| 4.00 | 2.00 |" in compiled_online  # x compiled plain, x eager plain
    assert any("eager (search)" in line and "not measured: time limit" in line for line in lines)


def test_convert_coverage_rows() -> None:
    import torchvision

    from searchspace import find_pairs

    coverage = _script("convert_coverage")
    row = coverage._worker("shufflenet_v2_x0_5", 1e9)  # the whole model, float64
    assert (row["convs"], row["converted"], row["skipped"]) == (56, 20, {"1x1 kernel": 36})
    assert row["preserve_eval"] == row["preserve_train"] == 0.0 and row["strict_load"]
    assert row["fused"] < 1e-12 and row["fused_output"] < 1e-12 and row["rounding_control"] > 0
    assert "| shufflenet_v2_x0_5 | 56 | 20 | 1x1 kernel: 36 | 32 | 0 / 0 |" in coverage.markdown([row])
    assert coverage._worker("vit_b_16", 1e9)["converted"] == 0
    timm_row = coverage._worker("test_efficientnet", 1e9, "timm")  # BatchNormAct2d after every KxK conv
    assert (timm_row["convs"], timm_row["converted"]) == (17, 6) and timm_row["strict_load"]
    assert timm_row["fused"] < 1e-12 and timm_row["preserve_eval"] == timm_row["preserve_train"] == 0.0
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10)
    pairs = {}  # the path of the largest builders: pair by pair (two pairs here), keys and shapes
    coverage._pair_by_pair(pairs, model, find_pairs(model).pairs[:2])
    assert pairs["preserve_eval"] == pairs["preserve_train"] == 0.0 and pairs["fused"] < 1e-12 and pairs["strict_load"]


def test_convert_step_cost_updates_coverage_rows(tmp_path: Path) -> None:
    """The step-cost script times the converting rows of a coverage JSON in place and leaves the rest."""
    import json
    import sys

    rows = [{"builder": "shufflenet_v2_x0_5", "convs": 56, "converted": 20, "skipped": {}, "input": 32,
             "preserve_eval": 0.0, "preserve_train": 0.0, "fused": 0.0, "strict_load": True},
            {"builder": "vit_b_16", "convs": 1, "converted": 0, "skipped": {"even kernel": 1}}]
    path = tmp_path / "coverage.json"
    path.write_text(json.dumps({"torchvision": "x", "rows": rows}))
    argv = sys.argv
    sys.argv = ["convert_step_cost.py", "--json", str(path), "--steps", "1", "--markdown", str(tmp_path / "t.md")]
    try:
        _script("convert_step_cost").main()
    finally:
        sys.argv = argv
    timed, untouched = json.loads(path.read_text())["rows"]
    assert timed["online_x_plain"] == pytest.approx(timed["step_online_s"] / timed["step_plain_s"])
    assert timed["step_plain_s"] > 0 and timed["step_online_s"] > 0  # a timing, so no bound on the ratio here
    assert untouched == rows[1]
    assert f"| yes | {timed['online_x_plain']:.2f} |" in (tmp_path / "t.md").read_text()


def test_repeat_audit_finds_repeats_up_to_inert_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep in MLflow (sqlite) whose second trial differs from its first only in a key that
    cannot matter (``random_sampling`` without a random phase), whose third differs in lr, and
    whose fourth repeats the third but failed (no result: not counted)."""
    import yaml
    from mlflow.tracking import MlflowClient

    from orchestrator.sweep import load_sweep
    from orchestrator.tracking.parent_run import TAG_PARENT, TAG_TRIAL, mlflow_params, start_parent_run

    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "audit", "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "space": {"search.random_sampling": {"choice": ["uniform", "fair"]}, "optim.lr": {"choice": [0.1, 0.2]}},
        "trial": {"model": {"name": "repvgg_tiny"}, "data": {"dataset": "digits"},
                  "search": {"epochs": 2, "random_epochs": 0, "search_epochs": 1}}}))
    cfg = load_sweep(sweep, env={})
    state = start_parent_run(cfg, resume=False)
    client = MlflowClient(state.tracking_uri)
    trials = [("uniform", 0.1, 0.9, "FINISHED"), ("fair", 0.1, 0.9, "FINISHED"), ("fair", 0.2, 0.8, "FINISHED"),
              ("uniform", 0.2, 0.1, "FAILED")]
    for i, (sampling, lr, val, status) in enumerate(trials):
        run = client.create_run(state.experiment_id, start_time=1000 + i,
                                tags={TAG_PARENT: state.parent_run_id, TAG_TRIAL: f"t{i}"}).info.run_id
        client.log_batch(run, params=mlflow_params(cfg.trial_config({"search.random_sampling": sampling,
                                                                      "optim.lr": lr}).to_dict()))
        client.log_metric(run, "val_acc", val, step=2)
        client.log_metric(run, "epoch", 2.0, step=2)
        client.set_terminated(run, status)
    rows = _script("repeat_audit").audit(sweep)
    assert [(r["trial"], r["repeats"], r["literal"]) for r in rows] == [("t0", None, False), ("t1", "t0", False),
                                                                        ("t2", None, False)]


def test_sweep_overhead_per_trial_costs_sum_the_spans_inside_each_trial(tmp_path: Path) -> None:
    import json

    hook = "orchestrator.tracking.child_run.MLflowTrialHook."
    spans = [  # one worker, two trials in sequence; the driver's spans and a span between trials do not count
        {"pid": 1, "f": "trainables.run.trial.run_trial", "s": 0.0, "d": 10.0},
        {"pid": 1, "f": hook + "on_start", "s": 0.5, "d": 1.0},
        {"pid": 1, "f": "ray.tune.report", "s": 5.0, "d": 0.25},
        {"pid": 1, "f": hook + "on_end", "s": 9.0, "d": 0.5},
        {"pid": 1, "f": "ray.tune.report", "s": 10.5, "d": 9.0},
        {"pid": 1, "f": "trainables.run.trial.run_trial", "s": 11.0, "d": 10.0},
        {"pid": 1, "f": hook + "on_epoch", "s": 12.0, "d": 0.125},
        {"pid": 1, "f": "trainables.run.checkpoint.save_checkpoint", "s": 13.0, "d": 5.0},
        {"pid": 2, "f": "orchestrator.tracking.parent_run.start_parent_run", "s": 12.0, "d": 3.0},
    ]
    path = tmp_path / "sweep.jsonl"
    path.write_text("\n".join(json.dumps(s) for s in spans))
    assert _script("sweep_overhead").per_trial_costs(path) == [1.75, 0.125]


def test_int8_ranges_measure_weight_and_activation_outliers() -> None:
    """The INT8 benchmark's range columns: a weight outlier shows in max|w|/std, an activation
    outlier in max|a| / p99.9|a|, and a model without outliers reads low on both."""
    import torch
    from torch import nn

    bench = _script("int8_accuracy")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)).eval()
    images = torch.randn(64, 1, 8, 8)
    calm = bench.ranges(model, images)
    with torch.no_grad():
        model[1].weight[0, 0, 1, 1] = 100 * model[1].weight.abs().max()  # an identity-like centre spike
    images[0, 0, 0, 0] = 1000.0  # one pixel far outside the rest
    loud = bench.ranges(model, images)
    assert calm["weight_range_max"] < 4 and loud["weight_range_max"] > 5  # sqrt(36) = 6 for one spike in 36
    assert calm["act_range_max"] < 2 and loud["act_range_max"] > 100


def test_int8_report_keeps_each_groups_lr_chosen_on_validation(tmp_path: Path) -> None:
    """With two learning rates, a row group is reported at the one with the better mean validation
    accuracy, even when the other has the better test accuracy; the settings come from the rows."""
    bench = _script("int8_accuracy")
    settings = {"epochs": 10, "limit_train": 4000, "val_fraction": 0.02, "threads": 1, "calibration_images": 256}

    def row(lr: float, seed: int, val: float, test: float) -> dict[str, Any]:
        return {"host": "deep24", "method": "repvgg", "form": "offline", "seed": seed, "lr": lr, **settings,
                "fused_val_acc": val, "test_acc": test, "int8_test_acc": test - 0.01, "int8_test_drop": 0.01}

    rows = [row(0.05, s, 0.80, 0.90) for s in range(3)] + [row(0.2, s, 0.85, 0.70) for s in range(3)]
    text = bench.report(rows, tmp_path)
    line = next(x for x in text.splitlines() if x.startswith("| deep24"))
    assert "| 0.2 (0.05, 0.2) | 3 | 85.00 ± 0.00 | 70.00 ± 0.00 |" in line
    assert text.startswith(f"Settings: {json.dumps(settings)}") and (tmp_path / "report.md").read_text() == text
