"""Online ODBB (OREPA form): exact fusion in eval, the composed kernel equals the branch-by-branch
sum in training, gates and alpha's gradient, the cheaper direct path, hosts and architectures."""

from __future__ import annotations

import copy
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from searchspace import (
    BRANCH_TYPES,
    ODBB,
    Architecture,
    IdentityBasedConv1x1,
    Online1x1Avg,
    Online1x1KxK,
    OnlineConv,
    OnlineODBB,
    OnlineIdentity,
    architecture_of,
    build_from_architecture,
    build_model,
    odbb_layers,
    reparameterize,
)

TOL = 1e-9
GEOMETRIES = [  # (cin, cout, kernel, stride, groups, H, W)
    (4, 6, 3, 1, 1, 7, 9), (4, 4, 3, 1, 1, 9, 7), (4, 6, 3, 2, 1, 9, 11), (4, 4, 5, 1, 1, 11, 9),
    (6, 6, 5, 2, 1, 13, 11), (4, 8, 3, 1, 2, 7, 9), (6, 6, 3, 2, 2, 9, 9), (8, 8, 3, 1, 8, 9, 7),
    (8, 8, 5, 2, 8, 11, 13),
]


def _randomize(block: nn.Module, generator: torch.Generator) -> None:
    """Random scales, identity-based 1x1 perturbed away from identity, block BN statistics far from identity."""
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith("scale"):
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype))
        for m in block.modules():
            if isinstance(m, IdentityBasedConv1x1):
                m.weight.copy_(0.3 * torch.randn(m.weight.shape, generator=generator, dtype=m.weight.dtype))
            if isinstance(m, nn.BatchNorm2d):
                c, opts = m.num_features, {"generator": generator, "dtype": m.weight.dtype}
                m.weight.copy_(torch.rand(c, **opts) * 3 - 1.5)
                m.bias.copy_(2 * torch.randn(c, **opts))
                m.running_mean.copy_(2 * torch.randn(c, **opts))
                m.running_var.copy_(0.1 + 4 * torch.rand(c, **opts))


def _block(cin: int, cout: int, k: int, stride: int, groups: int, branches: tuple[str, ...] = BRANCH_TYPES,
           identity: bool = True, seed: int = 0) -> OnlineODBB:
    torch.manual_seed(seed)
    block = OnlineODBB(cin, cout, k, stride, groups, branches=branches, identity=identity).double()
    _randomize(block, torch.Generator().manual_seed(seed + 1))
    return block


