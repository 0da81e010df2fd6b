"""Convert any network into an ODBB supernet, function-preserving from its trained weights.

:func:`convert` deep-copies a model and turns every conv -> BatchNorm pair that
:func:`searchspace.pairs.find_pairs` finds into an ODBB (offline) or OnlineODBB (online)
at the conv's place; the BN's place holds an ``nn.Identity`` (or, for timm's norm + act
layers, a ``NormTail`` with their ``drop`` and ``act``), so the model's own forward
(``self.bn1(self.conv1(x))``, ``Conv2dNormActivation`` sequences) runs unchanged. The
copy carries a :class:`Conversion` in ``model.conversion``: the converted layers (with
what it takes to rebuild the original conv and BN) and every skipped conv with its reason.

Function preservation (``preserve=True``), exact in train and eval mode:

* offline: the ``kxk`` branch's ConvBN takes the conv's weight and the BN's whole state
  (affine parameters, running statistics, batch count, eps, momentum); every other branch
  and the identity start with their last BN's weight and bias at 0, so they add exactly 0
  and still learn (the weight gets a gradient), as zero-init residuals do.
* online: the block's BN is the original BN; the ``kxk`` scale is 1 over the conv's weight,
  every other scale (and the identity's) is 0.
* the quantization-aware forms (``offline_qa``, ``online_qa``) cannot: their identity is
  ``x`` itself, with nothing to set to 0, and the offline one normalises the sum once more.
  They convert with ``preserve=False`` only (fresh blocks, as ``build_model`` makes them).

The branches other than ``kxk``, and the identity, are the *new branches*
(:func:`new_branch_parameters`). :func:`load_original_state_dict` can start them at
``new_branch_start`` instead of 0 (their output BN's weight, bias still 0; online: their scale):
no longer exact at step 0, in exchange for convs that get a gradient from the first step (at 0
only that BN's weight and bias, or that scale, do).

A conv bias is folded into the BN's running mean (``mean - bias``): the BN's output is the
same in eval mode, and in train mode the batch statistics shift by the same constant, so
the running mean keeps tracking it exactly. Every BN of a block takes the host BN's eps and
momentum. :func:`load_original_state_dict` applies the same initialisation from a state
dict of the original model (trained weights loaded after the conversion).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import NothingToConvertError
from .branches import BRANCH_TYPES, ConvBN, IdentityBN, OneByOneAvg, OneByOneKxK
from .layers import NormTail, norm_tail_names, template
from .odbb import ODBB, check_branches
from .forms import QUANT_AWARE_FORMS, odbb_class
from .online import OnlineConv, OnlineODBB
from .pairs import SkippedConv, find_pairs

__all__ = [
    "ConvertedLayer",
    "Conversion",
    "convert",
    "conversion_of",
    "original_state_shapes",
    "check_original_state",
    "load_original_state_dict",
    "new_branch_parameters",
    "replace_module",
]

_BN_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_SHOWN = 5  # keys named in a mismatch message, per kind


@dataclass(frozen=True)
class ConvertedLayer:
    """One converted pair: the conv's name (now the ODBB), the BN's name (now ``nn.Identity``,
    or a :class:`~searchspace.layers.NormTail` with the children named in ``tail``), the
    constructor arguments that rebuild the original ``nn.Conv2d`` and ``nn.BatchNorm2d``, and
    for subclasses (timm's ``Conv2dSame``, ``BatchNormAct2d``) a meta-device template of the
    original module, so ``to_original`` gives the user's class back."""

    conv: str
    bn: str
    conv_args: dict[str, Any]
    bn_args: dict[str, Any]
    conv_template: nn.Module | None = None
    bn_template: nn.Module | None = None
    tail: tuple[str, ...] = ()


@dataclass
class Conversion:
    """What :func:`convert` did to a model (kept in ``model.conversion``)."""

    layers: list[ConvertedLayer] = field(default_factory=list)
    skipped: list[SkippedConv] = field(default_factory=list)
    branches: tuple[str, ...] = BRANCH_TYPES
    reparam: str = "offline"
    identity: bool = True

    @property
    def num_convs(self) -> int:
        """Every ``nn.Conv2d`` the original model had."""
        return len(self.layers) + len(self.skipped)

    def reasons(self) -> dict[str, int]:
        """Skipped convs per reason, most frequent first."""
        return dict(Counter(s.reason for s in self.skipped).most_common())

    def summary(self) -> str:
        """Converted / total convs, then every skipped conv by name, grouped by reason."""
        named: dict[str, list[str]] = {}
        for skipped in self.skipped:
            named.setdefault(skipped.reason, []).append(skipped.name or "(the model)")
        reasons = "; ".join(f"{len(named[r])} {r}: {', '.join(named[r])}" for r in self.reasons())
        return f"{len(self.layers)} of {self.num_convs} convs converted" + (f"; skipped {reasons}" if reasons else "")


def conversion_of(model: nn.Module) -> Conversion | None:
    """The :class:`Conversion` of a model made by :func:`convert`, else None."""
    found = getattr(model, "conversion", None)
    return found if isinstance(found, Conversion) else None


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the qualified ``name`` inside ``model``."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, module)


def _conv_args(conv: nn.Conv2d) -> dict[str, Any]:
    return {"in_channels": conv.in_channels, "out_channels": conv.out_channels, "kernel_size": conv.kernel_size,
            "stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation, "groups": conv.groups,
            "bias": conv.bias is not None, "padding_mode": conv.padding_mode}


def _bn_args(bn: _BatchNorm) -> dict[str, Any]:
    return {"num_features": bn.num_features, "eps": bn.eps, "momentum": bn.momentum, "affine": bn.affine,
            "track_running_stats": bn.track_running_stats}


def _output_norm(branch: nn.Module) -> nn.BatchNorm2d:
    """The BN at the end of an offline branch (its weight decides what the branch adds)."""
    if isinstance(branch, ConvBN):
        return branch.bn
    if isinstance(branch, OneByOneKxK):
        return branch.bn2
    if isinstance(branch, OneByOneAvg):
        return branch.avgbn
    if isinstance(branch, IdentityBN):
        return branch
    raise TypeError(f"no output BatchNorm known for {type(branch).__name__}")


def _new_block(conv: nn.Conv2d, bn_args: Mapping[str, Any], reparam: str, branches: tuple[str, ...],
               identity: bool) -> ODBB:
    """A fresh block with the conv's geometry (on its device, in its dtype), BNs with the host's eps/momentum."""
    with torch.device(conv.weight.device):
        block = odbb_class(reparam)(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0],
                                    conv.groups, branches=branches, identity=identity)
    block.to(dtype=conv.weight.dtype)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = bn_args["eps"], bn_args["momentum"]
    return block


