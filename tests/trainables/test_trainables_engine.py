"""SearchEngine phases on digits: budget, fix, alpha gradients, baselines."""

from __future__ import annotations

import pytest
import torch

from trainables.run.build import build_trial_model
from trainables.config.sections import BASELINES, TrialConfig
from trainables.run.data import build_data, make_loader
from trainables.search.engine import SearchEngine
from trainables.config.metrics import PHASE_FIXED, PHASE_RANDOM, PHASE_SEARCH


def _engine(cfg: TrialConfig) -> tuple[SearchEngine, torch.utils.data.DataLoader]:
    torch.set_num_threads(1)
    data = build_data(cfg.data, cfg.seed)
    loader = make_loader(data.train, cfg.data.batch_size, train=True)
    model = build_trial_model(cfg, data.num_classes, data.in_channels)
    engine = SearchEngine(model, cfg.search, cfg.optim, steps_per_epoch=len(loader), seed=cfg.seed, device=torch.device("cpu"))
    return engine, loader


def _active(engine: SearchEngine) -> torch.Tensor:
    return torch.cat([block.active for _, block in engine.masks.layers])


@pytest.mark.parametrize(("budget", "k"), [(0.34, 10), (0.5, 15), (7, 7), (1.0, 30)])
def test_mask_keeps_exactly_the_budget(tiny, budget: float, k: int) -> None:
    engine, loader = _engine(tiny(**{"search.budget": budget, "data.limit_train": 64}))
    assert engine.masks.k == k
    fallbacks = 0
    seen = []

    def count(module, _inputs):  # record the active set of every training step
        seen.append(_active(engine).clone())

    handle = engine.model.register_forward_pre_hook(count)
    for _ in range(2):  # random, then search
        engine.train_epoch(loader)
    handle.remove()
    for mask in seen:
        # top-k picks exactly k; layers without identity that picked nothing add their kxk
        fallbacks = int(mask.sum()) - k
        assert 0 <= fallbacks <= int((engine.masks.fallback >= 0).sum())
        assert int(mask[engine.masks.fallback[engine.masks.fallback >= 0]].sum()) >= fallbacks
    exact = [m for m in seen if int(m.sum()) == k]
    assert exact, "some steps must keep exactly k"


