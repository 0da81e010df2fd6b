"""``trial.runtime`` precision, channels_last and compile, and ``data.num_workers: auto``.

Every trial here is real training on digits (CPU autocast supports bf16 and fp16): it trains,
checkpoints, resumes bit-identically, and its fused model equals the supernet in float64.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _metrics import computed
import torch
from torch import nn
from torch.utils.data import Subset

from searchspace import reparameterize
from trainables import SearchEngine, TrialConfig, load_checkpoint, run_trial
from trainables.search.amp import MixedPrecision
from trainables.run.build import build_trial_model
from trainables.run.data import LoaderSettings, TensorImages, auto_num_workers, build_data, light_items, make_loader




def _resume_matches(tmp_path: Path, cfg: TrialConfig, resume_epoch: int = 1) -> tuple[dict, Path]:
    """Run ``cfg`` through, resume it from epoch ``resume_epoch``'s checkpoint, and assert both
    runs end bit-identical; return the final checkpoint's tensors and the run's folder."""
    saved: dict[int, Path] = {}

    def keep(metrics: dict[str, float], checkpoint: Path) -> None:
        epoch = int(metrics["epoch"])
        saved[epoch] = Path(shutil.copytree(checkpoint, tmp_path / f"ckpt{epoch}"))

    full = run_trial(cfg, tmp_path / "full", report=keep)
    resumed = run_trial(cfg, tmp_path / "resumed", resume_from=saved[resume_epoch])
    assert [computed(m) for m in resumed.history] == [computed(m) for m in full.history]
    a, _ = load_checkpoint(full.checkpoint_dir)
    b, _ = load_checkpoint(resumed.checkpoint_dir)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["fixed_mask"], b["fixed_mask"])
    assert ("alpha" in a) == cfg.search.searching and ("alpha" not in a or torch.equal(a["alpha"], b["alpha"]))
    assert a.get("grad_scaler") == b.get("grad_scaler")
    m = full.metrics
    assert m["done"] == 1.0 and m["fused_max_logit_diff"] < 1e-4  # verified in strict float32 by the trial
    return a, tmp_path / "full"


def _fuses_exactly_in_float64(cfg: TrialConfig, tensors: dict) -> None:
    """The supernet of the checkpoint and its fused copy agree in float64 (trained in any precision)."""
    data = build_data(cfg.data, cfg.seed)
    supernet = build_trial_model(cfg, data.num_classes, data.in_channels)
    supernet.load_state_dict(tensors["model"])
    supernet = supernet.double().eval()
    inputs = next(iter(make_loader(data.val, 64, train=False)))[0].double()
    with torch.no_grad():
        assert float((reparameterize(supernet)(inputs) - supernet(inputs)).abs().max()) < 1e-9


@pytest.mark.parametrize("reparam", ["offline", "online"])
@pytest.mark.parametrize("precision, channels_last", [("bf16", False), ("fp16", False), ("fp32", True)])
def test_runtime_trial_resumes_bit_identically_and_fuses_exactly(tmp_path: Path, tiny, precision: str,
                                                                 channels_last: bool, reparam: str) -> None:
    """Random, search and fixed phases in each precision / memory format: resumed in the search phase,
    across the fix, the run ends bit-identical to the uninterrupted one (fp16's loss scale included)."""
    cfg = tiny(**{"runtime.precision": precision, "runtime.channels_last": channels_last, "model.reparam": reparam,
                  "data.limit_train": 160})
    tensors, run = _resume_matches(tmp_path, cfg)
    if precision == "fp16":
        assert set(tensors["grad_scaler"]) >= {"scale", "_growth_tracker"}
    else:
        assert "grad_scaler" not in tensors
    _fuses_exactly_in_float64(cfg, tensors)
    assert (run / "export" / "fused_state_dict.pt").is_file()


def _conv_inputs(engine: SearchEngine) -> list[tuple[torch.dtype, bool, bool]]:
    """Record (output dtype, input channels_last, grad enabled) of a conv at every call (one with
    several input channels: a 1-channel batch has the same strides in both formats)."""
    conv = next(m for m in engine.model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    seen: list[tuple[torch.dtype, bool, bool]] = []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0]
        seen.append((output.dtype, x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                     torch.is_grad_enabled()))

    conv.register_forward_hook(hook)
    return seen


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_training_and_supernet_evaluation_run_in_the_precision_fused_model_in_float32(tiny, precision: str,
                                                                                      dtype: torch.dtype) -> None:
    cfg = tiny(**{"runtime.precision": precision, "runtime.channels_last": True, "search.method": "dbb",
                  "search.epochs": 2})
    data = build_data(cfg.data, cfg.seed)
    loader = make_loader(Subset(data.train, range(64)), 32, train=True)
    engine = SearchEngine(build_trial_model(cfg, data.num_classes, data.in_channels), cfg.search, cfg.optim,
                          steps_per_epoch=len(loader), seed=0, device=torch.device("cpu"), runtime=cfg.runtime)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in engine.model.parameters() if p.ndim == 4)
    assert all(p.dtype == torch.float32 for p in engine.model.parameters())  # master weights stay float32
    seen = _conv_inputs(engine)
    engine.train_epoch(loader)
    assert seen and all(s == (dtype, True, True) for s in seen)
    seen.clear()
    engine.evaluate(loader)
    assert seen and all(s == (dtype, True, False) for s in seen)
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in engine.model.parameters())
    fused = reparameterize(engine.model)
    seen.clear()
    engine.evaluate(loader, model=fused)  # the deploy model: what its exported files compute
    logits = fused(next(iter(loader))[0])
    assert logits.dtype == torch.float32 and not seen


