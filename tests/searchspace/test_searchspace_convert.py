"""Converting any network: which conv -> BN pairs convert (torch.fx), function preservation from
trained weights (float64, train and eval, both forms), and the way back to the user's class."""

from __future__ import annotations

import copy
import types

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from searchspace import (
    ODBB,
    NothingToConvertError,
    OnlineODBB,
    architecture_of,
    build_from_architecture,
    build_model,
    check_original_state,
    conversion_of,
    convert,
    find_pairs,
    load_original_state_dict,
    new_branch_parameters,
    odbb_layers,
    original_state_shapes,
    reparameterize,
    resolve_factory,
    to_original,
)

TOL = 1e-9
FORMS = ("offline", "online")
OUTPUT_BN = {"1x1": "bn", "1xk": "bn", "kx1": "bn", "1x1_kxk": "bn2", "1x1_avg": "avgbn"}  # offline branches


class _Dynamic(nn.Module):
    """A forward with data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv(x))
        return y if float(y.mean()) > 0 else -y


class _Edges(nn.Module):
    """Every pattern the pair finder must get right, each in one named place."""

    def __init__(self) -> None:
        super().__init__()
        c = 8
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=True)       # pair, conv bias folded
        self.stem_bn = nn.BatchNorm2d(c)
        self.dw = Conv2dNormActivation(c, c, 3, groups=c)          # pair inside a Sequential (depthwise)
        self.wide = nn.Conv2d(c, 2 * c, 5, stride=2, padding=2, bias=False)  # pair, K=5, stride 2
        self.wide_bn = nn.BatchNorm2d(2 * c)
        self.same = nn.Conv2d(2 * c, 2 * c, 3, padding="same", groups=2, bias=False)  # pair, grouped
        self.same_bn = nn.BatchNorm2d(2 * c)
        self.pw = nn.Conv2d(2 * c, c, 1, bias=False)               # 1x1 kernel
        self.pw_bn = nn.BatchNorm2d(c)
        self.valid = nn.Conv2d(c, c, 3, padding=0, bias=False)     # padding not K//2
        self.valid_bn = nn.BatchNorm2d(c)
        self.dilated = nn.Conv2d(c, c, 3, padding=2, dilation=2, bias=False)
        self.dilated_bn = nn.BatchNorm2d(c)
        self.mixed = nn.Conv2d(c, c, 3, padding=1, bias=False)     # BN fed by conv + x
        self.mixed_bn = nn.BatchNorm2d(c)
        self.peek = nn.Conv2d(c, c, 3, padding=1, bias=False)      # BN's statistics read elsewhere
        self.peek_bn = nn.BatchNorm2d(c)
        self.forked = nn.Conv2d(c, c, 3, padding=1, bias=False)    # conv output used twice
        self.forked_bn = nn.BatchNorm2d(c)
        self.a = nn.Conv2d(c, c, 3, padding=1, bias=False)         # two convs into one BN
        self.b = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.shared_bn = nn.BatchNorm2d(c)
        self.twice = nn.Conv2d(c, c, 3, padding=1, bias=False)     # called twice
        self.twice_bn = nn.BatchNorm2d(c)
        self.alone = nn.Conv2d(c, c, 3, padding=1, bias=False)     # no BN after it
        self.frozen = nn.Conv2d(c, c, 3, padding=1, bias=False)    # BN without affine parameters
        self.frozen_bn = nn.BatchNorm2d(c, affine=False)
        self.reflect = nn.Conv2d(c, c, 3, padding=1, padding_mode="reflect", bias=False)
        self.reflect_bn = nn.BatchNorm2d(c)
        self.dynamic = _Dynamic()                                  # not traceable: its pair stays
        self.tail = nn.Conv2d(c, c, 3, padding=1, bias=False)      # pair next to the untraceable module
        self.tail_bn = nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)
        self.head = nn.Linear(c, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = self.dw(x)
        x = torch.relu(self.same_bn(self.same(torch.relu(self.wide_bn(self.wide(x))))))
        x = torch.relu(self.pw_bn(self.pw(x)))
        x = torch.nn.functional.pad(torch.relu(self.valid_bn(self.valid(x))), [1, 1, 1, 1])
        x = x + self.dilated_bn(self.dilated(x))
        x = self.mixed_bn(self.mixed(x) + x)
        x = self.peek_bn(self.peek(x)) - self.peek_bn.running_mean.reshape(1, -1, 1, 1)
        y = self.forked(x)
        x = self.forked_bn(y) + y
        x = self.shared_bn(self.a(x)) + self.shared_bn(self.b(x))
        x = self.twice_bn(self.twice(self.twice(x)))
        x = torch.relu(self.alone(x))
        x = self.reflect_bn(self.reflect(self.frozen_bn(self.frozen(x))))
        x = self.tail_bn(self.tail(self.dynamic(x)))
        return self.head(x.mean((2, 3)))


def _random_state(model: nn.Module, seed: int) -> None:
    """Random weights, BN statistics far from identity, random online scales, identity-based 1x1s
    away from the identity: a trained network, not a fresh one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif p.ndim > 1:
                p.add_(0.3 * p.std() * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.affine:
                c, opts = m.num_features, {"generator": g, "dtype": m.weight.dtype}
                m.weight.copy_(torch.rand(c, **opts) + 0.5)
                m.bias.copy_(0.5 * torch.randn(c, **opts))
                m.running_mean.copy_(0.5 * torch.randn(c, **opts))
                m.running_var.copy_(torch.rand(c, **opts) + 0.5)
                m.num_batches_tracked.fill_(7)


def _outputs(model: nn.Module, x: Tensor, train: bool) -> Tensor:
    model.train(train)
    torch.manual_seed(0)  # dropout draws the same mask in both models
    with torch.no_grad():
        return model(x)


def _assert_preserved(original: nn.Module, converted: nn.Module, x: Tensor) -> None:
    """Same outputs in eval and train mode, and the same BN statistics after the train-mode pass."""
    a, b = copy.deepcopy(original), copy.deepcopy(converted)
    assert (_outputs(a, x, False) - _outputs(b, x, False)).abs().max() <= TOL
    assert (_outputs(a, x, True) - _outputs(b, x, True)).abs().max() <= TOL
    assert (_outputs(a, x, False) - _outputs(b, x, False)).abs().max() <= TOL  # running stats moved alike


def _edges() -> nn.Module:
    torch.manual_seed(0)
    model = _Edges().double()
    _random_state(model, 1)
    return model


def test_find_pairs_on_every_pattern() -> None:
    plan = find_pairs(_Edges())
    assert plan.pairs == [("stem", "stem_bn"), ("dw.0", "dw.1"), ("wide", "wide_bn"), ("same", "same_bn"),
                          ("tail", "tail_bn")]
    reasons = {s.name: s.reason for s in plan.skipped}
    assert reasons == {
        "pw": "1x1 kernel", "valid": "padding not K//2", "dilated": "dilation", "mixed": "no BatchNorm after it",
        "peek": "weights read elsewhere",
        "forked": "output used elsewhere", "a": "BatchNorm shared", "b": "BatchNorm shared",
        "twice": "called more than once", "alone": "no BatchNorm after it", "frozen": "BatchNorm unsupported",
        "reflect": "padding mode", "dynamic.conv": "not traceable",
    }
    assert plan.num_convs == sum(isinstance(m, nn.Conv2d) for m in _Edges().modules())


def test_a_conv_registered_under_two_names_is_skipped() -> None:
    conv, bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
    model = nn.Sequential(conv, bn)
    model.alias = conv
    assert [s.reason for s in find_pairs(model).skipped] == ["shared module"]


def test_a_model_that_does_not_trace_converts_nothing() -> None:
    with pytest.raises(NothingToConvertError, match="1 not traceable"):
        convert(_Dynamic())
    with pytest.raises(NothingToConvertError, match="0 of 2 convs converted; skipped 2 no BatchNorm after it: "):
        convert(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)))


