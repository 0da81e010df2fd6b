"""Recipe options of issue #13: each does what it says, defaults are the paper, state resumes."""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import fields
import shutil
from pathlib import Path
from typing import Any

import pytest
from _metrics import computed
import torch

from trainables import RECIPE_PRESETS, ConfigError, SearchConfig, TrialConfig, apply_overrides, load_checkpoint, run_trial
from trainables.run.build import build_trial_model
from trainables.run.data import build_data, make_loader
from trainables.config.seeds import Stream, derive_seed
from trainables.search.engine import SearchEngine
from trainables.search.gates import (
    LOGISTIC_STD,
    auto_arch_lr,
    cosine,
    fair_mask,
    fair_update,
    floored_topk,
    layer_index,
    lr_factor,
    noise_temperature,
    topk_mask,
)
from trainables.config.metrics import PHASE_FIXED, PHASE_RANDOM, PHASE_SEARCH
from trainables.run.trial import _check_resumable



def _engine(cfg: TrialConfig) -> tuple[SearchEngine, torch.utils.data.DataLoader]:
    torch.set_num_threads(1)
    data = build_data(cfg.data, cfg.seed)
    loader = make_loader(data.train, cfg.data.batch_size, train=True)
    torch.manual_seed(0)
    model = build_trial_model(cfg, data.num_classes, data.in_channels)
    engine = SearchEngine(model, cfg.search, cfg.optim, steps_per_epoch=len(loader), seed=cfg.seed,
                          device=torch.device("cpu"),
                          rebuild=lambda: build_trial_model(cfg, data.num_classes, data.in_channels))
    return engine, loader


def _active(engine: SearchEngine) -> torch.Tensor:
    return torch.cat([block.active for _, block in engine.masks.layers]).cpu()


def _record_steps(engine: SearchEngine) -> tuple[list[dict[str, torch.Tensor]], Any]:
    """A forward pre-hook recording every training step's active mask and alpha."""
    seen: list[dict[str, torch.Tensor]] = []

    def hook(module, _inputs):
        if module.training:
            alpha = None if engine.alpha is None else engine.alpha.detach().clone()
            seen.append({"mask": _active(engine).clone(), "alpha": alpha})

    return seen, engine.model.register_forward_pre_hook(hook)