def _scaled_pair() -> tuple[MixedPrecision, nn.Parameter, nn.Parameter, torch.optim.Optimizer, torch.optim.Optimizer]:
    amp = MixedPrecision("fp16", torch.device("cpu"))
    weight, alpha = nn.Parameter(torch.ones(4)), nn.Parameter(torch.zeros(3))
    return amp, weight, alpha, torch.optim.SGD([weight], lr=0.1), torch.optim.Adam([alpha], lr=0.1)


def test_fp16_step_unscales_before_clipping_and_steps_both_optimisers_or_neither() -> None:
    amp, weight, alpha, sgd, adam = _scaled_pair()
    scale = amp.scaler.get_scale()
    amp.backward((weight * torch.tensor([3.0, 0.0, 0.0, 0.0])).sum() + (alpha * torch.tensor([4.0, 0, 0])).sum())
    assert float(weight.grad[0]) == 3.0 * scale  # the backward ran on the scaled loss
    assert amp.step([sgd, adam], [weight, alpha], max_norm=1.0)
    # true gradients (3, 4) have norm 5: clipped to norm 1 before the step, not the scaled norm
    assert torch.allclose(weight.detach(), torch.tensor([1.0 - 0.1 * 0.6, 1.0, 1.0, 1.0]))
    assert float(alpha.detach()[0]) < 0  # Adam stepped too
    before_w, before_a = weight.detach().clone(), alpha.detach().clone()
    sgd.zero_grad(), adam.zero_grad()
    amp.backward(weight.sum() + (alpha * torch.tensor([float("inf"), 0, 0])).sum())  # only alpha overflows
    assert not amp.step([sgd, adam], [weight, alpha], max_norm=None)
    assert torch.equal(weight.detach(), before_w) and torch.equal(alpha.detach(), before_a)  # neither moved
    assert amp.scaler.get_scale() == scale * 0.5  # and the scale backed off
    state = amp.state_dict()
    fresh = MixedPrecision("fp16", torch.device("cpu"))
    fresh.load_state_dict(state)
    assert fresh.scaler.get_scale() == scale * 0.5


def test_fp32_and_bf16_step_is_the_plain_clip_and_step() -> None:
    for precision in ("fp32", "bf16"):
        amp = MixedPrecision(precision, torch.device("cpu"))
        weight = nn.Parameter(torch.ones(2))
        sgd = torch.optim.SGD([weight], lr=1.0)
        amp.backward((weight * torch.tensor([30.0, 40.0])).sum())
        assert torch.equal(weight.grad, torch.tensor([30.0, 40.0]))  # no scaling
        assert amp.step([sgd], [weight], max_norm=5.0)
        assert torch.allclose(weight.detach(), torch.tensor([1.0 - 3.0, 1.0 - 4.0]))
        assert amp.state_dict() == {}


