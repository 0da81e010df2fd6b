"""The float64 checks of ``convert_coverage.py``: function preservation and fused vs supernet.

Pure helpers on a model and an input: random BN statistics and branch masks far from identity,
errors relative to the output's scale, and the fused model loaded strictly into a fresh instance
of its builder, compared per converted layer and at the output beside a rounding control.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FORMS", "SIZES", "calibrate", "forward", "fused_error", "input_size", "preservation", "random_masks",
           "randomize", "relative_error"]

SIZES = (32, 64, 96, 128, 224, 256, 299, 331)
FORMS = ("offline", "online")


def randomize(model: Any, seed: int) -> None:
    """BN statistics and affine parameters far from identity; online scales random."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.affine and m.track_running_stats:
                c, opts = m.num_features, {"generator": g, "dtype": m.weight.dtype}
                m.weight.copy_(torch.rand(c, **opts) + 0.5)
                m.bias.copy_(0.5 * torch.randn(c, **opts))
                m.running_mean.copy_(0.5 * torch.randn(c, **opts))
                m.running_var.copy_(torch.rand(c, **opts) + 0.5)


def random_masks(model: Any, seed: int) -> None:
    import torch

    from searchspace import odbb_layers

    g = torch.Generator().manual_seed(seed)
    for _, block in odbb_layers(model):
        mask = torch.rand(len(block.branch_names), generator=g) < 0.5
        if not mask.any() and block.identity is None:
            mask[torch.randint(len(mask), (1,), generator=g)] = True
        block.set_active(mask)


def forward(model: Any, x: Any, train: bool) -> Any:
    import torch

    model.train(train)
    torch.manual_seed(0)  # the same dropout masks in both models
    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, tuple) else out  # GoogLeNet / Inception in train mode: (logits, aux...)


def input_size(model: Any) -> int:
    """The smallest of ``SIZES`` the model runs on in eval and train mode (Inception's auxiliary
    head needs more than its main path)."""
    import torch

    for size in SIZES:
        try:
            for train in (False, True):
                forward(model, torch.randn(2, 3, size, size), train)
            return size
        except (RuntimeError, ValueError, AssertionError):
            continue
    raise RuntimeError(f"no input size of {SIZES} works")


def relative_error(reference: Any, other: Any) -> float:
    """max |reference - other| relative to max(1, max |reference|): deep networks with random
    multi-branch blocks reach outputs of 1e10 and more, where float64 rounding alone is 1e-6."""
    return float((reference - other).abs().max() / reference.abs().max().clamp_min(1.0))


def preservation(original: Any, converted: Any, x: Any) -> tuple[float, float]:
    """(eval error, train error) of ``converted`` against ``original``; both keep training state."""
    eval_err = relative_error(forward(original, x, False), forward(converted, x, False))
    train_err = relative_error(forward(original, x, True), forward(converted, x, True))
    after = relative_error(forward(original, x, False), forward(converted, x, False))  # running stats moved alike
    return eval_err, max(train_err, after)


def calibrate(model: Any, x: Any) -> None:
    """Running statistics that match the data (a cumulative average over one train-mode pass),
    so activations stay near unit scale as in a trained network."""
    import torch
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)


def fused_error(build: Any, converted: Any, x: Any, seed: int) -> tuple[float, float, float]:
    """(per layer, at the output, control): max |supernet - fused| in eval mode, the fused model
    loaded strictly into a fresh instance. Per layer: each converted layer of the fresh model (its
    conv and BN) against the supernet's block and what stayed at the BN's place (timm's drop and
    act), on the input that block received. Control: how far
    the supernet's own output moves when every converted block's output is scaled by 1 + 1e-15
    (float64 rounding), i.e. what the network's depth makes of rounding alone."""
    import torch

    from searchspace import conversion_of, to_original

    randomize(converted, seed)
    random_masks(converted, seed)
    # 64 images at 32 pixels (the last maps are 1x1: fewer samples leave near-zero variances that
    # amplify rounding by 1/sqrt(eps) per layer), the same pixel count at larger sizes
    shape = (max(8, 64 * 32**2 // x.shape[-1] ** 2), *x.shape[1:])
    calibrate(converted, torch.randn(shape, dtype=x.dtype, generator=torch.Generator().manual_seed(seed)))
    fresh = build().double()
    fresh.load_state_dict(to_original(converted).state_dict(), strict=True)
    seen: dict[str, tuple[Any, Any]] = {}  # cloned: an in-place activation follows the block
    layers = conversion_of(converted).layers
    hooks = [converted.get_submodule(layer.conv).register_forward_hook(
        lambda _m, inputs, out, name=layer.conv: seen.__setitem__(name, (inputs[0].clone(), out.clone())))
        for layer in layers]
    reference = forward(converted, x, False)
    output = relative_error(reference, forward(fresh, x, False))
    for hook in hooks:
        hook.remove()
    nudges = [converted.get_submodule(layer.conv).register_forward_hook(lambda _m, _i, out: out * (1 + 1e-15))
              for layer in layers]
    control = relative_error(reference, forward(converted, x, False))
    for hook in nudges:
        hook.remove()
    fresh.eval()
    worst = 0.0
    with torch.no_grad():
        for layer in layers:
            inputs, out = seen[layer.conv]
            after = converted.get_submodule(layer.bn)(out)  # a norm + act layer's tail (timm: drop, act)
            worst = max(worst, relative_error(after, fresh.get_submodule(layer.bn)(fresh.get_submodule(layer.conv)(inputs))))
    return worst, output, control
