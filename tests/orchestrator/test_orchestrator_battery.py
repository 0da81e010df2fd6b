"""A battery of plausible bad sweep files, each run with ``--dry-run`` as a new user would:
a refused file exits 2 with one paragraph naming the key (no traceback, no terminal colour
codes, Ray never started); a weights file in a format users have is accepted with one line
saying what was taken. docs/failure-modes.md lists the cases."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from torch import nn

from orchestrator.run import main

_MODELS = '''
import torch
from torch import nn

def small(num_classes=10, in_channels=1, width=8):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

def wide(num_classes=10, in_channels=1):
    return small(num_classes, in_channels, width=16)

def five_classes(num_classes=10, in_channels=1):
    return small(5, in_channels)

def fixed_input(num_classes=10, in_channels=1):  # a head sized for 32x32 inputs
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 32 * 32, num_classes))

def linear_only(num_classes=10, in_channels=1):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))

def as_dict(num_classes=10, in_channels=1):
    return {"model": small(num_classes, in_channels)}

def raises(num_classes=10, in_channels=1):
    raise RuntimeError("cannot build: no config file")

not_callable = 3
'''
_MODULE = "battery_models"
Sweep = dict[str, Any]


def _set(sweep: Sweep, dotted: str, value: Any) -> Sweep:
    out = copy.deepcopy(sweep)
    head, _, rest = dotted.partition(".")
    if head == "space" and rest:
        out["space"][rest] = value
        return out
    node = out
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return out


def _factory(sweep: Sweep, name: str, **model: Any) -> Sweep:
    out = copy.deepcopy(sweep)
    out["trial"]["model"] = {"factory": f"{_MODULE}:{name}", **model}
    return out


def _state(name: str = "small", **kw: Any) -> dict[str, torch.Tensor]:
    import importlib

    return importlib.import_module(_MODULE).__dict__[name](**kw).state_dict()


# weights files: name -> writer(path)
def _write_weights(kind: str, path: Path) -> None:
    if kind == "plain":
        torch.save(_state(), path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save(_state(), path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "text":
        path.write_text("conv.weight: [0.1, 0.2]\n")
    elif kind == "pickled_module":
        import importlib

        torch.save(importlib.import_module(_MODULE).small(), path)
    elif kind == "other_arch":
        torch.save(_state("wide"), path)
    elif kind == "imagenet_head":
        torch.save(_state(num_classes=1000), path)
    elif kind == "data_parallel":
        torch.save({f"module.{k}": v for k, v in _state().items()}, path)
    elif kind == "checkpoint_state_dict":
        torch.save({"epoch": 3, "state_dict": _state(), "optimizer": {"lr": 0.1}}, path)
    elif kind == "checkpoint_model":
        torch.save({"model": _state(), "epoch": 3}, path)
    elif kind == "checkpoint_ddp":
        torch.save({"state_dict": {f"module.{k}": v for k, v in _state().items()}}, path)
    elif kind == "safetensors":
        from safetensors.torch import save_file

        save_file(_state(), str(path))
    elif kind == "no_state_dict":
        torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, path)
    elif kind == "numpy_array":
        import numpy as np

        np.save(path, np.zeros(3))
    else:
        raise AssertionError(kind)


def _weights(kind: str, suffix: str = ".pt") -> Callable[[Sweep, Path], Sweep]:
    def make(sweep: Sweep, tmp: Path) -> Sweep:
        path = tmp / f"{kind}{suffix}"
        _write_weights(kind, path)
        return _factory(sweep, "small", weights=str(path))
    return make


def _plain(f: Callable[[Sweep], Sweep]) -> Callable[[Sweep, Path], Sweep]:
    return lambda sweep, tmp: f(sweep)


TV = {"name": "torchvision.vgg11_bn"}
# (case, make the sweep, exit code, text the output must hold: the key named, or the line of what was taken)
CASES: list[tuple[str, Callable[[Sweep, Path], Sweep], int, str]] = [
    ("factory-module-missing", _plain(lambda s: _set(s, "trial.model", {"factory": "no_such_pkg.models:build"})), 2,
     "trial.model.factory: cannot import module 'no_such_pkg.models'"),
    ("factory-function-misspelt", _plain(lambda s: _factory(s, "smal")), 2, "trial.model.factory: module"),
    ("factory-without-colon", _plain(lambda s: _set(s, "trial.model", {"factory": f"{_MODULE}.small"})), 2,
     "trial.model.factory"),
    ("factory-not-callable", _plain(lambda s: _factory(s, "not_callable")), 2, "trial.model.factory"),
    ("factory-raises", _plain(lambda s: _factory(s, "raises")), 2, "trial.model.factory: factory"),
    ("factory-returns-dict", _plain(lambda s: _factory(s, "as_dict")), 2, "trial.model.factory: factory"),
    ("factory-ignores-num-classes", _plain(lambda s: _factory(s, "five_classes")), 2,
     "trial.model.factory: battery_models:five_classes returns (2, 5)"),
    ("factory-nothing-to-convert", _plain(lambda s: _factory(s, "linear_only")), 2, "trial.model.factory"),
    ("factory-fixed-input-size", _plain(lambda s: _factory(s, "fixed_input")), 2, "trial.model.factory"),
    ("factory-option-typo", _plain(lambda s: _factory(s, "small", options={"widht": 4})), 2, "trial.model.options"),
    ("model-option-typo", _plain(lambda s: _set(s, "trial.model.options", {"widht": 4})), 2, "trial.model.options"),
    ("model-name-typo", _plain(lambda s: _set(s, "trial.model.name", "repvgg_tinyy")), 2, "trial.model.name"),
    ("torchvision-name-typo", _plain(lambda s: _set(s, "trial.model", {"name": "torchvision.resnet19"})), 2,
     "trial.model.name"),
    ("trial-key-typo", _plain(lambda s: _set(s, "trial.optim.lrr", 0.1)), 2, "trial.optim.lrr"),
    ("trial-error-with-a-space", _plain(lambda s: _set(s, "trial.model.options", {"foo": 1})), 2,
     "error: invalid sweep file"),
    ("space-key-typo", _plain(lambda s: _set(s, "space.optim.lrr", {"choice": [0.1]})), 2, "space.optim.lrr"),
    ("space-value-above-candidates", _plain(lambda s: _set(s, "space.search.budget", {"choice": [0.5, 1000]})), 2,
     "space.search.budget: value 1000 is invalid"),
    ("space-factory-one-bad", _plain(lambda s: _set(_factory(s, "small"), "space.model.factory",
                                                    {"choice": [f"{_MODULE}:small", f"{_MODULE}:five_classes"]})), 2,
     "space.model.factory: value 'battery_models:five_classes' is invalid"),
    ("trial-budget-above-candidates", _plain(lambda s: _set(_set(s, "trial.search.budget", 1000), "space",
                                                            {"optim.lr": {"choice": [0.1, 0.2]}})), 2,
     "trial.search.budget: 1000 branches"),
    ("weights-missing-file", _plain(lambda s: _factory(s, "small", weights="/nonexistent/w.pt")), 2,
     "trial.model.weights"),
    ("weights-empty", _weights("empty"), 2, "trial.model.weights"),
    ("weights-truncated", _weights("truncated"), 2, "trial.model.weights"),
    ("weights-text", _weights("text"), 2, "trial.model.weights"),
    ("weights-pickled-module", _weights("pickled_module"), 2, "torch.save(model.state_dict(), path)"),
    ("weights-other-architecture", _weights("other_arch"), 2, "trial.model.weights"),
    ("weights-imagenet-head", _weights("imagenet_head"), 2, "trial.model.weights"),
    ("weights-no-state-dict", _weights("no_state_dict"), 2, "trial.model.weights"),
    ("weights-numpy-file", _weights("numpy_array", ".npy"), 2, "trial.model.weights"),
    ("weights-on-registered-host", _plain(lambda s: _set(s, "trial.model.weights", "/tmp/w.pt")), 2,
     "trial.model.weights"),
    ("weights-plain-state-dict", _weights("plain"), 0, "# dry run"),
    ("weights-data-parallel", _weights("data_parallel"), 0, "'module.' prefix"),
    ("weights-checkpoint-state-dict", _weights("checkpoint_state_dict"), 0, "took checkpoint['state_dict']"),
    ("weights-checkpoint-model", _weights("checkpoint_model"), 0, "took checkpoint['model']"),
    ("weights-checkpoint-ddp", _weights("checkpoint_ddp"), 0, "'module.' prefix"),
    ("weights-safetensors", _weights("safetensors", ".safetensors"), 0, "read as safetensors"),
    ("torchvision-gray-input", _plain(lambda s: _set(s, "trial.model", TV)), 2, "trial.data.channels"),
    ("torchvision-image-too-small", _plain(lambda s: _set(_set(s, "trial.model", TV), "trial.data.channels", 3)), 2,
     "trial.data.image_size"),
    ("channels-on-color-data", _plain(lambda s: _set(s, "trial.data", {"dataset": "cifar10", "channels": 1})), 2,
     "trial.data.channels"),
    ("dataset-typo", _plain(lambda s: _set(s, "trial.data.dataset", "digit")), 2, "trial.data.dataset"),
    ("imagefolder-without-root", _plain(lambda s: _set(s, "trial.data", {"dataset": "imagefolder"})), 2,
     "trial.data.root"),
    ("imagefolder-root-empty", lambda s, tmp: _set(s, "trial.data", {"dataset": "imagefolder", "root": str(tmp)}), 2,
     "trial.data.root"),
    ("warm-start-missing-sweep", _plain(lambda s: _set(s, "search.warm_start", ["no-such-sweep"])), 2,
     "search.warm_start[0]: no sweep named 'no-such-sweep'"),
    ("warm-start-missing-file", _plain(lambda s: _set(s, "search.warm_start", ["no_such_sweep.yaml"])), 2,
     "search.warm_start[0]: sweep file no_such_sweep.yaml not found"),
    ("device-cuda-without-gpu", _plain(lambda s: _set(s, "trial.runtime.device", "cuda")), 2, "trial.runtime.device"),
    ("space-device-cuda-without-gpu", _plain(lambda s: _set(s, "space.runtime.device", {"choice": ["cpu", "cuda"]})),
     2, "space.runtime.device: value 'cuda' is invalid: trial.runtime.device"),
]
_GPU_CASES = {"device-cuda-without-gpu", "space-device-cuda-without-gpu"}
_ANSI = re.compile(r"\x1b\[")


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / f"{_MODULE}.py").write_text(_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("case", "make", "code", "needle"), CASES, ids=[c[0] for c in CASES])
def test_dry_run_battery(case: str, make: Callable[[Sweep, Path], Sweep], code: int, needle: str, models: Path,
                         write_sweep: Any, kit: Any, capsys: pytest.CaptureFixture[str]) -> None:
    if case in _GPU_CASES and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    base = kit.tiny_sweep(models)
    path = write_sweep(make(base, models))
    got = main([str(path), "--dry-run"])
    out, err = capsys.readouterr()
    assert got == code, f"{case}: exit {got}\n{out}\n{err}"
    assert needle in (err if code else out), f"{case}:\n{err or out}"
    assert "Traceback" not in err and not _ANSI.search(err + out)
    if code:
        assert len(err.strip().splitlines()) == 1, f"{case}: expected one paragraph, got:\n{err}"
    assert not ray.is_initialized()
    assert not (models / "ray_results").exists()


def test_trial_error_is_not_blamed_on_the_space(models: Path, write_sweep: Any, kit: Any,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """An error in the fixed trial: section names trial.<key>, whatever the space samples."""
    sweep = _set(kit.tiny_sweep(models), "trial.model.options", {"foo": 1})
    assert main([str(write_sweep(sweep)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "trial.model.options: unknown option 'foo'" in err and "space." not in err, err


def test_weights_lines_say_what_was_taken(tmp_path: Path) -> None:
    """Each accepted format loads the same tensors as the plain state_dict."""
    from trainables.run.weights import read_state_dict

    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    plain = module.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in plain.items()}, "epoch": 1}, tmp_path / "ck.pt")
    got = read_state_dict(tmp_path / "ck.pt")
    assert got.taken == "took checkpoint['state_dict'] (7 tensors; ignored: epoch); removed the 'module.' prefix " \
                        "of every key (saved from DataParallel/DistributedDataParallel)"
    assert got.tensors.keys() == plain.keys()
    assert all(torch.equal(got.tensors[k], plain[k]) for k in plain)
    torch.save(plain, tmp_path / "plain.pt")
    assert read_state_dict(tmp_path / "plain.pt").taken is None


def test_cluster_data_is_not_required_on_the_driver(models: Path, write_sweep: Any, kit: Any,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """With ray.address the trials run on the cluster's nodes, which may hold an image folder the
    driver does not: the dry run does not refuse it (a local Ray's trials read it here: refused)."""
    sweep = _set(kit.tiny_sweep(models), "trial.data", {"dataset": "imagefolder", "root": str(models / "images")})
    sweep["ray"] = {"address": "ray://head.example:10001"}
    assert main([str(write_sweep(sweep)), "--dry-run"]) == 0, capsys.readouterr().err
    sweep["ray"] = {"num_cpus": 2}
    assert main([str(write_sweep(sweep)), "--dry-run"]) == 2
    assert "trial.data.root" in capsys.readouterr().err
