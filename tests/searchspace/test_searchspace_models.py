"""Host networks: registry, shapes, and deploy copies equal to the multi-branch models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from searchspace import (
    BRANCH_TYPES,
    BasicBlock,
    ConvBN,
    ModelSpec,
    RepVGG,
    ResNet,
    build_model,
    list_models,
    model_options,
    odbb_layers,
    register_model,
    reparameterize,
)

DEPLOY_TYPES = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Linear,
                nn.Sequential, RepVGG, ResNet, BasicBlock)
TINY = ("repvgg_tiny", "resnet_tiny")


def _random_masks(model: nn.Module, g: torch.Generator) -> None:
    """A random subset of branches per layer; at least one where there is no identity."""
    for _, block in odbb_layers(model):
        mask = torch.rand(len(block.branch_names), generator=g) < 0.5
        if not block.has_identity and not mask.any():
            mask[torch.randint(len(mask), (1,), generator=g)] = True
        block.set_active(mask)


def _assert_deploy_is_plain(deploy: nn.Module) -> None:
    for name, m in deploy.named_modules():
        assert isinstance(m, DEPLOY_TYPES), (name, type(m).__name__)
        if isinstance(m, nn.Conv2d):
            assert type(m) is nn.Conv2d and m.bias is not None, name
    assert not deploy.training


# (model, options, in_channels, input size, batch); every registered host appears at least once.
EQUIVALENCE_CASES = [
    *[(name, {}, 1, 8, 2) for name in TINY],
    ("repvgg_tiny", {}, 1, 28, 2),
    ("resnet_tiny", {"stem": "imagenet"}, 3, 32, 2),
    ("repvgg_a0", {}, 3, 32, 1),
    ("repvgg_a0", {"identity": False, "kernel_size": 5, "width_multiplier": 0.25}, 3, 33, 1),
    ("repvgg_a1", {}, 3, 32, 1),
    ("repvgg_a2", {}, 3, 32, 1),
    ("repvgg_b1", {}, 3, 32, 1),
    ("resnet18", {}, 3, 32, 1),
    ("resnet18", {"stem": "small", "width_multiplier": 0.25}, 3, 31, 1),
    ("resnet34", {}, 3, 32, 1),
]


def test_every_registered_host_is_covered() -> None:
    assert {"repvgg_a0", "repvgg_a1", "repvgg_a2", "repvgg_b1", "repvgg_tiny",
            "resnet18", "resnet34", "resnet_tiny"} <= set(list_models())
    assert set(list_models()) <= {case[0] for case in EQUIVALENCE_CASES}


@pytest.mark.parametrize("name,options,in_channels,size,batch", EQUIVALENCE_CASES,
                         ids=[f"{c[0]}-{c[3]}px-{'-'.join(map(str, c[1].values())) or 'default'}"
                              for c in EQUIVALENCE_CASES])
def test_deploy_copy_equals_model_float32(name: str, options: dict, in_channels: int, size: int, batch: int,
                                          randomize_bn) -> None:
    g = torch.Generator().manual_seed(len(name) * 1000 + size)
    torch.manual_seed(size)
    model = build_model(name, 10, in_channels, **options)
    _random_masks(model, g)
    randomize_bn(model, g, spread=0.3)
    x = torch.randn(batch, in_channels, size, size, generator=g)
    with torch.no_grad():
        ref = model(x)
        deploy = reparameterize(model)
        out = deploy(x)
        assert torch.equal(model(x), ref)  # the original is untouched
    assert isinstance(model.spec, ModelSpec) and model.spec.name == name and model.spec.options == options
    assert len(odbb_layers(model)) > 0 and not odbb_layers(deploy)
    _assert_deploy_is_plain(deploy)
    assert out.shape == ref.shape == (batch, 10)
    scale = ref.abs().max().item()
    assert scale > 1e-3
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * scale)


def test_reparameterize_keeps_original_usable_and_in_its_mode() -> None:
    model = build_model("resnet_tiny", 3, 1)
    model.train()
    deploy = reparameterize(model)
    assert model.training and not deploy.training
    assert len(odbb_layers(model)) == 7 and any(isinstance(m, ConvBN) for m in model.modules())
    loss = model(torch.randn(4, 1, 8, 8)).sum()
    loss.backward()  # still trainable
    assert all(p.grad is not None for p in odbb_layers(model)[0][1].branches["kxk"].parameters())


def test_repvgg_a0_deploy_params_equal_plain_repvgg_a0() -> None:
    """No hidden extras: count a plain RepVGG-A0 of biased 3x3 convs built from nn.Conv2d."""
    widths, depths = (48, 48, 96, 192, 1280), (1, 2, 4, 14, 1)
    convs, cin = [], 3
    for w, d in zip(widths, depths):
        for _ in range(d):
            convs.append(nn.Conv2d(cin, w, 3, padding=1, bias=True))
            cin = w
    plain = nn.Sequential(*convs, nn.Linear(1280, 1000))
    expected = sum(p.numel() for p in plain.parameters())
    model = build_model("repvgg_a0", 1000)
    deploy = reparameterize(model)
    assert sum(p.numel() for p in deploy.parameters()) == expected == 8_309_384  # RepVGG paper: 8.30M
    deploy_convs = [m for m in deploy.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in deploy_convs] == [
        (c.in_channels, c.out_channels, c.kernel_size) for c in convs]
    assert len(odbb_layers(model)) == 22 and sum(len(b.branch_names) for _, b in odbb_layers(model)) == 132


@pytest.mark.parametrize("name,widths,layers", [
    ("repvgg_a0", (48, 48, 96, 192, 1280), 22), ("repvgg_a1", (64, 64, 128, 256, 1280), 22),
    ("repvgg_a2", (64, 96, 192, 384, 1408), 22), ("repvgg_b1", (64, 128, 256, 512, 2048), 28),
])
def test_repvgg_paper_shapes(name: str, widths: tuple[int, ...], layers: int) -> None:
    with torch.device("meta"):
        model = build_model(name, 1000)
    blocks = odbb_layers(model)
    assert len(blocks) == layers
    assert [stage[0].conv.out_channels for stage in model.stages] == list(widths)
    assert [stage[0].conv.stride for stage in model.stages] == [2] * 5
    assert all(b.stride == 1 for stage in model.stages for layer in list(stage)[1:] for b in [layer.conv])
    assert [b.has_identity for _, b in blocks] == [b.stride == 1 and b.in_channels == b.out_channels
                                                   for _, b in blocks]
    assert isinstance(model.head[2], nn.Dropout) and model.head[2].p == 0.1


def test_resnet_structure_and_stems() -> None:
    with torch.device("meta"):
        r18, r34 = build_model("resnet18", 1000), build_model("resnet34", 1000)
        small = build_model("resnet18", 10, stem="small")
    assert len(odbb_layers(r18)) == 1 + 16 and len(odbb_layers(r34)) == 1 + 32
    assert r18.stem.conv.kernel_size == 7 and r18.stem.conv.stride == 2 and isinstance(r18.stem.pool, nn.MaxPool2d)
    assert small.stem.conv.kernel_size == 3 and small.stem.conv.stride == 1 and not hasattr(small.stem, "pool")
    assert not any(b.has_identity for _, b in odbb_layers(r18))  # the residual is the identity path
    shortcuts = [m.downsample for m in r18.modules() if isinstance(m, BasicBlock) and m.downsample is not None]
    assert len(shortcuts) == 3 and all(isinstance(s, ConvBN) and s.conv.kernel_size == (1, 1) for s in shortcuts)


def test_tiny_hosts_run_on_digits_and_mnist_sizes() -> None:
    for name in TINY:
        model = build_model(name, 10, in_channels=1).eval()
        for size in (8, 28):
            assert model(torch.randn(3, 1, size, size)).shape == (3, 10)


def test_options_widths_depths_multiplier_and_plain_baseline() -> None:
    model = build_model("repvgg_tiny", 10, 1, widths=[8, 16], depths=[1, 3], strides=[1, 2], width_multiplier=2)
    assert [b.out_channels for _, b in odbb_layers(model)] == [16, 32, 32, 32]
    plain = build_model("repvgg_tiny", 10, 1, branches=["kxk"], identity=False)
    assert all(b.branch_names == ("kxk",) and not b.has_identity for _, b in odbb_layers(plain))
    assert plain.spec.branches == ("kxk",) and plain.spec.options == {"identity": False}
    assert {"widths", "depths", "strides", "width_multiplier", "identity", "dropout", "kernel_size"} <= set(
        model_options("repvgg_a0"))
    assert model_options("resnet18")["stem"] == "imagenet" and model_options("resnet_tiny")["stem"] == "small"


@pytest.mark.parametrize("call,needles", [
    (lambda: build_model("vgg16", 10), ["'vgg16'", "repvgg_a0", "resnet18"]),
    (lambda: build_model("repvgg_tiny", 10, width=2), ["'width'", "width_multiplier", "repvgg_tiny"]),
    (lambda: build_model("resnet_tiny", 10, stem="huge"), ["'huge'", "imagenet", "small"]),
    (lambda: build_model("repvgg_tiny", 10, branches=["kxk", "5x5"]), ["'5x5'", "1x1_kxk"]),
    (lambda: build_model("repvgg_tiny", 0), ["num_classes=0", ">= 1"]),
    (lambda: build_model("repvgg_tiny", 10, widths=[8, 16]), ["widths=[8, 16]", "one entry per stage"]),
    (lambda: build_model("repvgg_tiny", 10, width_multiplier=-1), ["width_multiplier=-1", "> 0"]),
    (lambda: build_model("repvgg_tiny", 10, kernel_size=2), ["kernel_size=2", "odd"]),
    (lambda: build_model("repvgg_tiny", 10, dropout=1.5), ["dropout=1.5", "0 <= dropout < 1"]),
])
def test_bad_model_arguments_name_value_and_allowed(call, needles: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        call()
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_register_model_rejects_duplicates_and_registers_new_names() -> None:
    with pytest.raises(ValueError, match="'repvgg_a0' is already registered"):
        register_model(lambda **kw: nn.Identity(), name="repvgg_a0")
    assert "resnet_tiny" in list_models() and BRANCH_TYPES == build_model("resnet_tiny", 2).spec.branches
