"""timm's networks and layers converted: BatchNormAct2d pairs with its conv (drop and act kept
after the block), Conv2dSame converts where exact, every skip reason true; after a few training
steps the fused model loads strictly into a fresh timm instance and computes the supernet (float64)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from searchspace import (
    NormTail,
    NothingToConvertError,
    build_model,
    conversion_of,
    convert,
    find_pairs,
    odbb_layers,
    reparameterize,
    to_original,
)

timm = pytest.importorskip("timm")
from timm.layers import BatchNormAct2d, Conv2dSame, StdConv2dSame  # noqa: E402 - after the importorskip

TOL = 1e-9
X = 32  # input side: small, as every timm CNN accepts it


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float64 CNNs on a small input: threads only contend
    yield
    torch.set_num_threads(threads)


def _rel(reference: Tensor, other: Tensor) -> float:
    return ((reference - other).abs().max() / reference.abs().max().clamp_min(1.0)).item()


def _out(model: nn.Module, x: Tensor, train: bool) -> Tensor:
    model.train(train)
    with torch.no_grad():
        return model(x)


# (timm model, what it exercises, the convs that must convert)
MODELS = [
    ("efficientnet_b0", "BatchNormAct2d, depthwise, squeeze-excite", 17),
    ("tf_mobilenetv3_small_minimal_100", "Conv2dSame (tf_ same padding)", 7),
    ("repvgg_a0", "ByobNet", 22),
]


@pytest.mark.parametrize(("name", "what", "converted"), MODELS, ids=[m[0] for m in MODELS])
def test_timm_model_converts_trains_fuses_and_loads_strictly(name: str, what: str, converted: int) -> None:
    torch.manual_seed(0)
    original = timm.create_model(name, num_classes=5).double()
    x = torch.randn(2, 3, X, X, dtype=torch.float64)
    _out(original, x, True)  # BN statistics that are not the initial ones
    model = convert(original)
    conversion = conversion_of(model)
    assert len(conversion.layers) == converted, conversion.summary()
    assert all(s.reason in {"1x1 kernel", "same padding at stride > 1"} for s in conversion.skipped), conversion.summary()
    for train in (False, True):  # function preserved, exactly, in both modes (running statistics move alike)
        assert _rel(_out(original, x, train), _out(model, x, train)) <= TOL
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    target = torch.arange(2)
    model.train()
    for _ in range(2):  # every branch learns away from 0
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), target).backward()
        opt.step()
    grown = [m.weight.detach().abs().max() for n, m in model.named_modules()
             if isinstance(m, nn.BatchNorm2d) and ".branches." in n and ".branches.kxk." not in n]
    assert grown and max(grown) > 0  # the branches that started at exactly 0 learn
    fused = reparameterize(model)
    norms = [fused.get_submodule(layer.bn) for layer in conversion.layers]
    assert all(type(n) is type(original.get_submodule(layer.bn)) for n, layer in zip(norms, conversion.layers))
    fresh = timm.create_model(name, num_classes=5).double()
    fresh.load_state_dict(fused.state_dict(), strict=True)
    assert _rel(_out(model, x, False), _out(fresh, x, False)) <= TOL


class _Block(nn.Module):
    """conv -> BatchNormAct2d (drop, then an act with parameters) -> a 1x1."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.bn = BatchNormAct2d(conv.out_channels, act_layer=nn.PReLU, drop_layer=nn.Dropout)
        self.head = nn.Conv2d(conv.out_channels, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.bn(self.conv(x)))


def test_norm_act_keeps_drop_and_act_after_the_block_and_comes_back_as_its_class() -> None:
    torch.manual_seed(0)
    original = _Block(nn.Conv2d(3, 6, 3, padding=1, bias=True)).double()
    with torch.no_grad():
        original.bn.act.weight.fill_(0.3)
        original.bn.running_mean.normal_()
    model = convert(original)
    tail = model.bn
    assert isinstance(tail, NormTail) and list(dict(tail.named_children())) == ["drop", "act"]
    assert "bn.act.weight" in model.state_dict()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    assert _rel(_out(original, x, False), _out(model, x, False)) <= TOL
    back = to_original(model)
    assert type(back.bn) is BatchNormAct2d and isinstance(back.bn.act, nn.PReLU) and type(back.conv) is nn.Conv2d
    assert back.bn.act.weight.item() == 0.3
    _Block(nn.Conv2d(3, 6, 3, padding=1, bias=True)).double().load_state_dict(back.state_dict(), strict=True)
    assert _rel(_out(model, x, False), _out(back, x, False)) <= TOL