def test_phases_fix_freezes_mask_and_alpha_gets_grads_only_in_search(tiny) -> None:
    engine, loader = _engine(tiny(**{"search.epochs": 4, "search.random_epochs": 1, "search.search_epochs": 1}))
    assert [engine.phase(e) for e in range(4)] == [PHASE_RANDOM, PHASE_SEARCH, PHASE_FIXED, PHASE_FIXED]
    engine.train_epoch(loader)  # random: alpha frozen at 0
    assert engine.alpha.grad is None and torch.equal(engine.alpha.detach(), torch.zeros_like(engine.alpha))
    engine.train_epoch(loader)  # search: alpha learned
    assert engine.alpha.grad is not None and float(engine.alpha.grad.abs().sum()) > 0
    assert not torch.equal(engine.alpha.detach(), torch.zeros_like(engine.alpha))
    expected = engine.eval_mask().clone()
    alpha = engine.alpha.detach().clone()
    engine.train_epoch(loader)  # fix: mask := top-k(alpha), BN reset, alpha frozen
    assert torch.equal(engine.fixed_mask, expected) and torch.equal(_active(engine).cpu(), expected)
    assert engine.alpha.grad is None and torch.equal(engine.alpha.detach(), alpha)
    bn = next(m for m in engine.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == len(loader)  # reset at the fix, then one epoch
    engine.train_epoch(loader)
    assert torch.equal(_active(engine).cpu(), expected) and torch.equal(engine.alpha.detach(), alpha)


@pytest.mark.parametrize("method", [*BASELINES, ["kxk", "1xk", "identity"]])
def test_baselines_keep_their_branch_sets(tiny, method) -> None:
    engine, loader = _engine(tiny(**{"search.method": method, "data.limit_train": 64}))
    wanted, identity = BASELINES[method] if isinstance(method, str) else (("kxk", "1xk"), True)
    assert engine.alpha is None and engine.phase(0) == PHASE_FIXED
    before = [(block.branch_names, block.has_identity) for _, block in engine.masks.layers]
    engine.train_epoch(loader)
    for (name, block), (names, has_id) in zip(engine.masks.layers, before):
        assert set(block.active_branches) == set(wanted) & set(names) == set(block.branch_names)
        assert block.has_identity == has_id == (identity and block.stride == 1 and block.in_channels == block.out_channels)
    assert int(engine.eval_mask().sum()) == engine.masks.num_candidates


@pytest.mark.parametrize("sampling", ["uniform", "fair"])
def test_keep_kxk_keeps_every_layers_kxk_in_every_mask(tiny, sampling: str) -> None:
    cfg = tiny(**{"search.keep_kxk": True, "search.budget": 8, "search.random_sampling": sampling,
                  "data.limit_train": 96})
    assert cfg.keeps_kxk and not tiny().keeps_kxk  # auto: only with model.weights
    engine, loader = _engine(cfg)
    engine = SearchEngine(engine.model, cfg.search, cfg.optim, steps_per_epoch=len(loader), seed=0,
                          device=torch.device("cpu"), keep_kxk=True)
    kxk = engine.masks.kept
    assert int(kxk.sum()) == len(engine.masks.layers) == 5
    seen = []
    handle = engine.model.register_forward_pre_hook(lambda *_: seen.append(_active(engine).clone()))
    for _ in range(2):  # random, then search
        engine.train_epoch(loader)
    handle.remove()
    assert len(seen) == 2 * len(loader)
    for mask in [*seen, engine.eval_mask()]:  # all kxk, and exactly the budget: no fallback needed
        assert bool(mask[kxk].all()) and int(mask.sum()) == 8
    assert len({tuple(m[~kxk].tolist()) for m in seen}) > 1  # the other three slots are still searched
    with pytest.raises(ValueError, match="keep_kxk keeps the kxk of all 5 layers, more than the budget's 4"):
        SearchEngine(engine.model, tiny(**{"search.budget": 4}).search, cfg.optim, steps_per_epoch=1, seed=0,
                     device=torch.device("cpu"), keep_kxk=True)


def _is_new_branch(name: str) -> bool:
    """A parameter of a branch other than ``kxk``, or of the identity (not an online block's BN)."""
    return ".identity." in name or (".branches." in name and ".branches.kxk." not in name)


@pytest.mark.parametrize("reparam", ["offline", "online"])
def test_new_branch_lr_scale_gives_the_new_branches_their_own_lr(tiny, reparam: str) -> None:
    default, _ = _engine(tiny(**{"model.reparam": reparam, "data.limit_train": 64}))
    assert len(default.optimizer.param_groups) == 2  # scale 1: today's two groups
    engine, loader = _engine(tiny(**{"model.reparam": reparam, "optim.new_branch_lr_scale": 10.0,
                                     "data.limit_train": 64}))
    groups, lr, decay = engine.optimizer.param_groups, engine.optim.lr, engine.optim.weight_decay
    assert [g["lr"] for g in groups] == pytest.approx([lr, lr, 10 * lr, 10 * lr])
    assert [g["weight_decay"] for g in groups] == [decay, 0.0, decay, 0.0]
    new = [id(p) for g in groups[2:] for p in g["params"]]
    assert len(new) == len(set(new))
    assert set(new) == {id(p) for n, p in engine.model.named_parameters() if _is_new_branch(n)}
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in engine.model.parameters())
    engine.train_epoch(loader)
    assert groups[0]["lr"] < lr and groups[2]["lr"] == pytest.approx(10 * groups[0]["lr"])  # kept by the schedule
