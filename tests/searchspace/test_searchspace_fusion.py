"""Exactness of the pure fusion math (T1-T6) and of ODBB.fuse() in float64."""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

from searchspace import BRANCH_TYPES, ODBB
from searchspace.fusion import (
    avg_pool_after_1x1,
    avg_pool_kernel,
    bn_affine,
    chain_1x1_kxk,
    fold_bn,
    identity_kernel,
    merge_1x1_kxk,
    pad_kernel_to,
    scale_kernel,
    scaled_chain_1x1_kxk,
    sum_kernels,
)

F64 = torch.float64
TOL = 1e-9


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bn_params(c: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    return (torch.randn(c, generator=g, dtype=F64) * 3, torch.rand(c, generator=g, dtype=F64) * 4 + 0.1,
            torch.randn(c, generator=g, dtype=F64) * 2, torch.randn(c, generator=g, dtype=F64) * 2)


# --- pure functions ----------------------------------------------------------------------

@pytest.mark.parametrize("groups", [1, 2])
def test_fold_bn_equals_conv_then_batchnorm(groups: int) -> None:
    g = _gen(1)
    x = torch.randn(2, 4, 9, 7, generator=g, dtype=F64) * 5
    w = torch.randn(6, 4 // groups, 3, 3, generator=g, dtype=F64)
    mean, var, gamma, beta = _bn_params(6, g)
    ref = F.batch_norm(F.conv2d(x, w, padding=1, groups=groups), mean, var, gamma, beta, False, 0.0, 1e-5)
    k, b = fold_bn(w, mean, var, gamma, beta, 1e-5)
    assert (F.conv2d(x, k, b, padding=1, groups=groups) - ref).abs().max() <= TOL


def test_bn_affine_shift_is_zero_input_output() -> None:
    mean, var, gamma, beta = _bn_params(5, _gen(2))
    zero = torch.zeros(1, 5, 1, 1, dtype=F64)
    out = F.batch_norm(zero, mean, var, gamma, beta, False, 0.0, 1e-3).flatten()
    assert torch.allclose(bn_affine(mean, var, gamma, beta, 1e-3)[1], out, atol=1e-12, rtol=0)


@pytest.mark.parametrize("channels,groups", [(4, 1), (6, 2), (5, 5)])
def test_identity_kernel_is_identity(channels: int, groups: int) -> None:
    x = torch.randn(2, channels, 7, 9, generator=_gen(3), dtype=F64)
    k = identity_kernel(channels, 5, groups, dtype=F64)
    assert k.shape == (channels, channels // groups, 5, 5)
    assert torch.equal(F.conv2d(x, k, padding=2, groups=groups), x)


@pytest.mark.parametrize("channels,groups,stride", [(4, 1, 1), (6, 2, 2), (5, 5, 2), (3, 1, 3)])
def test_avg_pool_kernel_matches_avg_pool(channels: int, groups: int, stride: int) -> None:
    x = torch.randn(2, channels, 11, 13, generator=_gen(4), dtype=F64) * 10
    ref = F.avg_pool2d(x, 3, stride, 1, count_include_pad=True)
    k = avg_pool_kernel(channels, 3, groups, dtype=F64)
    assert (F.conv2d(x, k, stride=stride, padding=1, groups=groups) - ref).abs().max() <= TOL


@pytest.mark.parametrize("groups,mid", [(1, 4), (2, 4), (4, 8)])
@pytest.mark.parametrize("stride", [1, 2])
def test_merge_1x1_kxk_with_bias_padded_border(groups: int, mid: int, stride: int) -> None:
    g = _gen(5)
    cin, cout, k = 4, 4 if groups == 4 else 6, 3
    x = torch.randn(2, cin, 7, 9, generator=g, dtype=F64) * 5
    k1, b1 = torch.randn(mid, cin // groups, 1, 1, generator=g, dtype=F64), torch.randn(mid, generator=g, dtype=F64)
    k2 = torch.randn(cout, mid // groups, k, k, generator=g, dtype=F64)
    b2 = torch.randn(cout, generator=g, dtype=F64)
    inner = F.conv2d(x, k1, b1, groups=groups)
    padded = F.pad(inner - b1.reshape(1, -1, 1, 1), [1] * 4) + b1.reshape(1, -1, 1, 1)  # border = b1
    ref = F.conv2d(padded, k2, b2, stride=stride, groups=groups)
    kernel, bias = merge_1x1_kxk(k1, b1, k2, b2, groups)
    assert (F.conv2d(x, kernel, bias, stride=stride, padding=1, groups=groups) - ref).abs().max() <= 1e-9
    zero_padded = F.conv2d(F.pad(inner, [1] * 4), k2, b2, stride=stride, groups=groups)
    assert (zero_padded - ref).abs().max() > 1e-3  # the pitfall T3 warns about is real


@pytest.mark.parametrize("groups", [1, 2])
def test_avg_pool_after_1x1_equals_dense_merge_and_ops(groups: int) -> None:
    g = _gen(7)
    x = torch.randn(2, 4, 9, 11, generator=g, dtype=F64) * 5
    k1, b1 = torch.randn(6, 4 // groups, 1, 1, generator=g, dtype=F64), torch.randn(6, generator=g, dtype=F64)
    kernel = avg_pool_after_1x1(k1, 5)
    dense, dense_bias = merge_1x1_kxk(k1, b1, avg_pool_kernel(6, 5, groups, dtype=F64), torch.zeros(6, dtype=F64),
                                      groups)
    assert (kernel - dense).abs().max() <= 1e-15 and torch.equal(dense_bias, b1)
    inner = F.conv2d(x, k1, b1, groups=groups)
    padded = F.pad(inner - b1.reshape(1, -1, 1, 1), [2] * 4) + b1.reshape(1, -1, 1, 1)
    ref = F.avg_pool2d(padded, 5, 2)
    assert (F.conv2d(x, kernel, b1, stride=2, padding=2, groups=groups) - ref).abs().max() <= TOL


@pytest.mark.parametrize("shape,padding", [((1, 1), (0, 0)), ((1, 5), (0, 2)), ((5, 1), (2, 0)), ((3, 3), (1, 1))])
@pytest.mark.parametrize("stride", [1, 2])
def test_pad_kernel_to_embeds_centred_kernel(shape: tuple[int, int], padding: tuple[int, int], stride: int) -> None:
    g = _gen(6)
    x = torch.randn(1, 3, 11, 13, generator=g, dtype=F64)
    w = torch.randn(4, 3, *shape, generator=g, dtype=F64)
    ref = F.conv2d(x, w, stride=stride, padding=padding)
    assert (F.conv2d(x, pad_kernel_to(w, 5), stride=stride, padding=2) - ref).abs().max() <= TOL


def test_pad_kernel_to_a_rectangle() -> None:
    w = torch.randn(4, 3, 1, 1, generator=_gen(7), dtype=F64)
    padded = pad_kernel_to(w, (1, 5))
    assert padded.shape == (4, 3, 1, 5) and torch.equal(padded[..., 2:3], w) and padded.count_nonzero() == w.numel()
    with pytest.raises(ValueError, match="1x5 kernel in 3x3"):
        pad_kernel_to(torch.zeros(1, 1, 1, 5), (3, 3))


@pytest.mark.parametrize(("mid", "cin", "cout", "groups"), [(5, 3, 4, 1), (6, 4, 8, 2), (8, 1, 4, 4)])
def test_scaled_chain_equals_the_two_steps_and_its_gradients_are_exact(mid: int, cin: int, cout: int,
                                                                       groups: int) -> None:
    """Same value as ``scale_kernel(chain_1x1_kxk(...))``; gradients checked numerically (float64)."""
    g = _gen(8)
    k1 = torch.randn(mid, cin // groups if groups == 1 else cin, 1, 1, generator=g, dtype=F64, requires_grad=True)
    k2 = torch.randn(cout, mid // groups, 3, 3, generator=g, dtype=F64, requires_grad=True)
    s = torch.randn(cout, generator=g, dtype=F64, requires_grad=True)
    two_steps = scale_kernel(chain_1x1_kxk(k1, k2, groups), s)
    assert (scaled_chain_1x1_kxk(k1, k2, s, groups) - two_steps).abs().max() <= TOL
    assert torch.autograd.gradcheck(lambda a, b, c: scaled_chain_1x1_kxk(a, b, c, groups), (k1, k2, s))
    frozen = k1.detach()  # a plain 1x1 kernel that needs no gradient: the others still get theirs
    grads = torch.autograd.grad(scaled_chain_1x1_kxk(frozen, k2, s, groups).pow(2).sum(), (k2, s))
    ref = torch.autograd.grad(scale_kernel(chain_1x1_kxk(frozen, k2, groups), s).pow(2).sum(), (k2, s))
    assert all((a - b).abs().max() <= TOL for a, b in zip(grads, ref))


def test_scaled_chain_keeps_no_kernel_for_backward() -> None:
    """Autograd of the two-step form saves the chained kernel; the fused form saves only its inputs."""
    k1 = torch.randn(16, 16, 1, 1, requires_grad=True)
    k2 = torch.randn(16, 16, 3, 3, requires_grad=True)
    s = torch.randn(16, requires_grad=True)
    inputs = {t.data_ptr() for t in (k1, k2, s)}

    def new_saved_bytes(fn) -> int:
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fn()
        return sum(t.numel() * t.element_size() for t in saved if t.data_ptr() not in inputs)

    kernel_bytes = 16 * 16 * 9 * 4
    assert new_saved_bytes(lambda: scale_kernel(chain_1x1_kxk(k1, k2), s)) >= kernel_bytes
    assert new_saved_bytes(lambda: scaled_chain_1x1_kxk(k1, k2, s)) == 0


def test_pure_function_errors() -> None:
    with pytest.raises(ValueError, match="2x2"):
        pad_kernel_to(torch.zeros(1, 1, 2, 2), 5)
    with pytest.raises(ValueError, match="do not chain"):
        merge_1x1_kxk(torch.zeros(4, 4, 1, 1), torch.zeros(4), torch.zeros(4, 3, 3, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="at least one"):
        sum_kernels([], 3)
    with pytest.raises(ValueError, match="groups=3"):
        identity_kernel(4, 3, groups=3)


# --- ODBB.fuse() exactness: every branch alone and all together --------------------------

CONFIGS = {"g1": (4, 4, 1), "g1_in_ne_out": (3, 5, 1), "g2": (4, 6, 2), "depthwise": (6, 6, 6)}


def _cases() -> list[tuple[str, str, int, int]]:
    cases = []
    for config, (cin, cout, groups) in CONFIGS.items():
        for kernel_size in (3, 5):
            for stride in (1, 2):
                for case in (*BRANCH_TYPES, "identity", "all"):
                    if case == "identity" and (stride != 1 or cin != cout):
                        continue  # the identity branch cannot exist there
                    if case == "1x1" and config == "depthwise":
                        continue  # no 1x1 branch in depthwise blocks (test_searchspace_odbb checks)
                    cases.append((case, config, kernel_size, stride))
    return cases


@pytest.mark.parametrize("case,config,kernel_size,stride", _cases())
def test_odbb_fuse_is_exact_float64(case: str, config: str, kernel_size: int, stride: int, randomize_bn,
                                    assert_fuses_exactly) -> None:
    cin, cout, groups = CONFIGS[config]
    branches = () if case == "identity" else BRANCH_TYPES if case == "all" else (case,)
    identity = case in ("identity", "all")
    g = _gen(zlib.crc32(f"{case}/{config}/{kernel_size}/{stride}".encode()))
    block = ODBB(cin, cout, kernel_size, stride, groups, branches=branches, identity=identity).double()
    expected = (case,) if case not in ("identity", "all") else tuple(b for b in branches if b in block.branch_names)
    assert block.branch_names == expected
    assert block.has_identity == (identity and stride == 1 and cin == cout)
    randomize_bn(block, g, warmup=torch.randn(4, cin, 9, 9, generator=g, dtype=F64) * 3)
    assert_fuses_exactly(block, g, kernel_size, stride, groups, TOL)