class _PadsInForward(nn.Module):
    """pretrainedmodels' NASNet style: a module built inside forward (never registered), and
    pretrainedmodels' style of a forward set on the instance, which the class's no longer matches."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4)
        self.body, self.body_bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.classifier = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_bn(self.stem(nn.ZeroPad2d((1, 0, 1, 0))(x)))
        return self.classifier(self.body_bn(self.body(x)).mean((2, 3)))


def _logits_forward(self: _PadsInForward, x: Tensor) -> Tensor:
    x = self.stem_bn(self.stem(nn.ZeroPad2d((1, 0, 1, 0))(x)))
    return self.last_linear(self.body_bn(self.body(x)).mean((2, 3)))


def test_modules_built_in_forward_and_an_instance_forward_trace() -> None:
    torch.manual_seed(0)
    model = _PadsInForward().double()
    _random_state(model, 1)
    model.last_linear = model.classifier  # what pretrainedmodels does to torchvision's models ...
    del model.classifier  # ... so the class's forward fails, and the instance's is the model's
    model.forward = types.MethodType(_logits_forward, model)
    plan = find_pairs(model)
    assert [(c, b) for c, b in plan.pairs] == [("body", "body_bn")]
    assert [(s.name, s.reason) for s in plan.skipped] == [("stem", "padding not K//2")]  # not "not traceable"
    converted = convert(model)
    _assert_preserved(model, converted, torch.randn(2, 3, 9, 9, dtype=torch.float64))
    assert type(model).forward is _PadsInForward.forward  # tracing put the user's class back


@pytest.mark.parametrize("reparam", FORMS)
def test_conversion_preserves_the_function_of_every_pair(reparam: str) -> None:
    model = _edges()
    converted = convert(model, reparam=reparam)
    conversion = conversion_of(converted)
    assert conversion is not None and [layer.conv for layer in conversion.layers] == ["stem", "dw.0", "wide", "same", "tail"]
    assert isinstance(converted.stem_bn, nn.Identity) and isinstance(converted.dw[1], nn.Identity)
    assert all(isinstance(b, OnlineODBB if reparam == "online" else ODBB) for _, b in odbb_layers(converted))
    norms = [m for m in converted.tail.modules() if isinstance(m, nn.BatchNorm2d)]  # the host BN's eps, momentum
    assert norms and all((m.eps, m.momentum) == (1e-3, 0.01) for m in norms)
    _assert_preserved(model, converted, torch.randn(3, 3, 15, 13, dtype=torch.float64))
    assert isinstance(model.stem, nn.Conv2d) and conversion_of(model) is None  # the original is untouched
    assert not any(k.startswith("_tensor_constant") for k in vars(model))  # tracing left no attribute behind
    with pytest.raises(ValueError, match="already holds ODBBs"):
        convert(converted)


@pytest.mark.parametrize("reparam", FORMS)
@pytest.mark.parametrize("builder", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_convert_function_preserving(builder: str, reparam: str) -> None:
    torch.manual_seed(0)
    options = {"width_mult": 0.25} if builder == "mobilenet_v2" else {}
    model = torchvision.models.get_model(builder, num_classes=5, **options).double()
    _random_state(model, 2)
    converted = convert(model, reparam=reparam)
    assert len(odbb_layers(converted)) == (17 if builder == "resnet18" else 18)
    _assert_preserved(model, converted, torch.randn(2, 3, 32, 32, dtype=torch.float64))


def _random_masks(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _, block in odbb_layers(model):
        mask = torch.rand(len(block.branch_names), generator=g) < 0.5
        if not mask.any() and block.identity is None:
            mask[0] = True
        block.set_active(mask)


@pytest.mark.parametrize("reparam", FORMS)
def test_to_original_is_the_users_class_and_computes_the_supernet(reparam: str) -> None:
    torch.manual_seed(0)
    original = torchvision.models.mobilenet_v2(num_classes=5, width_mult=0.25).double()
    converted = convert(original, reparam=reparam)
    _random_state(converted, 3)  # every branch trained: far from the zero start
    _random_masks(converted, 4)
    back = to_original(converted)
    assert type(back) is torchvision.models.MobileNetV2 and not hasattr(back, "conversion")
    fresh = torchvision.models.mobilenet_v2(num_classes=5, width_mult=0.25).double()
    fresh.load_state_dict(back.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert (_outputs(converted, x, False) - _outputs(fresh, x, False)).abs().max() <= TOL
    deploy = reparameterize(converted)  # the same, as every trial's export calls it
    assert type(deploy) is torchvision.models.MobileNetV2 and not deploy.training
    assert (_outputs(converted, x, False) - _outputs(deploy, x, False)).abs().max() <= TOL


@pytest.mark.parametrize("reparam", FORMS)
def test_a_block_keeping_only_kxk_comes_back_as_the_conv_and_bn_it_trained(reparam: str) -> None:
    model = _edges()
    converted = convert(model, reparam=reparam)
    for _, block in odbb_layers(converted):
        block.set_active([name == "kxk" for name in block.branch_names])
    _random_state(converted, 5)
    stem = converted.stem
    assert stem.identity is None  # 3 -> 8 channels: no identity branch
    back = to_original(converted)
    expected = stem.branches["kxk"].weight * stem.branches["kxk"].scale.reshape(-1, 1, 1, 1) \
        if reparam == "online" else stem.branches["kxk"].conv.weight
    assert torch.equal(back.stem.weight, expected) and torch.equal(back.stem.bias, torch.zeros(8, dtype=torch.float64))
    bn = stem.bn if reparam == "online" else stem.branches["kxk"].bn
    assert torch.equal(back.stem_bn.running_var, bn.running_var) and int(back.stem_bn.num_batches_tracked) == 7
    # the kxk-only layers train on as the original conv + BN: train-mode output of that layer is equal
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        assert (stem.train()(x) - back.stem_bn.train()(back.stem(x))).abs().max() <= TOL


@pytest.mark.parametrize("reparam", FORMS)
def test_loading_the_originals_weights_equals_converting_them(reparam: str) -> None:
    trained = _edges()
    host = convert(_Edges().double(), reparam=reparam, preserve=False)  # fresh blocks, other weights
    load_original_state_dict(host, trained.state_dict())
    _assert_preserved(trained, host, torch.randn(2, 3, 11, 11, dtype=torch.float64))
    shapes = original_state_shapes(host)
    assert shapes == {k: tuple(v.shape) for k, v in trained.state_dict().items()}


def _new_branches(block: ODBB) -> list[tuple[str, nn.Module]]:
    named = [(n, m) for n, m in block.branches.items() if n != "kxk"]
    return named if block.identity is None else [*named, ("identity", block.identity)]


@pytest.mark.parametrize("reparam", FORMS)
def test_new_branches_can_start_above_zero_and_still_fuse_exactly(reparam: str) -> None:
    trained = _edges()
    host = convert(_Edges().double(), reparam=reparam, preserve=False)
    load_original_state_dict(host, trained.state_dict(), new_branch_start=0.1)
    assert host.same.identity is not None  # the identity is a new branch too
    for _, block in odbb_layers(host):
        new = _new_branches(block)
        if reparam == "online":
            starts = [m.scale for _, m in new]
            assert torch.equal(block.branches["kxk"].scale, torch.ones_like(block.branches["kxk"].scale))
        else:
            norms = [m if n == "identity" else getattr(m, OUTPUT_BN[n]) for n, m in new]
            starts = [bn.weight for bn in norms]
            assert all(not bn.bias.any() for bn in norms)
        assert starts and all(torch.equal(s, torch.full_like(s, 0.1)) for s in starts)
    kxk = host.stem.branches["kxk"]
    assert torch.equal(kxk.weight if reparam == "online" else kxk.conv.weight, trained.stem.weight)
    x = torch.randn(2, 3, 11, 11, dtype=torch.float64)
    assert (_outputs(trained, x, False) - _outputs(host, x, False)).abs().max() > 1e-3  # no longer the original
    assert (_outputs(host, x, False) - _outputs(reparameterize(host), x, False)).abs().max() <= TOL


@pytest.mark.parametrize("reparam", FORMS)
def test_new_branch_parameters_are_every_branch_but_kxk_and_the_identity(reparam: str) -> None:
    host = convert(_edges(), reparam=reparam)
    expected = [p for n, p in host.named_parameters()  # not an online block's bn: the original BN
                if ".identity." in n or (".branches." in n and ".branches.kxk." not in n)]
    assert expected and [id(p) for p in new_branch_parameters(host)] == [id(p) for p in expected]


def test_weights_that_do_not_fit_name_the_keys() -> None:
    host = convert(_Edges(), preserve=False)
    state = _Edges().state_dict()
    bad = {**{k: v for k, v in state.items() if not k.startswith("tail_bn.")}, "extra.weight": torch.zeros(1),
           "stem.weight": torch.zeros(8, 3, 5, 5)}
    with pytest.raises(ValueError) as info:
        check_original_state(host, {k: v.shape for k, v in bad.items()})
    text = str(info.value)
    assert "missing keys tail_bn.weight, tail_bn.bias, tail_bn.running_mean, tail_bn.running_var, " in text
    assert "unexpected keys extra.weight" in text and "wrong shapes stem.weight (8, 3, 5, 5) (model: (8, 3, 3, 3))" in text
    with pytest.raises(ValueError, match="missing keys"):
        load_original_state_dict(host, bad)


def test_weights_need_a_kxk_branch_in_every_block() -> None:
    host = convert(_Edges(), branches=["1x1", "kxk"], preserve=False)
    with pytest.raises(ValueError, match="'kxk'"):
        convert(_Edges(), branches=["1x1", "1xk"])
    host.stem = ODBB(3, 8, 3, branches=["1x1"])
    with pytest.raises(ValueError, match="layer stem: .* no 'kxk' branch"):
        load_original_state_dict(host, _Edges().state_dict())


@pytest.mark.parametrize("reparam", FORMS)
def test_build_model_converts_torchvision_builders(reparam: str) -> None:
    model = build_model("torchvision.resnet18", 7, reparam=reparam, branches=["1x1", "kxk", "1x1_kxk"])
    assert model.spec.name == "torchvision.resnet18" and len(odbb_layers(model)) == 17
    assert all(b.branch_names == ("1x1", "kxk", "1x1_kxk") for _, b in odbb_layers(model))
    arch = architecture_of(model)
    arch.layers[0].branches = ["kxk"]
    rebuilt = build_from_architecture(arch, reparam)
    assert architecture_of(rebuilt) == arch and conversion_of(rebuilt) is not None
    deploy = reparameterize(rebuilt)
    torchvision.models.resnet18(num_classes=7).load_state_dict(deploy.state_dict(), strict=True)


@pytest.mark.parametrize(("name", "options", "match"), [
    ("torchvision.resnet81", {}, "did you mean 'torchvision.resnet18'"),
    ("torchvision.resnet18", {"weights": "IMAGENET1K_V1"}, "nothing downloads"),
    ("torchvision.vit_b_16", {"image_size": 32}, "no KxK conv -> BatchNorm pair"),
    ("no_such_module_xyz:build", {}, "cannot import module 'no_such_module_xyz'"),
    ("torchvision.models:no_such_builder", {}, "has no attribute 'no_such_builder'"),
])
def test_external_hosts_fail_clearly(name: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(name, 10, **options)


def test_a_factory_gets_num_classes_and_in_channels_when_it_takes_them() -> None:
    assert resolve_factory("torchvision.models:resnet18") is torchvision.models.resnet18
    model = build_model("_factories:small_net", 3, in_channels=1, width=4)
    assert model[-1].out_features == 3 and model[0][0].in_channels == 1 and model.spec.options == {"width": 4}
    assert [name for name, _ in odbb_layers(model)] == ["0.0", "1.0"]
    assert [s.reason for s in conversion_of(model).skipped] == ["1x1 kernel"]
    with pytest.raises(ValueError, match="is a int, not callable"):
        build_model("_factories:NOT_CALLABLE", 3)
    with pytest.raises(ValueError, match="takes 3 input channels"):
        build_model("torchvision.resnet18", 10, in_channels=1)


def test_conversion_on_the_meta_device_needs_no_memory() -> None:
    with torch.device("meta"):
        model = build_model("torchvision.mobilenet_v2", 10)
    assert next(model.parameters()).is_meta and len(original_state_shapes(model)) == len(
        torchvision.models.mobilenet_v2(num_classes=10).state_dict())