def test_conv2d_same_converts_at_stride_1_and_is_skipped_with_the_reason_at_stride_2() -> None:
    torch.manual_seed(0)
    original = nn.Sequential(_Block(Conv2dSame(3, 6, 3))).double()
    model = convert(original)
    assert [layer.conv for layer in conversion_of(model).layers] == ["0.conv"]
    back = to_original(model)
    assert type(back[0].conv) is Conv2dSame
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert _rel(_out(original, x, False), _out(back, x, False)) <= TOL
    with pytest.raises(NothingToConvertError, match="1 same padding at stride > 1: conv; 1 1x1 kernel: head"):
        convert(_Block(Conv2dSame(3, 6, 3, stride=2)))
    skipped = find_pairs(_Block(Conv2dSame(3, 6, 3, stride=2))).skipped
    assert [(s.name, s.reason) for s in skipped] == [("conv", "same padding at stride > 1"), ("head", "1x1 kernel")]
    assert "on a 8x8 probe differs" in skipped[0].detail and "its padding at stride 2 depends on the input size" in skipped[0].detail
    (standardised, _) = find_pairs(_Block(StdConv2dSame(3, 6, 3, stride=2))).skipped  # differs on odd inputs too
    assert standardised.reason == "conv subclass" and "StdConv2dSame on a 7x7 probe differs" in standardised.detail


class _StaticSame(nn.Conv2d):
    """A conv with TF "same" padding fixed for one image size, as efficientnet-pytorch's
    ``Conv2dStaticSamePadding`` (a ``ZeroPad2d`` before a conv with no padding of its own)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, image_size: int = 224) -> None:
        super().__init__(cin, cout, k, stride)
        total = max((-(-image_size // stride) - 1) * stride + k - image_size, 0)
        self.static_padding = nn.ZeroPad2d((total // 2, total - total // 2) * 2)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, 0, 1, self.groups)


def test_fixed_same_padding_converts_at_stride_1_and_names_its_padding_at_stride_2() -> None:
    torch.manual_seed(0)
    original = nn.Sequential(_Block(_StaticSame(3, 6, 3))).double()
    back = to_original(convert(original))
    assert type(back[0].conv) is _StaticSame
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert _rel(_out(original, x, False), _out(back, x, False)) <= TOL
    (skipped, _) = find_pairs(_Block(_StaticSame(3, 6, 3, stride=2))).skipped
    assert skipped.reason == "same padding at stride > 1"
    assert "its padding at stride 2 is 0 before and 1 after on each side" in skipped.detail


class _PlainBN(nn.BatchNorm2d):
    """A subclass that keeps nn.BatchNorm2d's forward."""


class _ScaledBN(nn.BatchNorm2d):
    """A subclass with a forward of its own: what it adds is unknown."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * super().forward(x)


def test_batchnorm_subclasses_pair_when_their_forward_is_known_and_say_why_not() -> None:
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _PlainBN(4)).double()
    back = to_original(convert(plain))
    assert type(back[1]) is _PlainBN
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    assert _rel(_out(plain, x, False), _out(back, x, False)) <= TOL
    skipped = find_pairs(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _ScaledBN(4))).skipped
    assert [s.reason for s in skipped] == ["BatchNorm unsupported"]
    assert "_ScaledBN with a forward of its own" in skipped[0].detail


class _Untraceable(nn.Module):
    """A submodule with data-dependent control flow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv(x))
        return y if float(y.mean()) > 0 else -y


def test_a_submodule_torch_fx_cannot_trace_is_named_and_the_rest_converts() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), _Untraceable())
    conversion = conversion_of(convert(model))
    assert [layer.conv for layer in conversion.layers] == ["0"]
    (skipped,) = conversion.skipped
    assert skipped.name == "2.conv" and skipped.reason == "not traceable"
    assert "torch.fx cannot trace inside 2: TypeError" in skipped.detail
    assert "1 not traceable: 2.conv" in conversion.summary()


def test_options_reach_the_builder_whatever_their_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    options = {"name": "tiny", "branches": 6, "reparam": "hardswish"}
    model = build_model("_factories:named_net", 3, options=options)
    assert model.spec.options == options and model[-1].in_features == 6 and isinstance(model[0][2], nn.Hardswish)
    with pytest.raises(ValueError, match="'num_classes' is not accepted .* set from the dataset"):
        build_model("_factories:named_net", 3, options={**options, "num_classes": 4})


def test_timm_names_build_with_their_options_and_refuse_downloads() -> None:
    model = build_model("timm.efficientnet_b0", 4, in_channels=1, options={"drop_rate": 0.1})
    assert model.classifier.out_features == 4 and model.drop_rate == 0.1 and len(odbb_layers(model)) == 17
    assert model.conv_stem.in_channels == 1
    for key in ("pretrained", "in_chans", "num_classes"):
        with pytest.raises(ValueError, match=f"option '{key}' is not accepted"):
            build_model("timm.efficientnet_b0", 4, options={key: 1})
    with pytest.raises(ValueError, match="unknown timm model 'timm.efficientnet_bo'"):
        build_model("timm.efficientnet_bo", 4)
