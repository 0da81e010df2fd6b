"""Quantization-aware block forms (QARepVGG arrangement): exact float64 fusion, the arrangement
itself (no normalisation on identity and 1x1, one BN after the sum), hosts, converted models."""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from searchspace import (
    BRANCH_TYPES,
    QAODBB,
    BareConv1x1,
    BareIdentity,
    OnlineQAODBB,
    architecture_of,
    build_from_architecture,
    build_model,
    convert,
    odbb_class,
    odbb_layers,
    reparameterize,
    to_original,
)

F64 = torch.float64
TOL = 1e-9
CONFIGS = {"g1": (4, 4, 1), "g1_in_ne_out": (3, 5, 1), "g2": (4, 6, 2), "depthwise": (6, 6, 6)}
QA_FORMS = ("offline_qa", "online_qa")


def _cases() -> list[tuple[str, str, str, int, int]]:
    cases = []
    for form in QA_FORMS:
        for config, (cin, cout, _) in CONFIGS.items():
            for kernel_size in (3, 5):
                for stride in (1, 2):
                    for case in ("1x1", "kxk", "identity", "repvgg", "all"):
                        if case == "identity" and (stride != 1 or cin != cout):
                            continue  # the identity branch cannot exist there
                        if case == "1x1" and config == "depthwise":
                            continue  # no 1x1 branch in depthwise blocks
                        cases.append((form, case, config, kernel_size, stride))
    return cases


def _branches(case: str) -> tuple[tuple[str, ...], bool]:
    return {"1x1": (("1x1",), False), "kxk": (("kxk",), False), "identity": ((), True),
            "repvgg": (("1x1", "kxk"), True), "all": (BRANCH_TYPES, True)}[case]


def _randomize_scales(block: nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith("scale"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("form,case,config,kernel_size,stride", _cases())
def test_qa_fuse_is_exact_float64(form: str, case: str, config: str, kernel_size: int, stride: int,
                                  randomize_bn, assert_fuses_exactly) -> None:
    cin, cout, groups = CONFIGS[config]
    branches, identity = _branches(case)
    g = torch.Generator().manual_seed(zlib.crc32(f"{form}/{case}/{config}/{kernel_size}/{stride}".encode()))
    block = odbb_class(form)(cin, cout, kernel_size, stride, groups, branches=branches, identity=identity).double()
    _randomize_scales(block, g)
    randomize_bn(block, g, warmup=torch.randn(4, cin, 9, 9, generator=g, dtype=F64) * 3)
    assert_fuses_exactly(block, g, kernel_size, stride, groups, TOL)


def test_offline_qa_is_one_bn_after_an_unnormalised_identity_and_1x1(randomize_bn) -> None:
    """Train mode: ``BN_batch(x + W1 * x + sum of the BN'd other branches)``, checked by hand."""
    g = torch.Generator().manual_seed(3)
    block = QAODBB(4, 4, 3, 1, 1, branches=("1x1", "kxk"), identity=True).double()
    assert isinstance(block.identity, BareIdentity) and isinstance(block.branches["1x1"], BareConv1x1)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in (block.identity, block.branches["1x1"]))
    randomize_bn(block, g)
    block.train()
    x = torch.randn(3, 4, 7, 9, generator=g, dtype=F64)
    gates = torch.tensor([0.5, 1.0], dtype=F64)
    block.set_gates(gates)
    kxk = block.branches["kxk"]
    one = F.conv2d(x, block.branches["1x1"].weight)
    total = x + 0.5 * one + kxk.bn(kxk.conv(x))
    bn = block.bn
    expected = F.batch_norm(total, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    kxk.bn.num_batches_tracked.zero_()  # the reference call above updated the branch BN once
    out = block(x)
    assert (out - expected).abs().max() <= TOL


def test_online_qa_fixes_the_identity_and_1x1_scales_at_one() -> None:
    block = OnlineQAODBB(4, 4, 3, 1, 1, branches=("1x1", "kxk"), identity=True)
    names = {n for n, _ in block.named_parameters()}
    assert "branches.kxk.scale" in names
    assert "branches.1x1.scale" not in names and "identity.scale" not in names
    assert torch.equal(block.branches["1x1"].scale, torch.ones(4)) and torch.equal(block.identity.scale, torch.ones(4))
    assert "identity.scale" not in block.state_dict()  # constants: nothing to save or load
    gates = torch.tensor([0.0, 1.0])
    block.set_gates(gates)  # the search gate still switches the 1x1 off
    x = torch.randn(2, 4, 6, 6)
    block.eval()
    kxk = block.branches["kxk"]
    expected = block.bn(F.conv2d(x, kxk.weight * kxk.scale.reshape(-1, 1, 1, 1), padding=1) + x)
    assert torch.allclose(block(x), expected, atol=1e-5)


@pytest.mark.parametrize("form", QA_FORMS)
@pytest.mark.parametrize("host,options", [("repvgg_tiny", {}), ("resnet_tiny", {}),
                                          ("torchvision.shufflenet_v2_x0_5", {})])  # resnet18: the test below
def test_every_host_builds_and_fuses_in_the_qa_forms(form: str, host: str, options: dict, randomize_bn) -> None:
    torch.manual_seed(0)
    model = build_model(host, 10, 3, BRANCH_TYPES, form, **options).double()
    blocks = odbb_layers(model)
    assert blocks and all(block.reparam == form for _, block in blocks)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=g, dtype=F64)
    randomize_bn(model, g, warmup=x, spread=0.1)
    deploy = reparameterize(model)
    assert not odbb_layers(deploy)
    with torch.no_grad():
        ref, out = model(x), deploy(x)
    assert (out - ref).abs().max() <= TOL * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("form", QA_FORMS)
def test_architecture_round_trip_keeps_the_form(form: str) -> None:
    model = build_model("repvgg_tiny", 10, 1, ("1x1", "kxk"), form)
    arch = architecture_of(model)
    rebuilt = build_from_architecture(arch, form)
    assert [type(b) for _, b in odbb_layers(rebuilt)] == [odbb_class(form)] * len(arch.layers)


@pytest.mark.parametrize("form", QA_FORMS)
def test_converted_model_comes_back_as_the_users_class(form: str, randomize_bn) -> None:
    torchvision = pytest.importorskip("torchvision")
    original = torchvision.models.resnet18(num_classes=10).double()
    converted = convert(original, branches=("1x1", "kxk"), reparam=form, preserve=False)
    for _, block in odbb_layers(converted):
        block.set_active([False, True])  # kxk alone: offline_qa still folds its two BNs
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 32, 32, generator=g, dtype=F64)
    randomize_bn(converted, g, warmup=x, spread=0.1)
    back = to_original(converted).eval()
    assert type(back) is type(original)
    with torch.no_grad():
        assert (back(x) - converted(x)).abs().max() <= 1e-9 * max(1.0, float(converted(x).abs().max()))


@pytest.mark.parametrize("form", QA_FORMS)
def test_qa_forms_refuse_a_function_preserving_conversion(form: str) -> None:
    torchvision = pytest.importorskip("torchvision")
    with pytest.raises(ValueError, match=f"reparam='{form}' cannot start from a trained conv"):
        convert(torchvision.models.resnet18(num_classes=10), reparam=form)