# ---------------------------------------------------------------- config
def test_recipe_defaults_are_the_paper(tiny) -> None:
    search = TrialConfig().search
    assert (search.arch_lr, search.noise_schedule, search.fixed_lr_schedule, search.fix_bn, search.layer_floor,
            search.random_sampling, search.two_stage, search.fixed_warmup_epochs) == (
        1e-4, "constant", "continue", "reset", 0, "uniform", False, 0)
    cfg = tiny(**{"search.arch_lr": "auto", "search.noise_schedule": "cosine", "search.two_stage": True})
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("overrides", "path", "fragment"),
    [
        ({"search.arch_lr": "fast"}, "trial.search.arch_lr", "expected number or 'auto'"),
        ({"search.arch_lr": "1e-3"}, "trial.search.arch_lr", "write 1.0e-4"),
        ({"search.arch_lr": 0}, "trial.search.arch_lr", "(0.0, 10.0]"),
        ({"search.arch_lr_travel": 0}, "trial.search.arch_lr_travel", "expected a value in"),
        ({"search.noise_schedule": "cosin"}, "trial.search.noise_schedule", "did you mean 'cosine'"),
        ({"search.noise_final": -0.1}, "trial.search.noise_final", ">= 0.0"),
        ({"search.fixed_lr_schedule": "restrat"}, "trial.search.fixed_lr_schedule", "did you mean 'restart'"),
        ({"search.fixed_warmup_epochs": 1}, "trial.search.fixed_warmup_epochs", "fixed_lr_schedule: restart"),
        ({"search.fixed_lr_schedule": "restart", "search.fixed_warmup_epochs": 2},
         "trial.search.fixed_warmup_epochs", "exceed the 1 epochs"),
        ({"search.fix_bn": "recal"}, "trial.search.fix_bn", "expected one of"),
        ({"search.fix_bn_batches": 0}, "trial.search.fix_bn_batches", ">= 1"),
        ({"search.layer_floor": -1}, "trial.search.layer_floor", ">= 0"),
        ({"search.random_sampling": "fairr"}, "trial.search.random_sampling", "did you mean 'fair'"),
        ({"search.two_stage": "yes"}, "trial.search.two_stage", "expected boolean"),
        ({"search.two_stage": True, "search.epochs": 2}, "trial.search.two_stage", "leaves none"),
    ],
)
def test_bad_recipe_values_name_the_key(overrides: dict[str, Any], path: str, fragment: str,
                                        tiny_dict: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_dict(apply_overrides(tiny_dict, overrides))
    assert info.value.path == path
    assert fragment in str(info.value)


def test_layer_floor_above_the_budget_is_caught_once_the_model_exists(tiny) -> None:
    with pytest.raises(ConfigError) as info:  # repvgg_tiny: 5 layers, budget 5 < 2 x 5
        build_trial_model(tiny(**{"search.budget": 5, "search.layer_floor": 2}), 10, 1)
    assert info.value.path == "trial.search.layer_floor" and "more than the budget's 5" in str(info.value)


def test_checkpoint_config_without_the_new_keys_still_resumes(tiny) -> None:
    cfg = tiny()
    old = cfg.to_dict()
    for key in ("noise_schedule", "noise_final", "fix_bn", "two_stage", "layer_floor", "random_sampling"):
        del old["search"][key]
    _check_resumable(old, cfg)  # written before the recipe keys existed: same (paper) run
    with pytest.raises(ConfigError, match="trial.search"):
        _check_resumable(old, tiny(**{"search.two_stage": True}))


# ---------------------------------------------------------------- alpha step and noise
def test_auto_arch_lr_matches_the_formula(tiny) -> None:
    assert auto_arch_lr(1000) == pytest.approx(math.pi / math.sqrt(3) / 1000)
    assert auto_arch_lr(500, travel=4.0) == pytest.approx(4 * LOGISTIC_STD / 500)
    engine, loader = _engine(tiny(**{"search.arch_lr": "auto", "search.arch_lr_travel": 2.0,
                                     "search.search_epochs": 2, "search.epochs": 3, "search.random_epochs": 1}))
    steps = 2 * len(loader)
    assert engine.arch_optimizer.param_groups[0]["lr"] == pytest.approx(2.0 * LOGISTIC_STD / steps)
    fixed, _ = _engine(tiny(**{"search.arch_lr": 0.003}))
    assert fixed.arch_optimizer.param_groups[0]["lr"] == 0.003


def test_noise_temperature_schedules() -> None:
    assert all(noise_temperature(s, 10, "constant", 0.0) == 1.0 for s in range(12))
    for schedule in ("linear", "cosine"):
        values = [noise_temperature(s, 10, schedule, 0.2) for s in range(10)]
        assert values[0] == 1.0 and values[-1] == pytest.approx(0.2)
        assert all(a > b for a, b in zip(values, values[1:]))  # strictly annealed
    assert noise_temperature(5, 11, "linear", 0.0) == pytest.approx(0.5)
    assert noise_temperature(5, 11, "cosine", 0.0) == pytest.approx(0.5)
    assert noise_temperature(2, 11, "cosine", 0.0) > noise_temperature(2, 11, "linear", 0.0)  # cosine stays high longer


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_annealed_noise_shrinks_to_noise_final_at_the_end_of_the_search(tiny, schedule: str) -> None:
    cfg = tiny(**{"search.noise_schedule": schedule, "search.noise_final": 0.0, "search.random_epochs": 0,
                  "search.search_epochs": 2, "search.epochs": 2, "search.arch_lr": 0.05})
    engine, loader = _engine(cfg)
    seen, handle = _record_steps(engine)
    noises = []
    original = engine.sync.broadcast

    def spy(tensor):  # the search noise goes through the broadcast; its temperature is applied after
        if tensor.dtype != torch.bool:
            noises.append(tensor.clone())
        return original(tensor)

    engine.sync.broadcast = spy  # type: ignore[method-assign]
    for _ in range(2):
        engine.train_epoch(loader)
    handle.remove()
    total = 2 * len(loader)
    assert len(seen) == len(noises) == total
    # the applied noise is temperature x logistic noise; its std follows the schedule down to 0
    stds = [noise_temperature(i, total, schedule, 0.0) * float(n.std()) for i, n in enumerate(noises)]
    assert stds[0] == pytest.approx(float(noises[0].std())) and stds[-1] == 0.0
    # noise-free at the last step: the mask is exactly the top-k of alpha as it stood
    last = seen[-1]
    assert torch.equal(last["mask"], engine.masks.complete(topk_mask(last["alpha"], engine.masks.k)))
    # and the early, noisy steps were not all alpha's top-k (the noise acted)
    assert any(not torch.equal(s["mask"], engine.masks.complete(topk_mask(s["alpha"], engine.masks.k))) for s in seen[:5])


# ---------------------------------------------------------------- fixed-phase lr
def test_lr_factor_restart() -> None:
    assert [lr_factor(s, 100) for s in range(0, 120, 7)] == [cosine(s, 100, 1.0) for s in range(0, 120, 7)]
    assert lr_factor(59, 100, restart_at=60) == cosine(59, 100, 1.0)
    assert lr_factor(60, 100, restart_at=60) == 1.0
    assert lr_factor(80, 100, restart_at=60) == pytest.approx(0.5) and lr_factor(100, 100, restart_at=60) == 0.0
    assert [lr_factor(s, 100, 60, warmup=4) for s in range(60, 65)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_restart_gives_the_full_lr_at_the_first_fixed_step(tiny) -> None:
    base = {"search.epochs": 5, "search.random_epochs": 1, "search.search_epochs": 1, "data.limit_train": 96}
    runs = {}
    for name, extra in {"continue": {}, "restart": {"search.fixed_lr_schedule": "restart"},
                        "warmup": {"search.fixed_lr_schedule": "restart", "search.fixed_warmup_epochs": 1}}.items():
        engine, loader = _engine(tiny(**base, **extra))
        runs[name] = [engine.train_epoch(loader)["lr"] for _ in range(5)]
    steps = len(loader)
    lr = 0.1
    assert runs["continue"][:2] == runs["restart"][:2] == runs["warmup"][:2]  # the search is untouched
    assert runs["continue"][2] == pytest.approx(lr * cosine(2 * steps, 5 * steps, 1.0)) and runs["continue"][2] < lr
    assert runs["restart"][2] == lr  # first fixed step: a fresh cosine from optim.lr
    assert runs["restart"][3] == pytest.approx(lr * cosine(steps, 3 * steps, 1.0))
    assert runs["warmup"][2] == pytest.approx(lr / steps) and runs["warmup"][3] == lr


# ---------------------------------------------------------------- BN at the fix
def test_recalibrate_sets_bn_stats_to_those_of_the_calibration_batches(tiny) -> None:
    engine, loader = _engine(tiny(**{"search.fix_bn": "recalibrate", "search.fix_bn_batches": 3}))
    for _ in range(2):  # random, search
        engine.train_epoch(loader)
    norms = {name: m for name, m in engine.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in norms}
    handles = [m.register_forward_pre_hook(lambda mod, x, name=name: inputs[name].append(x[0].detach().clone()))
               for name, m in norms.items()]
    engine.fix(loader=loader)
    for handle in handles:
        handle.remove()
    calibrated = [name for name, xs in inputs.items() if xs]
    assert calibrated and all(len(inputs[name]) == 3 for name in calibrated)
    for name in calibrated:
        bn, xs = norms[name], inputs[name]
        mean = torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0)
        var = torch.stack([x.transpose(0, 1).flatten(1).var(1, unbiased=True) for x in xs]).mean(0)
        assert torch.allclose(bn.running_mean, mean, atol=1e-5, rtol=1e-4)
        assert torch.allclose(bn.running_var, var, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(bn.running_var, torch.ones_like(var))  # not the reset values
        assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.1  # momentum restored
    for name in set(norms) - set(calibrated):  # branches the fix dropped: reset, unused
        assert torch.equal(norms[name].running_mean, torch.zeros_like(norms[name].running_mean))


# ---------------------------------------------------------------- per-layer floor
def test_floored_topk_keeps_the_floor_inside_exactly_k() -> None:
    generator = torch.Generator().manual_seed(0)
    sizes = [6, 6, 5, 6, 3, 6]
    layer = layer_index(sizes)
    for floor, k in [(1, 6), (1, 9), (2, 14), (3, 20), (1, 32)]:
        for _ in range(50):
            scores = torch.randn(sum(sizes), generator=generator) + 3 * (layer == 0)  # layer 0 dominates the global top-k
            mask = floored_topk(scores, k, sizes, floor)
            per_layer = torch.zeros(len(sizes), dtype=torch.long).index_add_(0, layer, mask.long())
            assert int(mask.sum()) == k
            assert all(int(c) >= min(floor, s) for c, s in zip(per_layer, sizes))
            # each layer's floor is its best slots; the rest is the global best of what is left
            offsets = [sum(sizes[:i]) for i in range(len(sizes))]
            forced = torch.zeros_like(mask)
            for o, s in zip(offsets, sizes):
                forced[o + torch.topk(scores[o:o + s], min(floor, s)).indices] = True
            rest = scores.masked_fill(forced, -math.inf)
            assert torch.equal(mask, forced | topk_mask(rest, k - int(forced.sum())))
    assert torch.equal(floored_topk(torch.tensor([3.0, 2.0, 1.0]), 2, [3], 0), torch.tensor([True, True, False]))
    with pytest.raises(ValueError, match="floor alone keeps 6"):
        floored_topk(torch.zeros(sum(sizes)), 5, sizes, 1)


def test_layer_floor_in_every_mask_the_engine_draws(tiny) -> None:
    engine, loader = _engine(tiny(**{"search.budget": 6, "search.layer_floor": 1, "data.limit_train": 128}))
    seen, handle = _record_steps(engine)
    for _ in range(3):  # random, search, fixed
        engine.train_epoch(loader)
    handle.remove()
    layer = layer_index(engine.masks.sizes)
    for mask in [s["mask"] for s in seen] + [engine.eval_mask()]:
        assert int(mask.sum()) == 6  # exactly k: no layer is empty, so no kxk fallback either
        assert bool((torch.zeros(len(engine.masks.sizes), dtype=torch.long).index_add_(0, layer, mask.long()) >= 1).all())


# ---------------------------------------------------------------- fair random phase
@pytest.mark.parametrize(("n", "k"), [(30, 10), (30, 7), (12, 5), (9, 9)])
def test_fair_mask_keeps_every_count_within_one(n: int, k: int) -> None:
    generator = torch.Generator().manual_seed(0)
    counts, state = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    masks = []
    for _ in range(300):
        mask = fair_mask(state, k, generator)
        assert int(mask.sum()) == k
        state = fair_update(state, mask)
        counts += mask.long()
        masks.append(mask)
        assert int(counts.max() - counts.min()) <= 1  # every window from the start
        assert torch.equal(state, counts - counts.min())
    if n % k == 0:  # strict fairness: each cycle of n / k steps activates every candidate once
        cycle = n // k
        for start in range(0, 300 - cycle + 1, cycle):
            assert bool((torch.stack(masks[start:start + cycle]).sum(0) == 1).all())
    if k < n:
        uniform = torch.stack([torch.randperm(n, generator=generator)[:k] for _ in range(300)])
        spread = torch.bincount(uniform.flatten(), minlength=n)
        assert int(spread.max() - spread.min()) > 1  # what fairness fixes


def test_fair_sampling_in_the_engine_and_its_counts_resume(tiny) -> None:
    cfg = tiny(**{"search.random_sampling": "fair", "search.random_epochs": 2, "search.search_epochs": 0,
                  "search.epochs": 2, "search.budget": 7, "data.limit_train": 96})
    engine, loader = _engine(cfg)
    seen, handle = _record_steps(engine)
    engine.train_epoch(loader)  # 3 steps of 7 over 30 candidates: the counts are uneven now
    tensors, meta = copy.deepcopy(engine.state_dict())
    assert int(tensors["fair_counts"].max()) == 1
    assert torch.equal(tensors["fair_counts"], engine.masks.fair_counts)
    engine.train_epoch(loader)
    handle.remove()
    masks = torch.stack([s["mask"] for s in seen])
    counts = masks.sum(0)
    fallback = engine.masks.fallback[engine.masks.fallback >= 0]
    others = torch.ones(engine.masks.num_candidates, dtype=torch.bool)
    others[fallback] = False  # an emptied stride-2 layer's kxk fallback is extra, outside the count
    assert int(counts[others].max() - counts[others].min()) <= 1
    assert int(engine.masks.fair_counts.max() - engine.masks.fair_counts.min()) <= 1
    # resume: the counts come back, so the next epoch's masks are the uninterrupted ones
    resumed, _ = _engine(cfg)
    resumed.load_state_dict(tensors, meta)
    seen_resumed, handle = _record_steps(resumed)
    resumed.train_epoch(loader)
    handle.remove()
    assert all(torch.equal(a["mask"], b["mask"]) for a, b in zip(seen[len(loader):], seen_resumed))
    fresh, _ = _engine(cfg)  # without the counts the same seed draws other masks
    fresh.load_state_dict({**tensors, "fair_counts": torch.zeros_like(tensors["fair_counts"])}, meta)
    seen_fresh, handle = _record_steps(fresh)
    fresh.train_epoch(loader)
    handle.remove()
    assert any(not torch.equal(a["mask"], b["mask"]) for a, b in zip(seen[len(loader):], seen_fresh))
    uniform_engine, _ = _engine(tiny(**{"search.random_epochs": 2, "search.search_epochs": 0, "search.epochs": 2,
                                        "search.budget": 7, "data.limit_train": 96}))
    with pytest.raises(ValueError, match="fair-sampling counts"):
        engine.load_state_dict(uniform_engine.state_dict()[0], meta)


# ---------------------------------------------------------------- two-stage
def test_two_stage_reinitialises_with_the_searched_mask(tiny) -> None:
    cfg = tiny(**{"search.two_stage": True, "search.epochs": 3, "data.limit_train": 96})
    engine, loader = _engine(cfg)
    engine.train_epoch(loader)
    engine.train_epoch(loader)
    searched = engine.eval_mask().clone()
    supernet = {k: v.clone() for k, v in engine.model.state_dict().items()}
    assert engine.optimizer.state  # momentum after the search
    engine.fix(loader=loader)
    assert torch.equal(engine.fixed_mask, searched) and torch.equal(_active(engine), searched)
    assert not engine.optimizer.state  # SGD restarts from zero momentum
    torch.manual_seed(derive_seed(cfg.seed, Stream.REBUILD))
    fresh = build_trial_model(cfg, 10, 1).state_dict()
    now = engine.model.state_dict()
    weights = [k for k, v in now.items() if v.is_floating_point() and v.ndim > 1]
    assert weights and all(torch.equal(now[k], fresh[k]) for k in weights)  # a fresh seeded build
    random_init = [k for k in weights if bool(fresh[k].any())]  # (zero-initialised ones are back at 0)
    assert random_init and all(not torch.equal(now[k], supernet[k]) for k in random_init)  # not the supernet's
    assert all(float(m.running_var.mean()) == 1.0 for m in engine.model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_two_stage_trial_trains_the_retrain_epochs_and_resumes_mid_retrain(tmp_path: Path, tiny) -> None:
    cfg = tiny(**{"search.two_stage": True, "search.epochs": 4, "search.random_epochs": 1, "search.search_epochs": 1,
                  "data.limit_train": 96})
    saved: dict[int, Path] = {}

    def keep(metrics: dict[str, float], checkpoint: Path) -> None:
        saved[int(metrics["epoch"])] = Path(shutil.copytree(checkpoint, tmp_path / f"ckpt{int(metrics['epoch'])}"))

    full = run_trial(cfg, tmp_path / "full", report=keep, gpus_held=0.25)
    assert [m["phase_id"] for m in full.history] == [PHASE_RANDOM, PHASE_SEARCH, PHASE_FIXED, PHASE_FIXED]
    assert [m["epochs_trained"] for m in full.history] == [0, 0, 1, 2]  # the retrained network's epochs
    seconds = [m["train_seconds"] for m in full.history]
    assert seconds == pytest.approx(list(itertools.accumulate(m["epoch_time_s"] for m in full.history)))
    assert [m["gpu_seconds"] for m in full.history] == pytest.approx([0.25 * t for t in seconds])  # a quarter GPU
    assert full.history[2]["lr"] == cfg.optim.lr  # the retrain's schedule starts over
    assert full.metrics["done"] == 1.0 and full.summary["epochs"] == 4  # search epochs count in the cost
    for epoch in (2, 3):  # just before the rebuild, and mid-retrain
        resumed = run_trial(cfg, tmp_path / f"resumed{epoch}", resume_from=saved[epoch])
        assert [computed(m) for m in resumed.history] == [computed(m) for m in full.history]
        a, _ = load_checkpoint(full.checkpoint_dir)
        b, _ = load_checkpoint(resumed.checkpoint_dir)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# ---------------------------------------------------------------- everything at once resumes exactly
def test_recipe_trial_resumes_bit_identically(tmp_path: Path, tiny) -> None:
    cfg = tiny(**{"search.epochs": 4, "search.random_epochs": 2, "search.search_epochs": 1, "data.limit_train": 96,
                  "search.random_sampling": "fair", "search.layer_floor": 1, "search.noise_schedule": "linear",
                  "search.arch_lr": "auto", "search.fixed_lr_schedule": "restart", "search.fix_bn": "recalibrate",
                  "search.fix_bn_batches": 2})
    saved: dict[int, Path] = {}

    def keep(metrics: dict[str, float], checkpoint: Path) -> None:
        saved[int(metrics["epoch"])] = Path(shutil.copytree(checkpoint, tmp_path / f"ckpt{int(metrics['epoch'])}"))

    full = run_trial(cfg, tmp_path / "full", report=keep)
    for epoch in (1, 3):  # mid random phase (fair counts), and before the fix (recalibration)
        resumed = run_trial(cfg, tmp_path / f"resumed{epoch}", resume_from=saved[epoch])
        assert [computed(m) for m in resumed.history] == [computed(m) for m in full.history]
        a, _ = load_checkpoint(full.checkpoint_dir)
        b, _ = load_checkpoint(resumed.checkpoint_dir)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        assert torch.equal(a["fair_counts"], b["fair_counts"]) and torch.equal(a["alpha"], b["alpha"])


# ---------------------------------------------------------------- DDP: ranks agree under the new sampling
def _ddp_worker(rank: int, world: int, port: int, trial: dict[str, Any], out: str) -> None:
    import os

    import torch.distributed as dist

    from trainables.ray_tune.distributed import DDPPlacement

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = TrialConfig.from_dict(trial)
        placement = DDPPlacement(rank, world, torch.device("cpu"), cfg.seed, trace_dir=Path(out))
        result = run_trial(cfg, Path(out) / f"rank{rank}", report=lambda *_: placement.verify(), placement=placement)
        engine = placement.engine
        torch.save({"params": {k: v.detach() for k, v in engine.model.named_parameters()},
                    "alpha": engine.alpha.detach(), "fair_counts": engine.masks.fair_counts, "history": result.history},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [
    {"search.fix_bn": "recalibrate", "search.fix_bn_batches": 2, "search.noise_schedule": "cosine"},
    {"search.two_stage": True, "search.noise_schedule": "linear"},
])
def test_two_gloo_ranks_agree_under_the_recipe(tmp_path: Path, tiny_dict: dict[str, Any], recipe: dict[str, Any]) -> None:
    """Fair + floored masks are rank 0's on both ranks; recalibration and the two-stage rebuild
    keep the ranks identical (the per-epoch verify raises RankDivergenceError otherwise)."""
    import json
    import time

    from _servers import free_port

    from trainables.ray_tune.distributed import TRACE_FILE

    trial = apply_overrides(tiny_dict, {"runtime.workers": 2, "search.epochs": 4, "search.random_epochs": 1,
                                        "search.search_epochs": 1, "data.limit_train": 128,
                                        "search.random_sampling": "fair", "search.layer_floor": 1, **recipe})
    TrialConfig.from_dict(trial)
    context = torch.multiprocessing.start_processes(_ddp_worker, args=(2, free_port(), trial, str(tmp_path)),
                                                    nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("DDP workers did not finish in 240 s (a collective out of step?)")
    rows = [[json.loads(line) for line in (tmp_path / TRACE_FILE.format(rank=r)).read_text().splitlines()] for r in (0, 1)]
    assert len(rows[0]) == len(rows[1]) > 4
    assert all((a["step"], a["mask"], a["alpha"]) == (b["step"], b["mask"], b["alpha"]) for a, b in zip(*rows))
    assert any(r["own_draw_differs"] for r in rows[1])  # rank 1 drew its own; the broadcast won
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(torch.equal(ranks[0]["params"][k], ranks[1]["params"][k]) for k in ranks[0]["params"])
    assert torch.equal(ranks[0]["fair_counts"], ranks[1]["fair_counts"]) and torch.equal(ranks[0]["alpha"], ranks[1]["alpha"])
    assert ranks[0]["history"][-1]["done"] == 1.0


# ---------------------------------------------------------------- presets
def test_short_preset_sets_its_keys_and_explicit_keys_win(tiny, tiny_dict: dict[str, Any]) -> None:
    short = RECIPE_PRESETS["short"]
    assert short and set(short) <= {f.name for f in fields(SearchConfig)}
    for key in short:
        tiny_dict["search"].pop(key, None)
    tiny_dict["search"]["preset"] = "short"
    cfg = TrialConfig.from_dict(tiny_dict)
    assert {k: getattr(cfg.search, k) for k in short} == short
    assert all(getattr(SearchConfig(), k) != v for k, v in short.items())  # each one changes the paper recipe
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    explicit = tiny(**{"search.preset": "short"})  # tiny sets random_epochs: 1 and search_epochs: 1 itself
    assert (explicit.search.random_epochs, explicit.search.arch_lr, explicit.search.two_stage) == (1, "auto", True)
    assert tiny(**{"search.preset": "paper"}) == tiny()


def test_unknown_preset_names_the_key(tiny_dict: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_dict(apply_overrides(tiny_dict, {"search.preset": "shrot"}))
    assert info.value.path == "trial.search.preset" and "did you mean 'short'" in str(info.value)
