"""Find the conv -> BatchNorm pairs of any ``nn.Module`` that can become ODBBs (torch.fx).

A pair is a ``nn.Conv2d`` whose output goes only into a ``nn.BatchNorm2d`` that takes
nothing else, each module called once in the forward pass and registered under one name.
Subclasses of either pair where the result is exact (``searchspace.layers``: timm's
``BatchNormAct2d`` and ``Conv2dSame`` at stride 1); every conv and BatchNorm, subclass or
not, is a leaf of the trace, so a subclass's own operations never look like extra users.
Who feeds whom comes from ``torch.fx`` symbolic tracing, as torchvision's own feature
extraction does: attribute calls (``self.bn1(self.conv1(x))``, ResNet's blocks) and
``Conv2dNormActivation`` sequences look the same in the graph. A submodule whose forward
``torch.fx`` cannot trace (data-dependent control flow) becomes a leaf of its parent's
graph and is traced on its own, with the number of times its parent calls it; a model
whose own forward does not trace converts nothing (every conv is listed as skipped).

Every conv that is not paired is listed with the reason (:class:`SkippedConv`). A
parameter read outside its module's call shows in the graph and stops the pairing; a buffer
read directly is a constant to torch.fx and is recognised only as the buffer or a view of it.
"""

from __future__ import annotations

import inspect
import types
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .layers import norm_tail_names, subclass_conv_problem

__all__ = ["SkippedConv", "PairPlan", "find_pairs", "conv_geometry_problem"]

_MAX_RETRACES = 64  # leaves added one failing module at a time
_SHOWN_LEAVES = 3


@dataclass(frozen=True)
class SkippedConv:
    """A conv left as it is: its qualified name, a short reason (for tables) and the details."""

    name: str
    reason: str
    detail: str = ""