def _reference_branch(block: OnlineODBB, name: str, x: Tensor) -> Tensor:
    """One online branch computed the slow way: its own convs and pools, then its scale."""
    b, k, s, g, p = block.branches[name], block.kernel_size, block.stride, block.groups, block.kernel_size // 2
    if isinstance(b, OnlineConv):
        kh, kw = b.weight.shape[-2:]
        y = F.conv2d(x, b.weight, stride=s, padding=(kh // 2, kw // 2), groups=g)
    elif isinstance(b, Online1x1KxK):
        k1 = b.conv1.kernel() if isinstance(b.conv1, IdentityBasedConv1x1) else b.conv1.weight
        y = F.conv2d(F.pad(F.conv2d(x, k1, groups=g), [p] * 4), b.weight2, stride=s, groups=g)
    elif isinstance(b, Online1x1Avg):
        z = x if b.weight is None else F.conv2d(x, b.weight, groups=g)
        y = F.avg_pool2d(z, k, s, p, count_include_pad=True)
    else:
        raise AssertionError(name)
    return y * b.scale.reshape(1, -1, 1, 1)


def _reference(block: OnlineODBB, x: Tensor, gates: Tensor | None = None) -> Tensor:
    """``BN_train(identity * s + sum_i gate_i * branch_i(x))`` with the block's BN parameters."""
    out = x * block.identity.scale.reshape(1, -1, 1, 1) if block.identity is not None else 0
    for i, name in enumerate(block.branch_names):
        if block.active[i]:
            y = _reference_branch(block, name, x)
            out = out + (y if gates is None else gates[i] * y)
    return F.batch_norm(out, None, None, block.bn.weight, block.bn.bias, training=True, eps=block.bn.eps)


def _x(cin: int, h: int, w: int, batch: int = 3, seed: int = 5) -> Tensor:
    return torch.randn(batch, cin, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "c{}-{}_k{}_s{}_g{}_{}x{}".format(*g))
@pytest.mark.parametrize("branch", [*BRANCH_TYPES, "all", "identity"])
def test_eval_block_equals_fused_conv(geometry: tuple[int, ...], branch: str) -> None:
    cin, cout, k, stride, groups, h, w = geometry
    names = BRANCH_TYPES if branch in ("all", "identity") else (branch,)
    if branch == "identity" and not (stride == 1 and cin == cout):
        pytest.skip("no identity at this geometry")
    if branch == "1x1" and groups == cin == cout:
        pytest.skip("depthwise blocks have no 1x1 branch")
    block = _block(cin, cout, k, stride, groups, names, identity=branch in ("all", "identity"))
    if branch == "identity":
        block.set_active([False] * len(block.branch_names))
    block.eval()
    x = _x(cin, h, w)
    fused = block.fuse()
    with torch.no_grad():
        err = (block(x) - fused(x)).abs().max().item()
    assert err <= TOL, err
    assert isinstance(fused, nn.Conv2d) and fused.weight.shape == (cout, cin // groups, k, k)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "c{}-{}_k{}_s{}_g{}_{}x{}".format(*g))
def test_train_output_is_the_branch_by_branch_sum(geometry: tuple[int, ...]) -> None:
    """The composed kernel is the sum it claims: one conv + BN == every branch run on its own."""
    cin, cout, k, stride, groups, h, w = geometry
    block = _block(cin, cout, k, stride, groups).train()
    x = _x(cin, h, w)
    gates = torch.rand(len(block.branch_names), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for mask in ([True] * len(block.branch_names), [i % 2 == 0 for i in range(len(block.branch_names))]):
        block.set_active(mask)
        block.set_gates(gates)
        err = (block(x) - _reference(block, x, gates)).abs().max().item()
        assert err <= TOL, (mask, err)


SMALL_FOOTPRINTS = [  # active branches -> the (kh, kw) kernel the block's one conv runs with, as a function of K
    (("1x1",), lambda k: (1, 1)), (("1xk",), lambda k: (1, k)), (("kx1",), lambda k: (k, 1)),
    (("1x1", "1xk"), lambda k: (1, k)), (("1x1", "kx1"), lambda k: (k, 1)), (("1xk", "kx1"), lambda k: (k, k)),
    (("1x1", "kxk"), lambda k: (k, k)),
]


@pytest.mark.parametrize("geometry", GEOMETRIES[:7], ids=lambda g: "c{}-{}_k{}_s{}_g{}_{}x{}".format(*g))
@pytest.mark.parametrize(("active", "footprint"), SMALL_FOOTPRINTS,
                         ids=lambda a: "+".join(a) if isinstance(a, tuple) else "")
def test_small_footprints_run_a_smaller_conv_and_stay_exact(
    monkeypatch: pytest.MonkeyPatch, geometry: tuple[int, ...], active: tuple[str, ...], footprint: object
) -> None:
    """Active branches that fit in less than KxK compose and run that smaller conv, computing the same function."""
    cin, cout, k, stride, groups, h, w = geometry
    block = _block(cin, cout, k, stride, groups).train()
    block.set_active([name in active for name in block.branch_names])
    shapes: list[tuple[int, ...]] = []
    conv = OnlineODBB._conv
    monkeypatch.setattr(OnlineODBB, "_conv",
                        lambda self, x, kernel: shapes.append(kernel.shape[-2:]) or conv(self, x, kernel))
    x = _x(cin, h, w)
    gates = torch.rand(len(block.branch_names), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    block.set_gates(gates)
    err = (block(x) - _reference(block, x, gates)).abs().max().item()
    assert err <= TOL, err
    assert shapes == [footprint(k)]  # type: ignore[operator]
    block.set_gates(None)
    block.eval()
    fused = block.fuse()
    with torch.no_grad():
        assert (block(x) - fused(x)).abs().max().item() <= TOL
    assert fused.weight.shape[-2:] == (k, k)  # the deploy conv stays KxK


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("active", [("kxk",), ("1x1_avg",), ("1xk",), BRANCH_TYPES])
def test_small_maps_run_branches_directly_and_stay_exact(
    monkeypatch: pytest.MonkeyPatch, stride: int, groups: int, active: tuple[str, ...]
) -> None:
    """Fewer output positions than C/g: every branch runs its own conv; fewer than a lone branch's
    weights per channel (C/g * kh * kw): that branch alone; else the composed conv. All exact."""
    block = _block(16, 16, 3, stride, groups, identity=False).train()
    block.set_active([name in active for name in block.branch_names])
    ran: list[str] = []
    for name in active:
        branch = block.branches[name]
        monkeypatch.setattr(branch, "direct", lambda x, gate=None, b=branch, n=name: ran.append(n) or
                            type(b).direct(b, x, gate))
    gates = torch.rand(len(block.branch_names), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    per_group = 16 // groups
    tiny = _x(16, 3, 3, batch=1) if stride == 2 else _x(16, 2, 2, batch=1)  # 4 positions
    maps = {"tiny": tiny, "mid": _x(16, 5, 5, batch=2), "large": _x(16, 13, 13, batch=4)}
    for where, x in maps.items():
        ran.clear()
        block.set_gates(gates)
        err = (block(x) - _reference(block, x, gates)).abs().max().item()
        assert err <= TOL, (where, err)
        positions = x.shape[0] * ((x.shape[2] - 1) // stride + 1) * ((x.shape[3] - 1) // stride + 1)
        lone_weights = per_group * (3 if active == ("1xk",) else 9)
        if positions < per_group:
            expected = list(active)  # 1x1_kxk also by its own multiply-add count; all on the tiny map
        elif len(active) == 1 and positions < lone_weights:
            expected = list(active)
        else:
            expected = [n for n in active if n == "1x1_kxk" and block.branches[n].runs_direct(x)]
        assert ran == expected, (where, positions, ran)
        block.set_gates(None)
        block.eval()
        fused = block.fuse()
        with torch.no_grad():
            assert (block(x) - fused(x)).abs().max().item() <= TOL
        block.train()
    assert 4 < per_group  # the tiny map is tiny at every stride and groups


def test_1x1_kxk_picks_the_cheaper_path_and_both_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a tiny map with many channels 1x1->KxK runs conv by conv; on a large map it is composed."""
    block = _block(64, 64, 3, 1, 1, ("kxk", "1x1_kxk"), identity=False).train()
    branch = block.branches["1x1_kxk"]
    small, large = _x(64, 3, 3, batch=1), _x(64, 24, 24, batch=4)
    assert branch.runs_direct(small) and not branch.runs_direct(large)
    for x in (small, large):
        err = (block(x) - _reference(block, x)).abs().max().item()
        assert err <= TOL, err
    calls: list[int] = []
    direct = Online1x1KxK.direct
    monkeypatch.setattr(Online1x1KxK, "direct", lambda self, x, gate=None: calls.append(1) or direct(self, x, gate))
    block(small), block(large)
    assert calls == [1]
    block.eval()
    fused = block.fuse()
    with torch.no_grad():
        assert (block(small) - fused(small)).abs().max().item() <= TOL


def test_identity_picks_the_cheaper_path_and_both_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a map smaller than C/g * K^2 positions the identity is ``x * scale``; else a kernel."""
    block = _block(16, 16, 3, 1, 2, ("kxk", "1x1"), identity=True).train()
    with torch.no_grad():
        block.identity.scale.uniform_(0.5, 1.5)
    small, large = _x(16, 3, 2, batch=1), _x(16, 9, 9, batch=2)
    assert block.identity.runs_direct(small) and not block.identity.runs_direct(large)
    calls: list[int] = []
    direct = OnlineIdentity.direct
    monkeypatch.setattr(OnlineIdentity, "direct", lambda self, x, gate=None: calls.append(1) or direct(self, x, gate))
    for x in (small, large):
        err = (block(x) - _reference(block, x)).abs().max().item()
        assert err <= TOL, err
    assert calls == [1]
    block.eval()
    fused = block.fuse()
    with torch.no_grad():
        for x in (small, large):
            assert (block(x) - fused(x)).abs().max().item() <= TOL


def test_gate_gradient_is_the_kernel_saliency() -> None:
    """dL/dgate_i == <dL/dK, kernel_i>: alpha gets the first-order saliency through the kernel."""
    block = _block(4, 4, 3, 1, 1).train()
    x = _x(4, 7, 7)
    gates = torch.ones(len(block.branch_names), dtype=torch.float64, requires_grad=True)
    block.set_gates(gates)
    block(x).pow(2).mean().backward()
    kernels = [block.branches[n].kernel().detach() for n in block.branch_names]
    block.set_gates(None)
    kernel = (sum(kernels) + block.identity.kernel()).detach().requires_grad_(True)
    out = block.bn(F.conv2d(x, kernel, padding=1))
    (grad_k,) = torch.autograd.grad(out.pow(2).mean(), kernel)
    expected = torch.stack([(grad_k * k).sum() for k in kernels])
    assert torch.allclose(gates.grad, expected, atol=1e-10, rtol=1e-9)


def test_inactive_branches_get_no_gradient_and_fuse_ignores_them() -> None:
    block = _block(4, 4, 3, 1, 1).train()
    block.set_active([name in ("kxk", "1x1_kxk") for name in block.branch_names])
    block(_x(4, 7, 7)).sum().backward()
    assert block.branches["kxk"].weight.grad is not None
    assert block.branches["1x1_kxk"].weight2.grad is not None
    assert block.branches["1x1"].weight.grad is None and block.branches["kx1"].scale.grad is None
    block.eval()
    only = copy.deepcopy(block)
    for name in ("1x1", "1xk"):  # changing inactive branches changes nothing
        with torch.no_grad():
            only.branches[name].weight.mul_(7)
    assert torch.equal(block.fuse().weight, only.fuse().weight)


def test_no_active_branch_without_identity_raises() -> None:
    block = _block(4, 6, 3, 1, 1, identity=False)
    block.set_active([False] * len(block.branch_names))
    with pytest.raises(RuntimeError, match="no active branch"):
        block(_x(4, 5, 5))


def test_scales_start_at_orepa_values_and_weights_as_nn_conv2d() -> None:
    block = OnlineODBB(8, 8, 3)
    assert {n: float(block.branches[n].scale[0].detach()) for n in block.branch_names} == {
        "1x1": 1.0, "1x1_avg": 0.25, "kxk": 0.25, "1x1_kxk": 0.5, "1xk": 0.5, "kx1": 0.5}
    assert float(block.identity.scale[0].detach()) == 1.0
    bound = (1 / (8 * 9)) ** 0.5  # nn.Conv2d's default init: uniform(+-1/sqrt(fan_in))
    assert float(block.branches["kxk"].weight.abs().max()) <= bound
    assert float(block.branches["kxk"].weight.abs().max()) > 0.8 * bound
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.branches.modules())


@pytest.mark.parametrize("name,options", [("repvgg_tiny", {}), ("resnet_tiny", {}),
                                          ("repvgg_tiny", {"strides": [2, 2, 2]})])
def test_online_host_fuses_to_the_offline_deploy_network(name: str, options: dict) -> None:
    online = build_model(name, 10, 1, reparam="online", **options).double()
    offline = build_model(name, 10, 1, **options).double()
    assert online.spec.reparam == "online" and offline.spec.reparam == "offline"
    blocks = odbb_layers(online)
    assert blocks and all(type(b) is OnlineODBB for _, b in blocks)
    assert all(type(b) is ODBB for _, b in odbb_layers(offline))
    gen = torch.Generator().manual_seed(0)
    for _, block in blocks:
        _randomize(block, gen)
    online.eval()
    x = _x(1, 9, 11, batch=4)
    deploy, plain = reparameterize(online), reparameterize(offline.eval())
    with torch.no_grad():
        assert (online(x) - deploy(x)).abs().max().item() <= TOL
    shapes = [(n, tuple(p.shape)) for n, p in deploy.named_parameters()]
    assert shapes == [(n, tuple(p.shape)) for n, p in plain.named_parameters()]
    assert not any(isinstance(m, (ODBB, nn.BatchNorm2d)) for m in deploy.modules())


def test_architecture_round_trip_keeps_the_online_form() -> None:
    model = build_model("repvgg_tiny", 4, 1, reparam="online")
    for i, (_, block) in enumerate(odbb_layers(model)):
        block.set_active([j == i % len(block.branch_names) or n == "kxk" for j, n in enumerate(block.branch_names)])
    arch = Architecture.from_json(architecture_of(model).to_json())
    rebuilt = build_from_architecture(arch, reparam="online")
    assert all(type(b) is OnlineODBB for _, b in odbb_layers(rebuilt))
    assert architecture_of(rebuilt).to_dict() == arch.to_dict()
    assert rebuilt.spec.reparam == "online"
    again = build_from_architecture(arch)
    assert all(type(b) is ODBB for _, b in odbb_layers(again))


def test_state_dict_round_trip_restores_the_function() -> None:
    a = build_model("repvgg_tiny", 4, 1, reparam="online").double()
    for _, block in odbb_layers(a):
        _randomize(block, torch.Generator().manual_seed(2))
    b = build_model("repvgg_tiny", 4, 1, reparam="online").double()
    b.load_state_dict(a.state_dict())
    x = _x(1, 8, 8)
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_bad_reparam_is_named() -> None:
    with pytest.raises(ValueError, match="reparam='onilne' is invalid; allowed: offline, online"):
        build_model("repvgg_tiny", 4, 1, reparam="onilne")
