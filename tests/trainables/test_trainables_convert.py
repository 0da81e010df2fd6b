"""Converted hosts in trials: torchvision models trained, fused and loaded back into torchvision;
trained weights as the starting point (function-preserving, also for two_stage's rebuild);
every bad input of the new keys exits 2 from both command lines, naming the key."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _metrics import computed
import torch
import torchvision
import yaml
from torch import nn

from orchestrator.run import main as sweep_main
from searchspace import odbb_layers, reparameterize
from trainables import TrialConfig, apply_overrides
from trainables.run.build import build_trial_model, check_trial_model
from trainables.cli import main as cli_main
from trainables.run.data import build_data, make_loader
from trainables.search.engine import SearchEngine
from trainables.errors import ConfigError
from trainables.run.trial import run_trial

TESTS = Path(__file__).resolve().parents[1]
TOL = 1e-9

# digits as a torchvision model's input: 3 channels, 16 x 16
_TV = {"data.channels": 3, "data.image_size": 16, "data.limit_train": 96, "data.batch_size": 32}
_BUILDERS = {"resnet18": {}, "mobilenet_v2": {"width_mult": 0.25}}


def _cfg(tiny_dict: dict[str, Any], **dotted: Any) -> TrialConfig:
    return TrialConfig.from_dict(apply_overrides(tiny_dict, dotted))


def _engine(cfg: TrialConfig) -> tuple[SearchEngine, Any, Any]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = build_data(cfg.data, cfg.seed)
    loader = make_loader(data.train, cfg.data.batch_size, train=True)
    model = build_trial_model(cfg, data.num_classes, data.in_channels)
    engine = SearchEngine(model, cfg.search, cfg.optim, steps_per_epoch=len(loader), seed=cfg.seed,
                          device=torch.device("cpu"), rebuild=lambda: build_trial_model(cfg, 10, 3))
    return engine, loader, data


@pytest.mark.parametrize("reparam", ["offline", "online"])
@pytest.mark.parametrize("builder", list(_BUILDERS))
def test_torchvision_host_trains_fuses_and_loads_into_torchvision(tiny_dict: dict[str, Any], builder: str,
                                                                   reparam: str) -> None:
    cfg = _cfg(tiny_dict, **_TV, **{"model.name": f"torchvision.{builder}", "model.options": _BUILDERS[builder],
                                    "model.reparam": reparam, "search.preset": "short", "search.budget": 0.5,
                                    "search.epochs": 2, "search.random_epochs": 0})
    engine, loader, _ = _engine(cfg)
    engine.train_epoch(loader)  # the search epoch: noisy top-k, alpha learned, real digits batches
    engine.finalize()
    supernet = copy.deepcopy(engine.model).double().eval()
    fused = reparameterize(supernet)
    fresh = torchvision.models.get_model(builder, num_classes=10, **_BUILDERS[builder]).double().eval()
    fresh.load_state_dict(fused.state_dict(), strict=True)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert (supernet(x) - fresh(x)).abs().max() <= TOL


def test_a_converted_trial_exports_the_users_class(tmp_path: Path, tiny_dict: dict[str, Any]) -> None:
    cfg = _cfg(tiny_dict, **_TV, **{"model.name": "torchvision.mobilenet_v2", "model.options": _BUILDERS["mobilenet_v2"],
                                    "search.epochs": 2, "export.formats": ["state_dict", "torch_export", "onnx"]})
    result = run_trial(cfg, tmp_path / "run")
    assert result.summary["export_errors"] == {} and result.metrics["fused_max_logit_diff"] < 1e-4
    model = torchvision.models.mobilenet_v2(num_classes=10, **_BUILDERS["mobilenet_v2"]).eval()
    model.load_state_dict(torch.load(result.export_dir / "fused_state_dict.pt", weights_only=True), strict=True)
    program = torch.export.load(result.export_dir / "model.pt2").module()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(program(x), model(x), atol=1e-5)


def _save_trained(path: Path, builder: str = "mobilenet_v2") -> nn.Module:
    """A torchvision model with non-trivial BN statistics, saved as a user's state_dict."""
    torch.manual_seed(1)
    model = torchvision.models.get_model(builder, num_classes=10, **_BUILDERS[builder])
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.5, generator=g)
                m.running_mean.normal_(0.0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    torch.save(model.state_dict(), path)
    return model.eval()


@pytest.mark.parametrize("method", ["plain", "dbb", "odbb"])
@pytest.mark.parametrize("reparam", ["offline", "online"])
def test_weights_start_the_trial_from_the_trained_model(tmp_path: Path, tiny_dict: dict[str, Any], method: str,
                                                        reparam: str) -> None:
    original = _save_trained(tmp_path / "w.pt")
    cfg = _cfg(tiny_dict, **_TV, **{"model.name": "torchvision.mobilenet_v2", "model.options": _BUILDERS["mobilenet_v2"],
                                    "model.weights": str(tmp_path / "w.pt"), "model.reparam": reparam,
                                    "search.method": method})
    model = build_trial_model(cfg, 10, 3).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert (model(x) - original(x)).abs().max() <= 1e-5  # float32: the same function
    check_trial_model(cfg)


def test_two_stage_restarts_from_the_weights_not_a_random_init(tmp_path: Path, tiny_dict: dict[str, Any]) -> None:
    original = _save_trained(tmp_path / "w.pt")
    cfg = _cfg(tiny_dict, **_TV, **{"model.name": "torchvision.mobilenet_v2", "model.options": _BUILDERS["mobilenet_v2"],
                                    "model.weights": str(tmp_path / "w.pt"), "search.preset": "short",
                                    "search.budget": 1.0, "search.epochs": 2, "search.random_epochs": 0})
    engine, loader, _ = _engine(cfg)
    engine.train_epoch(loader)  # search: the weights move
    stem = engine.model.features[0][0].branches["kxk"].conv.weight
    assert not torch.equal(stem, original.features[0][0].weight)
    engine.fix(loader=loader)  # the fix of two_stage: rebuild from the weights
    assert torch.equal(stem, original.features[0][0].weight)
    assert all(float(b.branches["1x1_kxk"].bn2.weight.detach().abs().max()) == 0.0 for _, b in odbb_layers(engine.model))


def _sweep(tmp_path: Path, trial: dict[str, Any]) -> Path:
    path = tmp_path / "sweep.yaml"
    sweep = {"name": "t", "storage_path": str(tmp_path / "ray"), "space": {"optim.lr": {"choice": [0.05, 0.1]}},
             "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "trial": trial}
    path.write_text(yaml.safe_dump(sweep))
    return path


def _bad_weights(tmp_path: Path) -> dict[str, Path]:
    """Weights files that do not fit torchvision's mobilenet_v2 (width 0.25, 10 classes)."""
    good = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25).state_dict()
    files = {"keys": {k: v for k, v in good.items() if "features.3." not in k},
             "shapes": torchvision.models.mobilenet_v2(num_classes=5, width_mult=0.25).state_dict(),
             "list": [torch.zeros(2)]}
    paths = {}
    for name, obj in files.items():
        paths[name] = tmp_path / f"{name}.pt"
        torch.save(obj, paths[name])
    return paths


# (id, dotted overrides (WEIGHTS_<kind> is replaced by that file), the key, a fragment of the message)
BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("builder-typo", {"model.name": "torchvision.mobilenetv2"}, "trial.model.name",
     "did you mean 'torchvision.mobilenet_v2'"),
    ("builder-without-prefix", {"model.name": "mobilenet_v2"}, "trial.model.name",
     "did you mean 'torchvision.mobilenet_v2'"),
    ("nothing-to-convert", {"model.name": "torchvision.alexnet", "model.options": {}}, "trial.model.name",
     "no KxK conv -> BatchNorm pair"),
    ("gray-images", {"data.channels": None}, "trial.data.channels", "set data.channels: 3"),
    ("download-option", {"model.options": {"weights": "IMAGENET1K_V1"}}, "trial.model.options.weights",
     "nothing downloads"),
    ("option-from-the-data", {"model.options": {"num_classes": 3}}, "trial.model.options.num_classes",
     "set from the dataset's classes"),
    ("factory-option-from-the-data", {"model.name": "repvgg_tiny", "model.factory": "_factories:small_net",
                                      "model.options": {"in_channels": 1}}, "trial.model.options.in_channels",
     "set from data.channels"),
    ("timm-pretrained", {"model.name": "timm.resnet18", "model.options": {"pretrained": True}},
     "trial.model.options.pretrained", "nothing downloads"),
    ("timm-typo", {"model.name": "timm.resnet_18", "model.options": {}}, "trial.model.name", "unknown timm model"),
    ("factory-module", {"model.name": "repvgg_tiny", "model.factory": "no_such_pkg_xyz.nets:build"},
     "trial.model.factory", "cannot import module 'no_such_pkg_xyz.nets'"),
    ("factory-attribute", {"model.name": "repvgg_tiny", "model.factory": "_factories:no_such_net"},
     "trial.model.factory", "has no attribute 'no_such_net'"),
    ("factory-not-callable", {"model.name": "repvgg_tiny", "model.factory": "_factories:NOT_CALLABLE"},
     "trial.model.factory", "not callable"),
    ("factory-malformed", {"model.name": "repvgg_tiny", "model.factory": "small_net"}, "trial.model.factory",
     "expected 'package.module:function'"),
    ("name-and-factory", {"model.factory": "_factories:small_net"}, "trial.model.factory", "not both"),
    ("weights-missing", {"model.weights": "/no/such/weights.pt"}, "trial.model.weights", "not found"),
    ("weights-keys", {"model.weights": "WEIGHTS_keys"}, "trial.model.weights",
     "missing keys features.3.conv.0.0.weight"),
    ("weights-shapes", {"model.weights": "WEIGHTS_shapes"}, "trial.model.weights",
     "wrong shapes classifier.1.weight (5, 1280) (model: (10, 1280))"),
    ("weights-not-a-state-dict", {"model.weights": "WEIGHTS_list"}, "trial.model.weights", "not a state_dict"),
    ("weights-for-own-host", {"model.name": "repvgg_tiny", "model.weights": "WEIGHTS_keys"}, "trial.model.weights",
     "this project's own host"),
    ("weights-without-kxk", {"model.weights": "WEIGHTS_good", "search.method": ["1x1", "1x1_kxk"]},
     "trial.search.method", "keeps no 'kxk' branch"),
    ("weights-budget-below-kxk", {"model.weights": "WEIGHTS_good", "search.budget": 10}, "trial.search.budget",
     "fewer than the 18 kxk branches that search.keep_kxk keeps"),
]


