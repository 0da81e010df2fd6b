"""Conv and BatchNorm subclasses of other libraries (timm's, a user's) as parts of a pair.

* A BatchNorm subclass pairs when what it does after normalising is known: nothing (it
  inherits ``forward``), or timm's norm + act layers (``BatchNormAct2d``,
  ``SyncBatchNormAct``: batch norm, then ``drop``, then ``act``). That tail stays after the
  converted block as a :class:`NormTail` holding the same child modules under the same
  names (their state-dict keys do not move).
* A ``nn.Conv2d`` subclass pairs when its forward is exactly a conv padded by K//2 on every
  side, checked on probe inputs of odd and even size (float64, random weights on the CPU):
  timm's ``Conv2dSame`` at stride 1 with odd K (its TF "same" padding is then K//2 on each
  side), a subclass that adds nothing to ``forward``. "Same" padding at stride > 1 is
  asymmetric (timm's ``Conv2dSame``: on even input sizes; efficientnet-pytorch's
  ``Conv2dStaticSamePadding``: fixed for one image size) and is refused with that reason, as is
  weight standardisation (timm's ``StdConv2d``: ``conv subclass``).
* :func:`template` keeps a subclass's class and hyper-parameters (on the meta device) so
  ``to_original`` gives the user's own module classes back.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NormTail", "norm_tail_names", "subclass_conv_problem", "template"]

_PLAIN_NORM_FORWARDS = (nn.modules.batchnorm._BatchNorm.forward, nn.BatchNorm2d.forward, nn.SyncBatchNorm.forward)
_TIMM_NORM_ACT = ("BatchNormAct2d", "SyncBatchNormAct")  # in timm.layers.norm_act: BN, then drop, then act
_TIMM_TAIL = ("drop", "act")
_PROBE_TOLERANCE = 1e-12  # relative, float64: a different summation order, not a different function


def _timm_norm_act_forwards() -> tuple[Callable[..., Tensor], ...]:
    """The forwards of timm's norm + act BatchNorms (none when timm was never imported: no
    module can then be one of its classes)."""
    norm_act = sys.modules.get("timm.layers.norm_act")
    return tuple(getattr(norm_act, n).forward for n in _TIMM_NORM_ACT if hasattr(norm_act, n))


def norm_tail_names(bn: nn.Module) -> tuple[str, ...] | None:
    """The children that ``bn`` (a BatchNorm or subclass) applies after normalising, in order:
    ``()`` for a plain BatchNorm, ``("drop", "act")`` for timm's norm + act layers, None when
    its ``forward`` is its own (what it does besides normalising is unknown)."""
    forward = type(bn).forward
    if forward in _PLAIN_NORM_FORWARDS:
        return ()
    if forward in _timm_norm_act_forwards():
        return tuple(n for n in _TIMM_TAIL if isinstance(getattr(bn, n, None), nn.Module))
    return None


class NormTail(nn.Module):
    """What a BatchNorm subclass does after normalising (timm: ``drop``, then ``act``), kept at
    the BN's place after conversion: the same modules, applied in the same order."""

    def __init__(self, parts: dict[str, nn.Module]) -> None:
        super().__init__()
        for name, module in parts.items():
            self.add_module(name, module)

    def forward(self, x: Tensor) -> Tensor:
        for module in self.children():
            x = module(x)
        return x


def template(module: nn.Module) -> nn.Module:
    """A copy of ``module`` on the meta device: its class and hyper-parameters, no memory."""
    return copy.deepcopy(module).to(device="meta")


def _probe_sizes(kernel: int) -> tuple[int, int]:
    odd = max(7, 2 * kernel + 1)
    return odd, odd + 1


@torch.no_grad()
def subclass_conv_problem(conv: nn.Conv2d) -> tuple[str, str] | None:
    """``(reason, detail)`` unless the ``nn.Conv2d`` subclass ``conv`` computes exactly a conv of its
    weight padded by K//2 on every side (square odd K, dilation 1 already checked)."""
    name = type(conv).__name__
    k, stride = conv.kernel_size[0], conv.stride[0]
    probe = copy.deepcopy(conv)
    probe = (probe.to_empty(device="cpu") if any(t.is_meta for t in probe.state_dict().values()) else probe)
    probe = probe.to(device="cpu", dtype=torch.float64).train(conv.training)
    g = torch.Generator().manual_seed(0)
    for p in probe.parameters():
        p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    odd, even = _probe_sizes(k)
    for size in (odd, even):
        x = torch.randn(2, conv.in_channels, size, size, generator=g, dtype=torch.float64)
        try:
            got = probe(x)
        except Exception as err:  # noqa: BLE001 - a forward that needs other inputs cannot be checked
            return "conv subclass", f"{name}'s forward failed on a {size}x{size} probe: {type(err).__name__}: {err}"
        want = F.conv2d(x, probe.weight, probe.bias, probe.stride, k // 2, 1, probe.groups)
        if isinstance(got, Tensor) and got.shape == want.shape and _relative(got, want) <= _PROBE_TOLERANCE:
            continue
        shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
        what = (f"output {shape} instead of {tuple(want.shape)}" if shape != tuple(want.shape)
                else f"relative error {_relative(got, want):.1e}")
        detail = f"{name} on a {size}x{size} probe differs from a conv padded by {k // 2} on every side ({what})"
        pads = _same_padding(probe, x, got) if stride > 1 and isinstance(got, Tensor) else None
        if pads is None:
            return "conv subclass", detail
        how = ("depends on the input size" if size == even else  # the odd probe was padded by K//2
               f"is {pads[0]} before and {pads[1]} after on each side (a fixed 'same' padding)")
        return "same padding at stride > 1", f"{detail}: its padding at stride {stride} {how}"
    return None


def _relative(got: Tensor, want: Tensor) -> float:
    return (got - want).abs().max().item() / max(1.0, want.abs().max().item())


def _same_padding(probe: nn.Conv2d, x: Tensor, got: Tensor) -> tuple[int, int] | None:
    """``(before, after)``: the zero padding of each spatial side (0..K-1) with which a plain conv
    of ``probe``'s weight gives ``got`` on ``x`` (None: no padding does; the subclass computes
    something else). The largest that does: at stride > 1 the last rows may never be read."""
    k = probe.kernel_size[0]
    for total in range(2 * k - 2, -1, -1):
        for before in range(max(0, total - k + 1), min(total, k - 1) + 1):
            after = total - before
            padded = F.pad(x, (before, after, before, after))
            want = F.conv2d(padded, probe.weight, probe.bias, probe.stride, 0, 1, probe.groups)
            if want.shape == got.shape and _relative(got, want) <= _PROBE_TOLERANCE:
                return before, after
    return None
