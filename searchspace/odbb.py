"""The ODBB block: a KxK conv layer trained as searchable parallel branches, fused into one conv.

The search engine drives a block through two handles and nothing else:

* ``set_active(mask)``: which candidate branches exist in the forward pass. Stored in the
  persistent bool buffer ``active`` (saved in the ``state_dict``, so a checkpoint restores
  the architecture). Inactive branches are never computed and get no gradient.
* ``set_gates(gates)``: one float per candidate branch multiplying its output (the
  straight-through gate of the search, whose value is exactly the mask). Transient: not
  saved, not copied by ``copy.deepcopy``/pickle, ignored by ``fuse()``.

The identity branch (BN only) is not searchable: it is always on where it exists.

Under ``torch.compile`` the forward reads the mask from the host copy that ``set_active``
(or the last eager forward) made, as constants of the graph guarded by value: one graph per
mask, no graph break. Change masks through ``set_active`` there: an in-place write to the
buffer (``load_state_dict``) reaches a compiled forward only after ``set_active`` or an
eager forward.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .branches import BRANCH_TYPES, IDENTITY, IdentityBN, build_branch, is_depthwise
from .fusion import sum_kernels

__all__ = ["ODBB", "check_branches", "check_positive_int"]


def check_branches(branches: Iterable[str]) -> tuple[str, ...]:
    """Validate candidate branch names; return them in ``BRANCH_TYPES`` order."""
    allowed = ", ".join(BRANCH_TYPES)
    if isinstance(branches, str):
        raise ValueError(
            f"branches must be a sequence of branch names, not the string {branches!r}; allowed: {allowed}"
        )
    names = list(branches)
    for name in names:
        if name == IDENTITY:
            raise ValueError(f"branch {name!r} is not searchable (use identity=True/False); allowed: {allowed}")
        if name not in BRANCH_TYPES:
            raise ValueError(f"unknown branch {name!r}; allowed: {allowed}")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"duplicated branch {', '.join(map(repr, duplicated))}; each of {allowed} at most once")
    return tuple(n for n in BRANCH_TYPES if n in names)


def check_positive_int(name: str, value: Any) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid; allowed: an integer >= 1")


class ODBB(nn.Module):
    """Optimal Diverse Branch Block: ``identity_bn(x) + sum_{i active} gate_i * branch_i(x)``.

    The offline form: every branch runs its own convs and BatchNorms while training. The
    online form (:class:`searchspace.online.OnlineODBB`) subclasses it and overrides the
    branch modules, ``forward`` and ``fuse_kernel``; the mask, gates and checks live here.
    No activation inside. ``branch_names`` lists the candidate branches that exist, a subset
    of ``BRANCH_TYPES`` in that order: a depthwise block (``groups == in == out > 1``) has no
    ``1x1`` branch (DBB: it would duplicate the BN), even when the caller lists it.
    ``has_identity`` is true where ``identity`` was asked for, stride is 1 and
    ``in_channels == out_channels``.
    """

    reparam: ClassVar[str] = "offline"
    """How the block trains: ``offline`` (one module per branch) or ``online`` (one composed conv)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        branches: Iterable[str] = BRANCH_TYPES,
        identity: bool = True,
    ) -> None:
        super().__init__()
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels),
                           ("kernel_size", kernel_size), ("stride", stride), ("groups", groups)):
            check_positive_int(arg, value)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size} is even; allowed: odd sizes (1, 3, 5, 7, ...)")
        if in_channels % groups or out_channels % groups:
            divisors = [d for d in range(1, min(in_channels, out_channels) + 1)
                        if in_channels % d == 0 and out_channels % d == 0]
            raise ValueError(
                f"groups={groups} does not divide in_channels={in_channels} and out_channels={out_channels}; "
                f"allowed: {divisors}"
            )
        requested = branches if isinstance(branches, str) else list(branches)
        names = check_branches(requested)
        if is_depthwise(in_channels, out_channels, groups):
            names = tuple(n for n in names if n != "1x1")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups
        self.has_identity: bool = bool(identity) and stride == 1 and in_channels == out_channels
        if not names and not self.has_identity:
            raise ValueError(
                f"ODBB({in_channels}, {out_channels}, stride={stride}) would have no branch: "
                f"got branches={requested} and no identity; allowed: a non-empty subset of {BRANCH_TYPES}"
            )
        self.branch_names: tuple[str, ...] = names
        self.branches = nn.ModuleDict({n: self._make_branch(n) for n in names})
        self.identity = self._make_identity() if self.has_identity else None
        self.active: Tensor
        self.register_buffer("active", torch.ones(len(names), dtype=torch.bool))
        self._gates: Tensor | None = None
        self._active_cache: tuple[Tensor, int, tuple[bool, ...]] | None = None

    def _make_branch(self, name: str) -> nn.Module:
        """The module of candidate branch ``name`` (overridden by the online form)."""
        return build_branch(name, self.in_channels, self.out_channels, self.kernel_size, self.stride, self.groups)

    def _make_identity(self) -> nn.Module:
        """The identity branch module (overridden by the online form)."""
        return IdentityBN(self.out_channels, self.groups)

    def _active_flags(self) -> tuple[bool, ...]:
        """``active`` as Python bools, read from the device only when the buffer changed.

        Keyed on the buffer object and its in-place version counter, so ``set_active``,
        ``load_state_dict``, ``.to()`` and DDP buffer broadcasts are all honoured, while a
        training step on GPU costs no host sync per block.
        """
        cache, active = self._active_cache, self.active
        if cache is not None and torch.compiler.is_compiling():
            # Traced: the flags become constants of the graph, guarded by value (a changed mask
            # recompiles). Reading the buffer here would break the graph at every block, and its
            # version counter would recompile on every set_active even with the same mask.
            return cache[2]
        if cache is None or cache[0] is not active or cache[1] != active._version:
            cache = (active, active._version, tuple(active.tolist()))
            self._active_cache = cache
        return cache[2]

    @property
    def active_branches(self) -> tuple[str, ...]:
        """Names of the active candidate branches, in ``branch_names`` order."""
        return tuple(n for n, on in zip(self.branch_names, self._active_flags()) if on)

    def set_active(self, mask: Sequence[bool] | Tensor | None) -> None:
        """Set which candidate branches are computed; ``None`` activates all.

        Pass a CPU mask in hot loops: a device mask costs one host sync per block.
        """
        if mask is None:
            self.active.fill_(True)
            return
        values = torch.as_tensor(mask).detach().to(device="cpu").bool().flatten()
        if values.numel() != len(self.branch_names):
            raise ValueError(
                f"mask has {values.numel()} entries; allowed: {len(self.branch_names)}, one per {self.branch_names}"
            )
        self.active.copy_(values, non_blocking=True)
        # The host already knows the flags: seed the cache so forward() needs no device read.
        self._active_cache = (self.active, self.active._version, tuple(values.tolist()))

    def set_gates(self, gates: Tensor | None) -> None:
        """Per-branch multipliers for the forward pass (``[len(branch_names)]``); ``None`` clears."""
        if gates is not None and (gates.dim() != 1 or gates.numel() != len(self.branch_names)):
            raise ValueError(
                f"gates of shape {tuple(gates.shape)}; allowed: shape ({len(self.branch_names)},), "
                f"one per {self.branch_names}"
            )
        self._gates = gates

    def _no_branch_error(self) -> RuntimeError:
        return RuntimeError(
            f"{self._describe()} has no active branch and no identity; "
            f"activate at least one of {self.branch_names} with set_active()"
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.identity(x) if self.identity is not None else None
        gates = self._gates
        for i, (name, on) in enumerate(zip(self.branch_names, self._active_flags())):
            if not on:
                continue
            y = self.branches[name](x)
            if gates is not None:
                y = y * gates[i]
            out = y if out is None else out + y
        if out is None:
            raise self._no_branch_error()
        return out

    def fuse_kernel(self) -> tuple[Tensor, Tensor]:
        """(KxK kernel, bias) of the active branches plus identity, in eval semantics (T1-T6)."""
        return sum_kernels((m.fuse_kernel() for m in self._fused_modules()), self.kernel_size)

    def _fused_modules(self) -> list[nn.Module]:
        """The active branch modules and the identity: what the deploy conv is made of."""
        modules = [self.branches[n] for n in self.active_branches]
        if self.identity is not None:
            modules.append(self.identity)
        if not modules:
            raise self._no_branch_error()
        return modules

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """One KxK conv with bias (same stride and groups, padding K//2) equal to the eval block."""
        kernel, bias = self.fuse_kernel()
        k = self.kernel_size
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, k, self.stride, k // 2, groups=self.groups, bias=True,
            device=kernel.device, dtype=kernel.dtype,
        )
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)  # type: ignore[union-attr]
        return conv

    def _describe(self) -> str:
        return (f"ODBB({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, groups={self.groups})")

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups}, branches={self.branch_names}, identity={self.has_identity}")

    def __getstate__(self) -> dict[str, Any]:
        """Drop the transient gates (they may carry an autograd graph that cannot be copied)
        and the host-side mask cache (rebuilt on first use)."""
        state = super().__getstate__()
        state["_gates"] = None
        state["_active_cache"] = None
        return state