def _bad_trial(tmp_path: Path, tiny_dict: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    paths = _bad_weights(tmp_path)
    paths["good"] = tmp_path / "good.pt"
    torch.save(torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25).state_dict(), paths["good"])
    resolved = {k: str(paths[v.removeprefix("WEIGHTS_")]) if isinstance(v, str) and v.startswith("WEIGHTS_") else v
                for k, v in overrides.items()}
    base = {**_TV, "model.name": "torchvision.mobilenet_v2", "model.options": _BUILDERS["mobilenet_v2"]}
    return apply_overrides(tiny_dict, {**base, **resolved})


@pytest.mark.parametrize(("case", "overrides", "key", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_exit_2_from_both_command_lines(case: str, overrides: dict[str, Any], key: str, fragment: str,
                                                   tmp_path: Path, tiny_dict: dict[str, Any], capsys,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))  # the user's factory module (tests/_factories.py)
    trial = _bad_trial(tmp_path, tiny_dict, overrides)
    with pytest.raises(ConfigError) as info:
        check_trial_model(TrialConfig.from_dict(trial))
    assert info.value.path == key and fragment in str(info.value)
    sweep = _sweep(tmp_path, trial)
    assert cli_main([str(sweep), "--output", str(tmp_path / "out")]) == 2
    assert f"{key}: " in capsys.readouterr().err
    assert sweep_main([str(sweep), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{key}: " in err and fragment in err and not (tmp_path / "ray").exists()


@pytest.mark.parametrize("command", [["trainables.cli", "--output", "out"], ["orchestrator.run", "--dry-run"]])
def test_bad_weights_exit_2_without_traceback(command: list[str], tmp_path: Path, tiny_dict: dict[str, Any]) -> None:
    sweep = _sweep(tmp_path, _bad_trial(tmp_path, tiny_dict, {"model.weights": "WEIGHTS_shapes"}))
    module, *flags = command
    proc = subprocess.run([sys.executable, "-m", module, str(sweep), *flags], capture_output=True, text=True,
                          timeout=180, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(TESTS.parent)})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "trial.model.weights" in proc.stderr and "wrong shapes" in proc.stderr and "Traceback" not in proc.stderr


def test_relative_paths_are_made_absolute_when_the_sweep_is_read(tmp_path: Path, tiny_dict: dict[str, Any],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Tune runs each trial in a folder of its own: a relative ``model.weights`` or ``data.root``
    (in ``trial:`` or sampled in ``space:``) is resolved once, against the driver's directory."""
    from orchestrator.sweep import load_sweep, param_space

    trial = _bad_trial(tmp_path, tiny_dict, {"model.weights": "good.pt", "data.root": "~/data"})
    (tmp_path / "sub").mkdir()
    shutil.copy(tmp_path / "good.pt", tmp_path / "sub" / "w.pt")
    path = _sweep(tmp_path, trial)
    raw = yaml.safe_load(path.read_text())
    raw["space"]["model.weights"] = {"choice": ["good.pt", "sub/w.pt"]}
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    cfg = load_sweep(path, env={})
    assert cfg.trial["model"]["weights"] == str(tmp_path / "good.pt") == cfg.base.model.weights
    assert cfg.trial["data"]["root"] == str(Path.home() / "data")
    weights = next(p for p in cfg.space if p.key == "model.weights")
    assert weights.values == (str(tmp_path / "good.pt"), str(tmp_path / "sub" / "w.pt"))
    assert param_space(cfg.space, "optuna")["model.weights"].categories == list(weights.values)


def test_a_search_from_weights_resumes_bit_identical_across_the_rebuild(tmp_path: Path,
                                                                         tiny_dict: dict[str, Any]) -> None:
    _save_trained(tmp_path / "w.pt")
    cfg = _cfg(tiny_dict, **_TV, **{"model.name": "torchvision.mobilenet_v2", "model.options": _BUILDERS["mobilenet_v2"],
                                    "model.weights": str(tmp_path / "w.pt"), "model.reparam": "online",
                                    "search.preset": "short", "search.random_epochs": 0, "search.budget": 30,
                                    "search.epochs": 3})
    saved: dict[int, Path] = {}

    def keep(metrics: dict[str, float], checkpoint: Path) -> None:
        saved[int(metrics["epoch"])] = Path(shutil.copytree(checkpoint, tmp_path / f"ckpt{int(metrics['epoch'])}"))

    full = run_trial(cfg, tmp_path / "full", report=keep)
    resumed = run_trial(cfg, tmp_path / "resumed", resume_from=saved[1])  # the two_stage rebuild comes after it
    assert [computed(m) for m in resumed.history] == [computed(m) for m in full.history]
    arch = json.loads((full.export_dir / "architecture.json").read_text())
    assert arch["model"] == "torchvision.mobilenet_v2" and all("kxk" in layer["branches"] for layer in arch["layers"])


@pytest.mark.slow
def test_ddp_trains_a_converted_model_from_weights(tmp_path: Path, tiny_dict: dict[str, Any]) -> None:
    """Two gloo workers on a torchvision host started from weights: the run ends with a fused,
    verified torchvision model."""
    import ray

    from trainables.ray_tune.distributed import WorkerResources, run_distributed

    _save_trained(tmp_path / "w.pt")
    cfg = _cfg(tiny_dict, **_TV, **{"model.name": "torchvision.mobilenet_v2", "model.options": _BUILDERS["mobilenet_v2"],
                                    "model.weights": str(tmp_path / "w.pt"), "runtime.workers": 2,
                                    "search.budget": 30, "search.epochs": 2, "search.random_epochs": 1,
                                    "search.search_epochs": 1})
    reports: list[tuple[dict[str, float], str]] = []

    def report(metrics: dict[str, float], checkpoint: Any) -> None:
        reports.append((metrics, checkpoint.to_directory(str(tmp_path / f"epoch{len(reports) + 1}"))))

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_distributed(cfg, report, workers=WorkerResources(cpus=1), storage_path=str(tmp_path / "storage"),
                        trial_name="ddp")
    finally:
        ray.shutdown()
    final, checkpoint = reports[-1]
    assert final["done"] == 1.0 and final["fused_max_logit_diff"] < 1e-3
    model = torchvision.models.mobilenet_v2(num_classes=10, **_BUILDERS["mobilenet_v2"])
    model.load_state_dict(torch.load(Path(checkpoint) / "export" / "fused_state_dict.pt", weights_only=True))
