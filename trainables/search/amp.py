"""Mixed precision of one trial: autocast around the forwards, a gradient scaler for fp16.

``runtime.precision`` picks the autocast dtype of the training forward (with its loss) and of
the supernet's evaluation forward: ``fp32`` (no autocast), ``bf16`` or ``fp16``. Weights,
gradients, optimiser state, alpha, the gates and the global top-k stay float32 (autocast
only changes the dtype in which listed ops such as convs and matmuls compute); the online
blocks compose their kernels in float32 and run only the conv in low precision
(``searchspace.online``); fusion, verification and export run in float32 after training.

fp16 needs loss scaling (its gradients underflow): :class:`MixedPrecision` scales the loss,
unscales both optimisers' gradients before the clip (which sees true gradient norms, alpha's
included), and steps the weight optimiser and alpha's together or not at all: when any
gradient is not finite neither steps and the scale backs off (``torch.amp.GradScaler``'s
rule, applied to the two optimisers as one step). The scaler's state is checkpointed, so
a resumed fp16 trial continues bit-identically. bf16 has float32's range and needs no scaler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any, ContextManager

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["PRECISIONS", "MixedPrecision"]

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""``runtime.precision`` -> autocast dtype (None: no autocast)."""


class MixedPrecision:
    """Autocast and (fp16) gradient scaling for one device; the step of both optimisers."""

    def __init__(self, precision: str, device: torch.device) -> None:
        if precision not in PRECISIONS:
            raise ConfigError("trial.runtime.precision", f"unknown precision {precision!r}; expected one of: "
                                                         f"{', '.join(PRECISIONS)}")
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("trial.runtime.precision", f"bf16 needs a GPU with bfloat16 support (Ampere or "
                                                         f"newer), {torch.cuda.get_device_name(device)} has none; "
                                                         f"use fp16")
        self.precision, self.dtype, self.device_type = precision, PRECISIONS[precision], device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def autocast(self) -> ContextManager[Any]:
        """The context of a forward pass (and its loss): autocast to ``dtype``, or nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        """Backward of ``loss``, scaled by the current loss scale under fp16."""
        self.scaler.scale(loss).backward()

    def step(self, optimizers: Sequence[torch.optim.Optimizer], parameters: Iterable[Tensor],
             max_norm: float | None) -> bool:
        """Clip the gradients of ``parameters`` (all those ``optimizers`` hold) to ``max_norm``
        (None: no clip), then step every optimizer. Returns False when the step was skipped.

        fp32/bf16: ``clip_grad_norm_`` then each ``step()``, exactly as without this class.
        fp16: unscale every optimizer's gradients first; if any gradient is not finite no
        optimizer steps (alpha does not move on a step whose weight update overflowed) and the
        loss scale backs off; the scale is updated after every step either way.
        """
        params = list(parameters)
        if not self.scaler.is_enabled():
            if max_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_norm)
            for optimizer in optimizers:
                optimizer.step()
            return True
        for optimizer in optimizers:
            self.scaler.unscale_(optimizer)
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        finite = bool(torch.isfinite(norm))  # one host sync, as GradScaler.step makes per optimizer
        if finite:
            if max_norm is not None:
                torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
            for optimizer in optimizers:
                self.scaler.step(optimizer)
        self.scaler.update()
        return finite

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (scale, growth tracker) under fp16; empty otherwise."""
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`; a checkpoint without one (written in another precision)
        starts the scaler afresh."""
        if self.scaler.is_enabled() and state:
            self.scaler.load_state_dict(state)
