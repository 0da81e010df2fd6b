"""Reading ``model.weights`` in the formats users have, or refusing it with the exact fix.

Accepted: a ``state_dict`` (``torch.save(model.state_dict(), path)``); a checkpoint dict that
holds one under ``state_dict``, ``model`` or ``model_state_dict`` (the other entries, e.g.
``epoch`` or ``optimizer``, are ignored); keys prefixed ``module.`` (saved from
``DataParallel`` / ``DistributedDataParallel``) or ``_orig_mod.`` (``torch.compile``); a
``.safetensors`` file where the ``safetensors`` package is installed. Each of these but the
plain ``state_dict`` comes with one line saying what was taken. Files are read with
``torch.load(weights_only=True)``: a pickled whole model is refused, in one line, with the fix.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["StateDict", "read_state_dict", "WEIGHTS_KEY", "SAVE_HINT"]

WEIGHTS_KEY = "trial.model.weights"
SAVE_HINT = "torch.save(model.state_dict(), path)"
_NESTED = ("state_dict", "model", "model_state_dict")  # where checkpoints keep the model's state_dict
_PREFIXES = {"module.": "saved from DataParallel/DistributedDataParallel", "_orig_mod.": "saved from torch.compile"}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TORCH_MAGIC = (b"PK", b"\x80")  # torch.save's zip archive; its legacy format (a pickle, protocol 2+)
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


@dataclass(frozen=True)
class StateDict:
    """A weights file's tensors by key, and what was taken when the file was not a plain state_dict."""

    tensors: dict[str, torch.Tensor]
    taken: str | None = None


def _first_line(err: BaseException) -> str:
    """An exception's first sentence, terminal colour codes removed (torch's are long and coloured)."""
    lines = [line.strip() for line in _ANSI.sub("", str(err)).splitlines() if line.strip()]
    first = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return f"{type(err).__name__}: {first}".rstrip(": ")


def _is_safetensors(path: Path) -> bool:
    """The safetensors layout: an 8-byte little-endian header length, then a JSON header."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 100_000_000


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ConfigError(WEIGHTS_KEY, f"{path} is a safetensors file and the safetensors package is not installed: "
                                       f"pip install safetensors (or save the weights with {SAVE_HINT})") from None
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as err:  # noqa: BLE001 - truncated or not safetensors after all
        raise ConfigError(WEIGHTS_KEY, f"cannot read {path} as safetensors ({_first_line(err)}); "
                                       f"save the weights again with safetensors.torch.save_file or {SAVE_HINT}") from None


def _torch_load(path: Path, mmap: bool) -> Any:
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy format: no mmap
    except pickle.UnpicklingError as err:
        found = _GLOBAL.search(str(err))
        what = f"a pickled {found.group(1)}" if found else "pickled Python objects"
        raise ConfigError(WEIGHTS_KEY, f"{path} holds {what}, not a state_dict of tensors (it is read with "
                                       f"torch.load(weights_only=True), which runs no pickled code); save the "
                                       f"weights instead: {SAVE_HINT}") from None
    except Exception as err:  # noqa: BLE001 - truncated, text, another format...
        raise ConfigError(WEIGHTS_KEY, f"cannot read {path}: not a complete file written by torch.save "
                                       f"({_first_line(err)}); save the weights with {SAVE_HINT}") from None


def _tensors_only(state: Mapping[Any, Any]) -> bool:
    return bool(state) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


def _unwrap(path: Path, loaded: Any) -> StateDict:
    """The state_dict inside what ``torch.load`` returned, with a note of what was taken."""
    if not isinstance(loaded, Mapping):
        raise ConfigError(WEIGHTS_KEY, f"{path} holds a {type(loaded).__name__}, not a state_dict; "
                                       f"save the weights with {SAVE_HINT}")
    if not loaded:
        raise ConfigError(WEIGHTS_KEY, f"{path} holds an empty dict; save the weights with {SAVE_HINT}")
    if _tensors_only(loaded):
        return StateDict(dict(loaded))
    for key in _NESTED:
        inner = loaded.get(key)
        if isinstance(inner, Mapping) and _tensors_only(inner):
            others = [str(k) for k in loaded if k != key]
            return StateDict(dict(inner), f"took checkpoint[{key!r}] ({len(inner)} tensors"
                                          + (f"; ignored: {', '.join(others[:5])}" if others else "") + ")")
    bad = [str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor)][:5]
    raise ConfigError(WEIGHTS_KEY, f"{path} holds a dict whose entries {', '.join(bad)} are not tensors and no "
                                   f"state_dict under {', '.join(map(repr, _NESTED))}; save the weights with {SAVE_HINT}")


def _strip_prefix(state: StateDict) -> StateDict:
    """Keys without a wrapper's prefix that every key carries."""
    for prefix, why in _PREFIXES.items():
        if all(k.startswith(prefix) for k in state.tensors):
            tensors = {k.removeprefix(prefix): v for k, v in state.tensors.items()}
            note = f"removed the {prefix!r} prefix of every key ({why})"
            return StateDict(tensors, f"{state.taken}; {note}" if state.taken else note)
    return state


def read_state_dict(path: str | Path, mmap: bool = False) -> StateDict:
    """The state_dict in ``path`` (``mmap``: tensors mapped, not read); ``ConfigError`` naming
    ``trial.model.weights`` with the fix when the file holds something else."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(WEIGHTS_KEY, f"file not found: {path}")
    if path.stat().st_size == 0:
        raise ConfigError(WEIGHTS_KEY, f"{path} is empty (0 bytes); save the weights with {SAVE_HINT}")
    if _is_safetensors(path):
        loaded: Any = _load_safetensors(path)
    else:
        with open(path, "rb") as f:
            head = f.read(16)
        if not head.startswith(_TORCH_MAGIC):
            raise ConfigError(WEIGHTS_KEY, f"{path} is not a file torch.save writes (nor safetensors): it starts "
                                           f"with {head!r}; save the weights with {SAVE_HINT}")
        loaded = _torch_load(path, mmap)
    state = _strip_prefix(_unwrap(path, loaded))
    if isinstance(loaded, Mapping) and _is_safetensors(path):
        state = StateDict(state.tensors, "read as safetensors" + (f"; {state.taken}" if state.taken else ""))
    return state