@dataclass
class PairPlan:
    """What :func:`find_pairs` found: ``(conv name, bn name)`` pairs in module order, the skipped convs."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[SkippedConv] = field(default_factory=list)

    @property
    def num_convs(self) -> int:
        """Every ``nn.Conv2d`` of the model (paired or not)."""
        return len(self.pairs) + len(self.skipped)


def conv_geometry_problem(conv: nn.Conv2d) -> tuple[str, str] | None:
    """``(reason, detail)`` if ``conv`` cannot be an ODBB's KxK conv, else None.

    Eligible: a square odd kernel K > 1, the same stride in both directions, dilation 1,
    zero padding of K//2 on every side (or ``"same"``), any groups; a ``nn.Conv2d``
    subclass when its forward is exactly such a conv (:func:`searchspace.layers.subclass_conv_problem`:
    timm's ``Conv2dSame`` at stride 1).
    """
    kh, kw = conv.kernel_size
    if kh != kw:
        return "non-square kernel", f"kernel {kh}x{kw}"
    if kh == 1:
        return "1x1 kernel", "kernel 1x1"
    if kh % 2 == 0:
        return "even kernel", f"kernel {kh}x{kw}"
    if conv.stride[0] != conv.stride[1]:
        return "non-square stride", f"stride {conv.stride}"
    if conv.dilation != (1, 1):
        return "dilation", f"dilation {conv.dilation}"
    if type(conv) is not nn.Conv2d:
        return subclass_conv_problem(conv)
    if conv.padding != "same" and tuple(conv.padding) != (kh // 2, kw // 2):  # type: ignore[arg-type]
        return "padding not K//2", f"padding {conv.padding} for kernel {kh}x{kw}"
    if conv.padding_mode != "zeros":
        return "padding mode", f"padding_mode={conv.padding_mode!r}"
    return None


def _bn_problem(bn: _BatchNorm) -> str | None:
    if not isinstance(bn, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return f"a {type(bn).__name__}, not a 2d BatchNorm"
    if norm_tail_names(bn) is None:
        return (f"a {type(bn).__name__} with a forward of its own (what it does besides normalising is unknown; "
                f"known: nn.BatchNorm2d and subclasses that keep its forward, timm's BatchNormAct2d, SyncBatchNormAct)")
    if not bn.affine or not bn.track_running_stats:
        return "a BatchNorm2d without affine parameters or running statistics"
    return None


class _LeafTracer(fx.Tracer):
    """``torch.fx`` tracer that treats ``leaves`` as leaf modules and remembers the innermost
    module whose forward raised while tracing (the next leaf to try)."""

    def __init__(self, leaves: set[int]) -> None:
        super().__init__()
        self.leaves = leaves
        self.failed: nn.Module | None = None
        self.installed: set[int] = set()

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        self.installed = {id(m) for m in root.modules()} if isinstance(root, nn.Module) else set()
        own = getattr(root, "__dict__", {}).get("forward")
        if not isinstance(own, types.MethodType) or own.__self__ is not root:
            return super().trace(root, concrete_args)
        # a forward set on the instance (pretrainedmodels' ``model.forward = MethodType(...)``) is
        # what the model runs; torch.fx traces the class's, so trace it through a subclass for now
        cls = root.__class__
        try:
            root.__class__ = type(cls.__name__, (cls,), {"forward": own.__func__, "__module__": cls.__module__})
        except TypeError:  # a class that cannot be subclassed or swapped: its own forward is traced
            return super().trace(root, concrete_args)
        try:
            return super().trace(root, concrete_args)
        finally:
            root.__class__ = cls

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (id(m) in self.leaves or isinstance(m, (nn.Conv2d, _BatchNorm))  # subclasses too (timm's)
                or super().is_leaf_module(m, module_qualified_name))

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if id(m) not in self.installed:  # built inside forward (``nn.ZeroPad2d(p)(x)``): traced through,
            return forward(*args, **kwargs)  # as its functional body (it has no name a graph could call)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed is None:
                self.failed = m
            raise


def _concrete_args(root: nn.Module) -> dict[str, Any]:
    """Forward's optional arguments at their defaults (traced as constants, not as inputs)."""
    params = list(inspect.signature(root.forward).parameters.values())[1:]
    return {p.name: p.default for p in params
            if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _trace(root: nn.Module) -> tuple[fx.Graph | None, set[int], dict[str, Any], str]:
    """``(graph, leaves added, constants, error)``: ``root``'s graph with failing submodules as
    leaves, or ``(None, ..., error)`` when ``root``'s own forward does not trace. ``constants``:
    the tensors torch.fx stored on ``root`` for the graph (buffers read directly); taken off
    ``root`` again, so tracing leaves the user's model as it was."""
    leaves: set[int] = set()
    order: list[int] = []  # the leaves in the order they failed
    before = set(root.__dict__)
    try:
        for _ in range(_MAX_RETRACES):
            tracer = _LeafTracer(leaves)
            try:
                graph = tracer.trace(root, concrete_args=_concrete_args(root) or None)
                return graph, leaves, {k: root.__dict__[k] for k in set(root.__dict__) - before}, ""
            except Exception as err:  # noqa: BLE001 - any tracing failure makes a leaf or ends the search
                error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
                if tracer.failed is None or tracer.failed is root or id(tracer.failed) in leaves:
                    return None, leaves, {}, error
                leaves.add(id(tracer.failed))
                order.append(id(tracer.failed))
        named = {id(m): n for n, m in root.named_modules()}
        shown = ", ".join(named.get(i, "?") for i in order[:_SHOWN_LEAVES])
        return None, leaves, {}, (f"more than {_MAX_RETRACES} submodules that torch.fx cannot trace "
                                  f"(the first: {shown}; last error {error})")
    finally:
        for key in set(root.__dict__) - before:
            del root.__dict__[key]


@dataclass
class _Walk:
    """Module calls and graph edges gathered over the root graph and its leaves' graphs."""

    calls: Counter[str] = field(default_factory=Counter)
    nodes: dict[str, fx.Node] = field(default_factory=dict)  # module name -> its (last) call node
    attrs: set[str] = field(default_factory=set)  # parameters read directly (get_attr)
    untraced: dict[str, str] = field(default_factory=dict)  # module name -> tracing error


def _walk(module: nn.Module, prefix: str, times: int, walk: _Walk) -> None:
    """Add ``module``'s graph (called ``times`` times by its parent) to ``walk``; recurse into leaves."""
    graph, leaves, constants, error = _trace(module)
    if graph is None:
        walk.untraced[prefix] = error
        return
    named = dict(module.named_modules())
    tensors = {id(t): n for n, t in (*module.named_parameters(), *module.named_buffers())}
    leaf_calls: Counter[str] = Counter()
    for node in graph.nodes:
        target = str(node.target)
        if node.op == "get_attr":  # a parameter, or a buffer (or a view of one) fx stored as a constant
            constant = constants.get(target)
            base = constant._base if isinstance(constant, Tensor) and constant._base is not None else constant
            target = tensors.get(id(base), target)
        full = f"{prefix}.{target}" if prefix else target
        if node.op == "get_attr":
            walk.attrs.add(full)
        elif node.op == "call_module":
            walk.calls[full] += times
            walk.nodes[full] = node
            if id(named[target]) in leaves:
                leaf_calls[target] += 1
    for name, count in leaf_calls.items():
        _walk(named[name], f"{prefix}.{name}" if prefix else name, times * count, walk)


def _owner(name: str, untraced: dict[str, str]) -> str | None:
    """The closest enclosing module of ``name`` that did not trace (the model itself is ``""``)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        candidate = ".".join(parts[:i])
        if candidate in untraced:
            return candidate
    return None


def find_pairs(model: nn.Module) -> PairPlan:
    """The conv -> BN pairs of ``model`` that can become ODBBs, and every other conv with its reason.

    Traces ``model`` in its current mode (``train()``/``eval()`` can change which modules
    a forward calls); nothing runs on data.
    """
    walk = _Walk()
    _walk(model, "", 1, walk)
    names: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(name)
    modules = dict(model.named_modules())
    plan = PairPlan()
    for name, conv in modules.items():
        if not isinstance(conv, nn.Conv2d):
            continue
        found = _pair_problem(name, conv, modules, names, walk)
        if isinstance(found, SkippedConv):
            plan.skipped.append(found)
        else:
            plan.pairs.append((name, found))
    return plan


def _pair_problem(name: str, conv: nn.Conv2d, modules: dict[str, nn.Module], names: dict[int, list[str]],
                  walk: _Walk) -> SkippedConv | str:
    """The BN that ``conv`` pairs with, or why it does not."""
    geometry = conv_geometry_problem(conv)
    if geometry is not None:
        return SkippedConv(name, *geometry)
    if len(names[id(conv)]) > 1:
        return SkippedConv(name, "shared module", f"registered as {', '.join(names[id(conv)])}")
    if conv._forward_hooks or conv._forward_pre_hooks:
        return SkippedConv(name, "has hooks", "forward hooks on the conv would be dropped")
    owner = _owner(name, walk.untraced)
    if owner is not None and name not in walk.calls:
        where = f"inside {owner}" if owner else "the model's forward"
        return SkippedConv(name, "not traceable", f"torch.fx cannot trace {where}: {walk.untraced[owner]}")
    calls = walk.calls.get(name, 0)
    if calls == 0:
        return SkippedConv(name, "not called", "not called in the traced forward pass")
    if calls > 1:
        return SkippedConv(name, "called more than once", f"called {calls} times")
    if any(a.startswith(f"{name}.") for a in walk.attrs):
        return SkippedConv(name, "weights read elsewhere", "its parameters are read outside its own call")
    node = walk.nodes[name]
    users = list(node.users)
    if len(users) != 1:
        return SkippedConv(name, "output used elsewhere",
                           f"its output feeds {len(users)} operations: {', '.join(_op_name(u) for u in users)}")
    user = users[0]
    bn_name = _full_target(user, node, name) if user.op == "call_module" else ""
    bn = modules.get(bn_name) if bn_name else None
    if not isinstance(bn, _BatchNorm):
        goes_to = type(bn).__name__ if bn_name else getattr(user.target, "__name__", str(user.target))
        return SkippedConv(name, "no BatchNorm after it", f"its output goes to {goes_to}")
    problem = _bn_problem(bn)
    if problem is not None:
        return SkippedConv(name, "BatchNorm unsupported", f"{bn_name} is {problem}")
    if len(names[id(bn)]) > 1 or walk.calls[bn_name] > 1:
        return SkippedConv(name, "BatchNorm shared", f"{bn_name} is registered or called more than once")
    if len(user.args) != 1 or user.kwargs:
        return SkippedConv(name, "BatchNorm has other inputs", f"{bn_name} also takes other inputs")
    if any(a.startswith(f"{bn_name}.") for a in walk.attrs):
        return SkippedConv(name, "weights read elsewhere", f"parameters of {bn_name} are read outside its call")
    if bn._forward_hooks or bn._forward_pre_hooks:
        return SkippedConv(name, "has hooks", f"forward hooks on {bn_name} would be dropped")
    return bn_name


def _op_name(node: fx.Node) -> str:
    """What a graph node does, for a reason: the module's name or the function's."""
    return str(node.target) if node.op in ("call_module", "call_method") else getattr(node.target, "__name__", str(node.target))


def _full_target(user: fx.Node, node: fx.Node, conv_name: str) -> str:
    """The qualified name of ``user``'s module: the same graph (and prefix) as the conv's node."""
    prefix = conv_name[: len(conv_name) - len(str(node.target))].rstrip(".")
    return f"{prefix}.{user.target}" if prefix else str(user.target)