def test_compile_runs_only_once_the_architecture_is_fixed(tmp_path: Path, tiny) -> None:
    """The random and search phases draw a new mask every step (a new graph each): they stay eager."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg = tiny(**{"runtime.compile": True, "search.epochs": 2, "search.random_epochs": 1, "search.search_epochs": 1})
    result = run_trial(cfg, tmp_path / "run")
    assert result.metrics["done"] == 1.0 and not counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_compiled_fixed_architecture_trains_like_eager(tmp_path: Path, tiny) -> None:
    """A baseline compiled from its first step: one graph, no graph break, the eager run's numbers
    within float32 reassociation (dropout off: inductor draws its own random numbers)."""
    from torch._dynamo.utils import counters

    base = {"search.method": "plain", "search.epochs": 2, "model.options": {"dropout": 0.0}}
    eager = run_trial(tiny(**base), tmp_path / "eager")
    torch._dynamo.reset()
    counters.clear()
    compiled = run_trial(tiny(**base, **{"runtime.compile": True}), tmp_path / "compiled")
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    for a, b in zip(eager.history, compiled.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)
    assert compiled.metrics["fused_max_logit_diff"] < 1e-4


# ------------------------------------------------------------------------------------ loaders
def test_auto_num_workers_shares_the_trials_cpus() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [auto_num_workers(n, cuda, light=False) for n in (1, 2, 8)] == [0, 1, 7]  # one CPU drives the GPU
    assert [auto_num_workers(n, cuda, light=True) for n in (1, 2, 8)] == [0, 1, 2]
    assert [auto_num_workers(n, cpu, light=True) for n in (1, 8, 64)] == [0, 0, 0]  # indexing a tensor in-process
    assert [auto_num_workers(n, cpu, light=False) for n in (1, 2, 8, 16)] == [0, 1, 2, 4]


def test_loader_settings_pin_on_cuda_and_keep_only_evaluation_workers(tiny) -> None:
    plain = build_data(tiny().data, 0)
    augmented = build_data(tiny(**{"data.augment": True}).data, 0)
    assert light_items(plain.train) and not light_items(augmented.train) and light_items(augmented.val)
    assert isinstance(augmented.train.dataset, TensorImages)
    auto = tiny(**{"data.num_workers": "auto"}).data
    on_gpu = LoaderSettings.resolve(auto, 4, torch.device("cuda"), augmented.train)
    assert on_gpu == LoaderSettings(num_workers=3, pin_memory=True)
    assert LoaderSettings.resolve(auto, 4, torch.device("cuda"), plain.train) == LoaderSettings(2, True)
    assert LoaderSettings.resolve(auto, 4, torch.device("cpu"), plain.train) == LoaderSettings(0, False)
    fixed = tiny(**{"data.num_workers": 2}).data
    assert LoaderSettings.resolve(fixed, 4, torch.device("cpu"), plain.train) == LoaderSettings(2, False)
    two = LoaderSettings(2, pin_memory=True)
    assert two.loader_kwargs(train=True) == {"num_workers": 2, "pin_memory": True, "persistent_workers": False}
    assert two.loader_kwargs(train=False)["persistent_workers"] is True
    assert LoaderSettings().loader_kwargs(train=False)["persistent_workers"] is False
    loader = make_loader(plain.val, 64, train=False, settings=LoaderSettings(1))
    assert loader.num_workers == 1 and loader.persistent_workers and not loader.pin_memory


@pytest.mark.parametrize("augment, workers", [(True, "auto"), (False, 1)], ids=["augmented-auto", "decoded-1"])
def test_trial_with_loader_workers_resumes_bit_identically(tmp_path: Path, tiny, augment: bool, workers) -> None:
    """Training loaders restart their workers every epoch: an augmenting worker seeds its own random
    numbers at start, and a loader that kept its workers would skip the per-epoch seed draw from its
    generator, shuffling every later epoch differently from a run resumed there. (auto on 2 CPUs
    gives augmentation one worker.)"""
    cfg = tiny(**{"data.augment": augment, "data.num_workers": workers, "runtime.num_threads": 2,
                  "search.method": "repvgg", "search.epochs": 2, "data.limit_train": 192})
    _, run = _resume_matches(tmp_path, cfg, resume_epoch=1)
    summary = (run / "export" / "summary.json").read_text()
    assert '"loader_workers": 1' in summary
