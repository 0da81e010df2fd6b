"""Back to the user's own class: a converted supernet as an instance of the original model.

:func:`to_original` puts a plain ``nn.Conv2d`` and ``nn.BatchNorm2d``, built with the
original constructor arguments, back at every converted pair's places, so the result is
an instance of the user's class whose ``state_dict`` loads with ``strict=True`` into an
unmodified instance (for torchvision: ``torchvision.models.<builder>(num_classes=...)``).

* A block that keeps only its ``kxk`` branch (no identity) comes back exactly as the conv
  and BN it trains (offline: the branch's conv and BN; online: the scaled kernel and the
  block's BN): equal in train and eval mode, so the model can be trained further. An
  ``offline_qa`` block normalises twice (branch BN, block BN) and always folds.
* Any other block folds (T1-T6) into one kernel and bias, in eval semantics. The kernel
  goes into the conv (its own bias, if the class has one, is 0) and the BN becomes an exact
  identity plus bias: running mean 0, running variance ``1 - eps``, weight 1, bias ``b``,
  so ``(z - 0) / sqrt(1 - eps + eps) * 1 + b = z + b`` in eval mode.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .convert import ConvertedLayer, _require_conversion, replace_module
from .fusion import scale_kernel
from .odbb import ODBB
from .online import OnlineConv, OnlineODBB
from .qa import QAODBB

__all__ = ["to_original"]


@torch.no_grad()
def _restore_pair(block: ODBB, layer: ConvertedLayer) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """The original conv and BN that compute what ``block`` computes (see the module doc)."""
    like = {"device": block.active.device, "dtype": next(block.parameters()).dtype}
    conv = nn.Conv2d(**layer.conv_args, **like)
    bn = nn.BatchNorm2d(**layer.bn_args, **like)
    if conv.bias is not None:
        conv.bias.zero_()
    if block.active_branches == ("kxk",) and block.identity is None and not isinstance(block, QAODBB):
        kxk = block.branches["kxk"]
        if isinstance(block, OnlineODBB):
            assert isinstance(kxk, OnlineConv)
            conv.weight.copy_(scale_kernel(kxk.weight, kxk.scale))
            bn.load_state_dict(block.bn.state_dict())
        else:
            conv.weight.copy_(kxk.conv.weight)
            bn.load_state_dict(kxk.bn.state_dict())
    else:
        kernel, bias = block.fuse_kernel()
        conv.weight.copy_(kernel)
        bn.weight.fill_(1.0)
        bn.bias.copy_(bias)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
    return conv.train(block.training), bn.train(block.training)


def to_original(model: nn.Module) -> nn.Module:
    """A copy of the converted ``model`` as an instance of the user's original class.

    Only the converted pairs change; every other module (and its training state) is the
    converted model's. Eval outputs equal the supernet's (its active branches, as
    ``reparameterize`` fuses them); blocks reduced to ``kxk`` also keep their train-mode
    behaviour. ``model`` is not modified.
    """
    conversion = _require_conversion(model)
    original = copy.deepcopy(model)
    for layer in conversion.layers:
        block = original.get_submodule(layer.conv)
        assert isinstance(block, ODBB)
        conv, bn = _restore_pair(block, layer)
        replace_module(original, layer.conv, conv)
        replace_module(original, layer.bn, bn)
    for attribute in ("conversion", "spec"):  # what convert / build_model added
        original.__dict__.pop(attribute, None)
    return original
