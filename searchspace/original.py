"""Back to the user's own class: a converted supernet as an instance of the original model.

:func:`to_original` puts a conv and a BN of the original classes (``nn.Conv2d`` and
``nn.BatchNorm2d`` built with the original constructor arguments, or fresh copies of a
subclass such as timm's ``Conv2dSame`` and ``BatchNormAct2d``, whose ``drop`` and ``act``
come back inside it as trained) back at every converted pair's places, so the result is
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
from torch.nn.modules.batchnorm import _BatchNorm

from .convert import _BN_STATE, ConvertedLayer, _require_conversion, replace_module
from .fusion import scale_kernel
from .odbb import ODBB
from .online import OnlineConv, OnlineODBB
from .qa import QAODBB

__all__ = ["to_original"]


def _fresh(template: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A new module of the template's class and hyper-parameters, its state all zeros."""
    module = copy.deepcopy(template).to_empty(device=device).to(dtype=dtype)
    for tensor in module.state_dict().values():
        tensor.zero_()
    return module


def _copy_bn_state(target: nn.Module, source: nn.Module) -> None:
    for key in _BN_STATE:
        getattr(target, key).copy_(getattr(source, key))


@torch.no_grad()
def _restore_pair(block: ODBB, layer: ConvertedLayer) -> tuple[nn.Conv2d, _BatchNorm]:
    """The original conv and BN (of the user's classes) that compute what ``block`` computes
    (see the module doc); a BN subclass's tail modules are put back by the caller."""
    device, dtype = block.active.device, next(block.parameters()).dtype
    conv = (nn.Conv2d(**layer.conv_args, device=device, dtype=dtype) if layer.conv_template is None
            else _fresh(layer.conv_template, device, dtype))
    bn = (nn.BatchNorm2d(**layer.bn_args, device=device, dtype=dtype) if layer.bn_template is None
          else _fresh(layer.bn_template, device, dtype))
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, _BatchNorm)
    if conv.bias is not None:
        conv.bias.zero_()
    if block.active_branches == ("kxk",) and block.identity is None and not isinstance(block, QAODBB):
        kxk = block.branches["kxk"]
        if isinstance(block, OnlineODBB):
            assert isinstance(kxk, OnlineConv)
            conv.weight.copy_(scale_kernel(kxk.weight, kxk.scale))
            _copy_bn_state(bn, block.bn)
        else:
            conv.weight.copy_(kxk.conv.weight)
            _copy_bn_state(bn, kxk.bn)
    else:
        kernel, bias = block.fuse_kernel()
        conv.weight.copy_(kernel)
        bn.weight.fill_(1.0)
        bn.bias.copy_(bias)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        bn.num_batches_tracked.zero_()
    return conv.train(block.training), bn.train(block.training)


def to_original(model: nn.Module) -> nn.Module:
    """A copy of the converted ``model`` as an instance of the user's original class.

    Only the converted pairs change (each becomes the original conv holding the fused kernel and
    its BN an exact identity plus bias; a BN subclass keeps its class and its tail); every other
    module is the converted model's. Eval outputs equal the supernet's; blocks reduced to ``kxk``
    also keep their train-mode behaviour. ``model`` is not modified.

    Args:
        model: a model made by :func:`searchspace.convert` (or ``build_model`` of an external host).

    Returns:
        The user's class, loadable with ``strict=True`` into an unmodified instance.

    Raises:
        ValueError: ``model`` was not made by ``convert``.
    """
    conversion = _require_conversion(model)
    original = copy.deepcopy(model)
    for layer in conversion.layers:
        block = original.get_submodule(layer.conv)
        assert isinstance(block, ODBB)
        conv, bn = _restore_pair(block, layer)
        for name in layer.tail:  # timm's drop and act, as trained, back inside their norm + act layer
            setattr(bn, name, original.get_submodule(f"{layer.bn}.{name}"))
        replace_module(original, layer.conv, conv)
        replace_module(original, layer.bn, bn)
    for attribute in ("conversion", "spec"):  # what convert / build_model added
        original.__dict__.pop(attribute, None)
    return original
