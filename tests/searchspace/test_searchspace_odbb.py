"""ODBB behaviour: branch sets, activity mask, gates, state, copies and input validation."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from searchspace import BRANCH_TYPES, ODBB


def _x(cin: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, cin, 7, 9, generator=torch.Generator().manual_seed(seed))


def test_branch_names_follow_branch_types_order() -> None:
    block = ODBB(4, 4, branches=["kx1", "kxk", "1x1"])
    assert block.branch_names == ("1x1", "kxk", "kx1")
    assert list(block.branches.keys()) == ["1x1", "kxk", "kx1"]
    assert ODBB(4, 8).branch_names == BRANCH_TYPES


def test_depthwise_drops_1x1_even_when_listed() -> None:
    assert ODBB(8, 8, groups=8).branch_names == tuple(b for b in BRANCH_TYPES if b != "1x1")
    assert ODBB(8, 8, groups=8, branches=["1x1", "kxk"]).branch_names == ("kxk",)
    assert ODBB(8, 8, groups=4).branch_names == BRANCH_TYPES  # grouped, not depthwise
    # depthwise 1x1_kxk is 2x wider inside (DBB), 1x1_avg has no 1x1 conv
    dw = ODBB(8, 8, groups=8)
    assert dw.branches["1x1_kxk"].conv2.in_channels == 16
    assert dw.branches["1x1_avg"].conv is None


@pytest.mark.parametrize("cin,cout,stride,identity,expected", [
    (4, 4, 1, True, True), (4, 4, 2, True, False), (4, 8, 1, True, False), (4, 4, 1, False, False)])
def test_identity_only_where_possible(cin: int, cout: int, stride: int, identity: bool, expected: bool) -> None:
    block = ODBB(cin, cout, stride=stride, identity=identity)
    assert block.has_identity is expected
    assert (block.identity is not None) is expected


def test_active_buffer_is_persistent_and_restored() -> None:
    block = ODBB(4, 4)
    assert block.active.dtype == torch.bool and bool(block.active.all())
    block.set_active([True, False, True, False, False, True])
    state = block.state_dict()
    assert state["active"].tolist() == [True, False, True, False, False, True]
    other = ODBB(4, 4)
    other.load_state_dict(state)
    assert other.active_branches == ("1x1", "kxk", "kx1")
    other.set_active(None)
    assert other.active_branches == BRANCH_TYPES
    block.set_active(torch.tensor([0, 0, 1, 0, 0, 0]))
    assert block.active_branches == ("kxk",)


def test_inactive_branches_are_not_computed() -> None:
    block = ODBB(4, 4)
    calls: list[str] = []
    for name, branch in block.branches.items():
        branch.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    block.set_active([False, True, False, True, False, False])
    out = block(_x())
    assert calls == ["1x1_avg", "1x1_kxk"]
    out.sum().backward()
    assert block.branches["kxk"].conv.weight.grad is None
    assert block.branches["1x1_kxk"].conv2.weight.grad is not None


def test_forward_honours_writes_that_bypass_set_active() -> None:
    """The host-side mask cache must follow in-place buffer writes (load_state_dict, DDP
    buffer broadcast) and a buffer replaced by ``.to()``/``.float()``-style moves."""
    block = ODBB(4, 4)
    calls: list[str] = []
    for name, branch in block.branches.items():
        branch.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    block.set_active([True] * 6)
    block(_x())
    block.active.copy_(torch.tensor([False, False, True, False, False, False]))  # like a broadcast
    calls.clear()
    block(_x())
    assert calls == ["kxk"]
    block.load_state_dict({**block.state_dict(), "active": torch.tensor([True, False, False, False, False, True])})
    calls.clear()
    block(_x())
    assert calls == ["1x1", "kx1"]
    block.to(torch.float64)  # a new module state; buffer values survive
    calls.clear()
    block(_x().double())
    assert calls == ["1x1", "kx1"]


@pytest.mark.parametrize("reparam", ["offline", "online"])
def test_compiled_block_is_one_graph_per_mask_and_follows_set_active(reparam: str) -> None:
    """Under torch.compile the mask flags are graph constants: a fixed mask traces without a graph
    break (the host copy, not the buffer, is read), and a mask changed by set_active is guarded
    (recompiled), never a stale graph. (Compared in eval mode: in training 1x1_kxk pads with its BN's
    running statistics, which every training forward moves.)"""
    from torch._dynamo.utils import counters

    from searchspace import odbb_class

    block = odbb_class(reparam)(4, 4)
    block.set_active([True, False, True, True, False, False])
    torch._dynamo.reset()
    explained = torch._dynamo.explain(block)(_x())
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(block.eval(), backend="eager")  # dynamo only: fast, and exact against eager
    for mask in ([True, False, True, True, False, False], [False, False, True, False, False, True],
                 [True, False, True, True, False, False]):
        block.set_active(mask)
        with torch.no_grad():
            assert torch.equal(compiled(_x()), block(_x()))
    assert counters["stats"]["unique_graphs"] == 2  # one per distinct mask, the first reused


def test_forward_is_identity_plus_gated_sum() -> None:
    block = ODBB(4, 4).eval()
    x = _x()
    gates = torch.tensor([0.5, 2.0, -1.0, 3.0, 0.0, 1.5], requires_grad=True)
    block.set_active([True, True, True, True, False, True])
    block.set_gates(gates)
    out = block(x)
    with torch.no_grad():
        parts = {n: block.branches[n](x) for n in BRANCH_TYPES}
        expected = block.identity(x) + sum(gates[i] * parts[n] for i, n in enumerate(BRANCH_TYPES) if n != "1xk")
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert gates.grad is not None
    for i, n in enumerate(BRANCH_TYPES):
        want = 0.0 if n == "1xk" else parts[n].sum().item()
        assert gates.grad[i].item() == pytest.approx(want, rel=1e-4, abs=1e-4)
    block.set_gates(None)
    with torch.no_grad():
        torch.testing.assert_close(block(x), block.identity(x) + sum(parts[n] for n in block.active_branches))


def test_fuse_ignores_gates_and_training_mode() -> None:
    block = ODBB(4, 4)
    block.train()
    block(_x(seed=1))  # move running statistics
    block.set_gates(torch.full((6,), 3.0))
    fused = block.fuse()
    assert block.training  # fuse() does not change the mode
    block.set_gates(None)
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(_x()), block(_x()), rtol=1e-5, atol=1e-5)


def test_deepcopy_and_pickle_drop_gates_with_graph() -> None:
    block = ODBB(4, 4)
    gates = torch.ones(6, requires_grad=True) * 1.0  # non-leaf: cannot be deep-copied itself
    block.set_gates(gates)
    clone = copy.deepcopy(block)
    assert clone._gates is None and block._gates is gates
    restored = pickle.loads(pickle.dumps(block))
    assert restored._gates is None
    torch.testing.assert_close(restored.state_dict()["active"], block.active)


def test_no_active_branch_without_identity_raises() -> None:
    block = ODBB(4, 8)
    block.set_active([False] * 6)
    with pytest.raises(RuntimeError, match="no active branch and no identity"):
        block(_x())
    with pytest.raises(RuntimeError, match="set_active"):
        block.fuse()


def test_no_active_branch_with_identity_is_the_identity_bn() -> None:
    block = ODBB(4, 4).eval()
    block.set_active([False] * 6)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(block(x), block.identity(x))
        torch.testing.assert_close(block.fuse()(x), block.identity(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,needles", [
    ({"branches": ["kxk", "3x3"]}, ["'3x3'", "1x1_avg", "kx1"]),
    ({"branches": ["kxk", "1x1", "kxk"]}, ["duplicated", "'kxk'", "1x1_kxk"]),
    ({"branches": "kxk"}, ["string 'kxk'", "1x1_avg"]),
    ({"branches": ["identity"]}, ["'identity'", "identity=True", "1x1_kxk"]),
    ({"kernel_size": 4}, ["kernel_size=4", "odd"]),
    ({"kernel_size": 0}, ["kernel_size=0", ">= 1"]),
    ({"groups": 3}, ["groups=3", "[1, 2, 4]"]),
    ({"stride": 0}, ["stride=0", ">= 1"]),
    ({"branches": [], "identity": False}, ["no branch", "1x1_kxk"]),
])
def test_bad_arguments_name_value_and_allowed(kwargs: dict, needles: list[str]) -> None:
    args = {"in_channels": 4, "out_channels": 8, **kwargs}
    with pytest.raises(ValueError) as info:
        ODBB(**args)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_bad_mask_and_gates() -> None:
    block = ODBB(4, 4)
    with pytest.raises(ValueError, match=r"mask has 3 entries; allowed: 6"):
        block.set_active([True, False, True])
    with pytest.raises(ValueError, match=r"gates of shape \(5,\); allowed: shape \(6,\)"):
        block.set_gates(torch.ones(5))
