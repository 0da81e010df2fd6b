"""``search.control``: the control trials a sweep adds, each trial's gain over its control, the
per-method comparison; and a user's PNG folders (train/ + val/, grayscale) swept end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _image_tree import digits_png_tree
from mlflow.tracking import MlflowClient

from orchestrator.records import TrialRecord, TrialStatus
from orchestrator.results.controls import control_report, mark_controls
from orchestrator.results.pareto import mark_front
from orchestrator.run import main
from orchestrator.sweep import parse_sweep
from orchestrator.sweep.control import method_keys
from orchestrator.sweep.space import trial_count
from trainables.errors import ConfigError


def _record(name: str, method: str, seed: int, lr: float, val: float, test: float) -> TrialRecord:
    config = {"search.method": method, "seed": seed, "optim.lr": lr, "model.reparam": "offline"}
    metrics = {"val_acc": val, "test_acc": test, "branches_kept": 10.0 if method == "plain" else 20.0}
    return TrialRecord(name, name, TrialStatus.FINISHED, config, metrics)


def test_control_pairs_by_setting_and_seed_and_stays_off_the_front() -> None:
    records = [_record(f"p{s}{lr}", "plain", s, lr, 0.80 + 0.01 * s, 0.70 + 0.01 * s) for s in range(3) for lr in (0.1, 0.2)]
    records += [_record(f"d{s}{lr}", "dbb", s, lr, 0.83 + 0.01 * s + 0.001 * (s == 1), 0.72 + 0.01 * s) for s in range(3)
                for lr in (0.1, 0.2)]
    mark_controls(records, "plain")
    by = {r.trial_name: r for r in records}
    assert by["p00.1"].control and not by["d00.1"].control and "gain_val_acc" not in by["p00.1"].metrics
    assert math.isclose(by["d10.2"].metrics["gain_val_acc"], 0.031) and math.isclose(by["d20.1"].metrics["gain_test_acc"], 0.02)
    mark_front(records, [type("O", (), {"metric": "val_acc", "mode": "max"})(),
                         type("O", (), {"metric": "branches_kept", "mode": "min"})()])
    assert not any(r.pareto for r in records if r.control)  # plain's 10 branches would be on the front otherwise
    report = control_report(records, "plain")
    assert len(report.verdicts) == 4  # dbb at 2 learning rates x (val, test)
    val = next(v for v in report.verdicts if v.metric == "val_acc" and v.searched.tuned["optim.lr"] == 0.1)
    assert math.isclose(val.difference, 0.03 + 0.001 / 3) and 0 <= val.p_value < 0.05
    lines = report.lines()
    assert any(line.strip().startswith("dbb (optim.lr=0.1): val_acc") and "Welch p=" in line for line in lines)
    assert "control.dbb.lr0.1.val_acc_gain" in report.parent_metrics()


def test_a_trial_pairs_with_the_control_of_its_own_schedule(kit, tmp_path: Path) -> None:
    """A grid sampling ``search.epochs`` beside the method pairs each trial with the control at
    its epochs (every key but the method's), and a ``search`` group's keys are the method's."""
    records = [_record(f"{m}{e}", m, 0, 0.1, 0.8 + 0.01 * e, 0.7) for m in ("plain", "dbb") for e in (5, 10)]
    for r in records:
        r.config["search.epochs"] = int(r.trial_name.removeprefix(r.config["search.method"]))
    data = kit.tiny_sweep(tmp_path, search={"algorithm": "grid", "num_samples": 1, "control": "plain"})
    data["space"] = {"search.epochs": {"grid": [5, 10]}, "search.method": {"grid": ["dbb"]}}
    keys = method_keys(parse_sweep(data).space)
    assert keys == {"search.method"}
    mark_controls(records, "plain", keys)
    assert [r.metrics.get("gain_val_acc") for r in records] == [None, None, 0.0, 0.0]  # dbb5 - plain5, dbb10 - plain10
    data["space"] = {"search": {"grid": [{"method": "dbb"}, {"method": "odbb", "budget": 8}]}}
    assert method_keys(parse_sweep(data).space) == {"search.method", "search.budget"}


def test_control_key_adds_the_control_to_a_grid_and_pairs_optuna_proposals(kit, tmp_path: Path) -> None:
    grid = {"algorithm": "grid", "num_samples": 1, "control": "plain"}
    data = kit.tiny_sweep(tmp_path, search=grid)
    data["space"] = {"search": {"grid": [{"method": "dbb"}, {"method": "odbb", "budget": 8}]}, "seed": {"grid": [0, 1]}}
    cfg = parse_sweep(data)
    assert trial_count(cfg.space, "grid", 1) == 6 and cfg.space[0].values[-1] == {"method": "plain"}
    data["space"] = {"seed": {"grid": [0, 1]}}
    cfg = parse_sweep(data)
    assert [p.values for p in cfg.space if p.key == "search.method"] == [("odbb", "plain")]
    optuna = kit.tiny_sweep(tmp_path, search={"control": "plain"})
    cfg = parse_sweep(optuna)  # Optuna's space never holds the control: each proposal is followed by it
    assert cfg.search.paired and not any(p.key == "search.method" for p in cfg.space)
    assert trial_count(cfg.space, "optuna", 3, cfg.search.paired) == 6
    optuna["space"]["search.method"] = {"choice": ["dbb", "plain"]}
    with pytest.raises(ConfigError, match="leave 'plain' out of the space"):
        parse_sweep(optuna)
    optuna["space"].pop("search.method")
    optuna["trial"]["search"]["method"] = "plain"
    with pytest.raises(ConfigError, match="every trial already trains 'plain'"):
        parse_sweep(optuna)


def _folder_sweep(kit, tmp_path: Path, **search) -> dict:
    data = kit.tiny_sweep(tmp_path, "folders", search={"algorithm": "grid", "num_samples": 1, **search})
    data["space"] = {"seed": {"grid": [0, 1]}}
    data["trial"]["data"] = {"dataset": "imagefolder", "root": str(tmp_path / "digits"), "channels": 1, "batch_size": 64}
    data["trial"]["export"]["formats"] = ["state_dict"]
    return data


def test_dry_run_prints_the_folder_facts_and_bad_folders_exit_2(kit, tmp_path: Path, write_sweep, capsys) -> None:
    counts = digits_png_tree(tmp_path / "digits", {"train": 300, "val": 120})
    path = write_sweep(_folder_sweep(kit, tmp_path))
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"train: {counts['train']} images ({tmp_path / 'digits' / 'train'})" in out
    assert f"val: {counts['val']} images ({tmp_path / 'digits' / 'val'})" in out
    assert "size: 8x8" in out and "channels: 1 (read as grayscale" in out and "normalisation: mean [" in out
    (tmp_path / "digits" / "val" / "7").rename(tmp_path / "digits" / "val7")
    (tmp_path / "digits" / "val" / "7").mkdir()
    assert main([str(path), "--dry-run"]) == 2
    assert f"class folder {tmp_path / 'digits' / 'val' / '7'} holds no image files" in capsys.readouterr().err


@pytest.mark.slow
def test_grayscale_folder_sweep_with_a_control(kit, tmp_path: Path, write_sweep) -> None:
    """train/ + val/ (+ test/) of gray PNGs, channels 1, search.control: plain: val_acc comes from
    val/, one channel reaches the model, controls and gains in the console table and MLflow."""
    counts = digits_png_tree(tmp_path / "digits", {"train": 400, "val": 150, "test": 100})
    data = _folder_sweep(kit, tmp_path, control="plain")
    data["trial"]["search"] = {"epochs": 2, "random_epochs": 0, "search_epochs": 1, "method": "dbb"}
    proc = kit.run_cli([str(write_sweep(data))], cwd=tmp_path, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent, kids = kit.children(client, "folders")
    assert len(kids) == 4
    controls = [k for k in kids if k.data.tags["repnas.control"] == "true"]
    assert len(controls) == 2 and all(k.data.params["search.method"] == "plain" for k in controls)
    for kid in kids:
        val = kid.data.metrics["val_acc"]
        assert abs(val * counts["val"] - round(val * counts["val"])) < 1e-6  # a fraction of val/'s 150 images
    paired = {k.data.params["seed"]: k for k in controls}
    for kid in kids:
        if kid.data.tags["repnas.control"] == "false":
            control = paired[kid.data.params["seed"]]
            assert math.isclose(kid.data.metrics["gain_val_acc"], kid.data.metrics["val_acc"] - control.data.metrics["val_acc"],
                                abs_tol=1e-9)
            assert "gain_test_acc" in kid.data.metrics
    table = out[out.index("Pareto front (*)"):]
    assert "gain_val_acc" in table and sum(line.startswith("control") for line in table.splitlines()) == 2
    assert "against the control (plain" in out and "dbb: val_acc" in out
    assert any(k.startswith("control.dbb.val_acc_gain") for k in parent.data.metrics)
    for summary in (tmp_path / "ray_results" / "folders").rglob("summary.json"):
        assert json.loads(summary.read_text())["input_shape"] == [1, 8, 8]
    sweep_file = tmp_path / "sweep.yaml"
    report = subprocess.run([sys.executable, "-m", "orchestrator.report", str(sweep_file), "--out", str(tmp_path / "report")],
                            cwd=tmp_path, env=kit.cli_env(), capture_output=True, text=True, timeout=300, check=False)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Against the control" in text and "- dbb: test_acc" in text
    state = torch.load(next((tmp_path / "ray_results" / "folders").rglob("fused_state_dict.pt")), weights_only=True)
    first_conv = next(v for k, v in state.items() if v.ndim == 4)
    assert first_conv.shape[1] == 1  # one input channel reached the model