def _qa_preserve_error(reparam: str) -> str:
    return (f"reparam={reparam!r} cannot start from a trained conv -> BN pair: its identity branch has no "
            f"parameter to start at 0 (module doc); allowed: reparam 'offline' or 'online', or preserve=False")


def _new_branches(block: ODBB) -> list[nn.Module]:
    """Every branch of ``block`` but ``kxk``, and its identity: what a conversion adds to the trained conv."""
    others = [module for name, module in block.branches.items() if name != "kxk"]
    return others if block.identity is None else [*others, block.identity]


def new_branch_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every ODBB's new branches (every branch but ``kxk``, and the identity), in
    module order: what a conversion adds to the trained conv. Not a block's own BN after the branch
    sum (online, QA forms): it normalises ``kxk`` too, and online it is the original BN."""
    return [p for block in model.modules() if isinstance(block, ODBB)
            for branch in _new_branches(block) for p in branch.parameters()]


@torch.no_grad()
def _init_from_pair(block: ODBB, weight: Tensor, bias: Tensor | None, bn: Mapping[str, Tensor],
                    new_branch_start: float = 0.0) -> None:
    """Make ``block`` compute ``BN(conv(x))`` of the given conv weight/bias and BN state exactly:
    the ``kxk`` branch carries them, the new branches add exactly 0 (see the module doc), or
    start at ``new_branch_start``."""
    if block.reparam in QUANT_AWARE_FORMS:
        raise ValueError(_qa_preserve_error(block.reparam))
    if "kxk" not in block.branch_names:
        raise ValueError(f"{block._describe()} has no 'kxk' branch to carry the original conv; "
                         f"allowed: a branch list with 'kxk' (it holds {block.branch_names})")
    mean = bn["running_mean"] if bias is None else bn["running_mean"] - bias.to(bn["running_mean"])
    state = {**{k: bn[k] for k in _BN_STATE}, "running_mean": mean}
    kxk = block.branches["kxk"]
    if isinstance(block, OnlineODBB):
        assert isinstance(kxk, OnlineConv)
        kxk.weight.copy_(weight)
        kxk.scale.fill_(1.0)
        target = block.bn
        for module in _new_branches(block):  # every online branch ends in a per-channel scale
            module.scale.fill_(new_branch_start)
    else:
        assert isinstance(kxk, ConvBN)
        kxk.conv.weight.copy_(weight)
        target = kxk.bn
        for module in _new_branches(block):
            norm = _output_norm(module)
            norm.weight.fill_(new_branch_start)
            norm.bias.zero_()
    for key, value in state.items():
        getattr(target, key).copy_(value)


def _check_reparam_branches(branches: Iterable[str], reparam: str) -> tuple[str, ...]:
    odbb_class(reparam)  # raises on an unknown form
    return check_branches(branches)


def convert(
    model: nn.Module,
    *,
    branches: Iterable[str] = BRANCH_TYPES,
    reparam: str = "offline",
    identity: bool = True,
    preserve: bool = True,
) -> nn.Module:
    """A copy of ``model`` whose eligible conv -> BN pairs are ODBBs with ``branches`` as candidates.

    Eligible: odd K > 1 square kernel, dilation 1, padding K//2 (or a same-padding conv subclass
    where that is exact), any stride and groups, whose output feeds a ``BatchNorm2d`` (or a BN
    subclass such as timm's ``BatchNormAct2d``) alone; see :func:`searchspace.pairs.find_pairs`.
    ``model`` is unchanged; the copy's ``conversion`` attribute is the :class:`Conversion` report
    (``conversion.summary()`` names every conv left alone and why).

    Args:
        model: any ``nn.Module`` of plain convs and BatchNorms (torchvision, timm, your own).
        branches: candidate branch types of every block (``searchspace.BRANCH_TYPES``).
        reparam: how the blocks train: ``offline``, ``online``, ``offline_qa`` or ``online_qa``.
        identity: give blocks the identity branch where stride 1 and C_in == C_out.
        preserve: the copy computes exactly what ``model`` computes, in train and eval mode, from
            its weights and BN statistics; ``False`` gives every block a fresh initialisation.

    Raises:
        NothingToConvertError: no pair converts (a ``ValueError``; the message says why).
        ValueError: ``model`` already holds ODBBs, ``preserve`` with a form or branch list that
            cannot hold the original conv.
    """
    names = _check_reparam_branches(branches, reparam)
    if any(isinstance(m, ODBB) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} already holds ODBBs (a converted model or a host of this "
                         f"project); allowed: a model of plain convs and BatchNorms")
    if preserve and reparam in QUANT_AWARE_FORMS:
        raise ValueError(_qa_preserve_error(reparam))
    if preserve and "kxk" not in names:
        raise ValueError(f"branches={list(names)} has no 'kxk': a function-preserving conversion puts the "
                         f"original conv there; allowed: a branch list with 'kxk', or preserve=False")
    plan = find_pairs(model)
    if not plan.pairs:
        found = Conversion([], plan.skipped)
        raise NothingToConvertError(f"{type(model).__name__} has no KxK conv -> BatchNorm pair to convert "
                                    f"({found.summary()})")
    converted = copy.deepcopy(model)
    layers = []
    for conv_name, bn_name in plan.pairs:
        conv = converted.get_submodule(conv_name)
        bn = converted.get_submodule(bn_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, _BatchNorm)
        tail = norm_tail_names(bn)
        assert tail is not None  # find_pairs pairs only BatchNorms whose forward is known
        layer = ConvertedLayer(conv_name, bn_name, _conv_args(conv), _bn_args(bn),
                               None if type(conv) is nn.Conv2d else template(conv),
                               None if type(bn) is nn.BatchNorm2d else template(bn), tail)
        block = _new_block(conv, layer.bn_args, reparam, names, identity)
        if preserve:
            _init_from_pair(block, conv.weight, conv.bias, {k: getattr(bn, k) for k in _BN_STATE})
        replace_module(converted, conv_name, block)
        replace_module(converted, bn_name, NormTail({n: getattr(bn, n) for n in tail}) if tail else nn.Identity())
        layers.append(layer)
    converted.conversion = Conversion(layers, plan.skipped, names, reparam, identity)
    return converted


def _require_conversion(model: nn.Module) -> Conversion:
    conversion = conversion_of(model)
    if conversion is None:
        raise ValueError(f"{type(model).__name__} was not made by searchspace.convert (no .conversion); "
                         f"allowed: a converted model")
    return conversion


def original_state_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the original model's ``state_dict``, read from the converted ``model``
    (works on the meta device)."""
    conversion = _require_conversion(model)
    prefixes = tuple(f"{layer.conv}." for layer in conversion.layers)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    for layer in conversion.layers:
        a = layer.conv_args
        shapes[f"{layer.conv}.weight"] = (a["out_channels"], a["in_channels"] // a["groups"], *a["kernel_size"])
        if a["bias"]:
            shapes[f"{layer.conv}.bias"] = (a["out_channels"],)
        for key in _BN_STATE:
            shapes[f"{layer.bn}.{key}"] = () if key == "num_batches_tracked" else (layer.bn_args["num_features"],)
    return shapes


def _listing(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return f"{shown} (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else shown


def check_original_state(model: nn.Module, shapes: Mapping[str, Sequence[int]]) -> None:
    """Raise ``ValueError`` naming the first few keys unless ``shapes`` (key -> shape of a
    state dict of the original model) matches what the converted ``model`` was made from."""
    expected = original_state_shapes(model)
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [f"{k} {tuple(shapes[k])} (model: {expected[k]})" for k in expected
             if k in shapes and tuple(shapes[k]) != expected[k]]
    problems = [f"{label} {_listing(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if keys]
    if problems:
        raise ValueError("; ".join(problems))


def load_original_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], *,
                             new_branch_start: float = 0.0) -> None:
    """Load a ``state_dict`` of the original model into the converted ``model``, in place.

    Every converted block is initialised from its conv and BN as :func:`convert` does with
    ``preserve=True`` (the model then computes what the original with these weights computes);
    everything else loads as it is.

    Args:
        model: a model made by :func:`convert` (or ``build_model`` of an external host).
        state_dict: the original model's state dict (``torch.load(path, weights_only=True)``).
        new_branch_start: where the new branches start (module doc): 0 preserves the function
            exactly; above 0 they add to the trained conv from the first step.

    Raises:
        ValueError: keys or shapes that do not match exactly (the first few are named), or a block
            without ``kxk``.
    """
    conversion = _require_conversion(model)
    check_original_state(model, {k: tuple(v.shape) for k, v in state_dict.items()})
    pair_keys: set[str] = set()
    for layer in conversion.layers:
        block = model.get_submodule(layer.conv)
        assert isinstance(block, ODBB)
        bn = {key: state_dict[f"{layer.bn}.{key}"] for key in _BN_STATE}
        bias = state_dict.get(f"{layer.conv}.bias")
        try:
            _init_from_pair(block, state_dict[f"{layer.conv}.weight"], bias, bn, new_branch_start)
        except ValueError as err:
            raise ValueError(f"layer {layer.conv}: {err}") from None
        pair_keys.update({f"{layer.conv}.weight", f"{layer.conv}.bias", *(f"{layer.bn}.{k}" for k in _BN_STATE)})
    rest = {k: v for k, v in state_dict.items() if k not in pair_keys}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    prefixes = tuple(f"{layer.conv}." for layer in conversion.layers)
    stray = [k for k in missing if not k.startswith(prefixes)] + list(unexpected)
    if stray:  # cannot happen after check_original_state; kept as an invariant
        raise RuntimeError(f"state dict keys left over after loading: {_listing(stray)}")
