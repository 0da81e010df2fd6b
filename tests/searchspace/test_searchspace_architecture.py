"""Architecture description: JSON round trip, rebuilding, and input validation."""

from __future__ import annotations

import json

import pytest
import torch

from searchspace import (
    BRANCH_TYPES,
    FORMAT,
    Architecture,
    LayerArch,
    architecture_of,
    build_from_architecture,
    build_model,
    odbb_layers,
)


def _masked_model(name: str, seed: int, **options):
    g = torch.Generator().manual_seed(seed)
    model = build_model(name, 5, 1, **options)
    for _, block in odbb_layers(model):
        mask = torch.rand(len(block.branch_names), generator=g) < 0.5
        if not block.has_identity and not mask.any():
            mask[0] = True
        block.set_active(mask)
    return model


@pytest.mark.parametrize("name,options", [("repvgg_tiny", {"widths": (8, 16, 16)}), ("resnet_tiny", {}),
                                          ("resnet_tiny", {"identity": True, "kernel_size": 5})])
def test_round_trip_builds_exactly_the_kept_branches(name: str, options: dict, tmp_path, randomize_bn) -> None:
    supernet = _masked_model(name, 3, **options)
    arch = architecture_of(supernet)
    assert arch.num_branches == sum(int(b.active.sum()) for _, b in odbb_layers(supernet))
    path = tmp_path / "arch.json"
    arch.save(path)
    loaded = Architecture.load(path)
    assert loaded.to_dict() == json.loads(arch.to_json()) and json.loads(path.read_text())["format"] == FORMAT

    subnet = build_from_architecture(loaded)
    sub_blocks, sup_blocks = odbb_layers(subnet), odbb_layers(supernet)
    assert [n for n, _ in sub_blocks] == [n for n, _ in sup_blocks]
    for (_, sub), (_, sup) in zip(sub_blocks, sup_blocks):
        assert sub.branch_names == sup.active_branches and bool(sub.active.all())
        assert sub.has_identity == sup.has_identity
    assert architecture_of(subnet).to_dict() == loaded.to_dict()

    # The supernet's weights of the kept branches load into the subnet and give the same function.
    randomize_bn(supernet, torch.Generator().manual_seed(4), spread=0.3)
    sub_keys = subnet.state_dict().keys()
    weights = {k: v for k, v in supernet.state_dict().items() if k in sub_keys and not k.endswith(".active")}
    missing = subnet.load_state_dict(weights, strict=False).missing_keys
    assert all(k.endswith(".active") for k in missing)
    subnet.eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(subnet(x), supernet(x))
    # ... and the subnet's own state loads strictly into another build of the same architecture.
    again = build_from_architecture(Architecture.from_json(arch.to_json()))
    again.load_state_dict(subnet.state_dict())


def test_architecture_of_needs_a_spec() -> None:
    model = build_model("repvgg_tiny", 2)
    del model.spec
    with pytest.raises(ValueError, match="ModelSpec.*build_model"):
        architecture_of(model)


def _valid() -> dict:
    return architecture_of(build_model("repvgg_tiny", 4, 1)).to_dict()


def _with(path: list, value) -> dict:
    data = _valid()
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize("data,needles", [
    (_with(["format"], "v0"), ["'v0'", FORMAT]),
    (_with(["model"], "vgg"), ["'vgg'", "repvgg_a0"]),
    (_with(["model"], KeyError), ["'model'"]),
    (_with(["num_classes"], "10"), ["num_classes='10'", "int"]),
    (_with(["in_channels"], True), ["in_channels=True", "int"]),
    (_with(["extra"], 1), ["'extra'", "layers"]),
    (_with(["options"], {"depth": 3}), ["'depth'", "width_multiplier"]),
    (_with(["layers", 0, "branches"], ["kxk", "3x3"]), ["layers[0]", "'3x3'", "1x1_kxk"]),
    (_with(["layers", 0, "branches"], "kxk"), ["branches='kxk'", "list"]),
    (_with(["layers", 1, "identity"], "yes"), ["layers[1]", "identity='yes'", "bool"]),
    (_with(["layers", 0, "name"], "stages.9.conv"), ["stages.9.conv", "stages.0.0.conv"]),
    (_with(["layers", 1, "identity"], True), ["stages.1.0.conv", "identity=True", "identity=False"]),
    (_with(["layers", 0, "branches"], []), ["stages.0.0.conv", "no branch", "1x1_kxk"]),
    ([1, 2], ["list", "JSON object"]),
])
def test_bad_architecture_input_names_value_and_allowed(data, needles: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        build_from_architecture(Architecture.from_json(json.dumps(data)))
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_invalid_json_text_and_unserialisable_options() -> None:
    with pytest.raises(ValueError, match="invalid JSON"):
        Architecture.from_json("{not json")
    arch = Architecture("repvgg_tiny", 2, 1, {"widths": object()}, [LayerArch("a", list(BRANCH_TYPES), True)])
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        arch.to_json()
