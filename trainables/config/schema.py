"""Reusable config-validation machinery: typed dataclass loading with key paths.

One place for what every config schema in the project needs (the trial schema here,
the sweep schema in ``orchestrator``): check types from the dataclass annotations,
reject unknown keys with a did-you-mean hint, name the dotted key path in every error,
and apply ``a.b=value`` overrides. Range checks ride on field metadata (``rule``) and
cross-field checks on an optional ``validate(path)`` method of the dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from ..errors import ConfigError

__all__ = [
    "ConfigError",
    "Check",
    "rule",
    "derived",
    "did_you_mean",
    "join_path",
    "check_keys",
    "load_dataclass",
    "dump_dataclass",
    "parse_override",
    "apply_overrides",
    "flatten_overrides",
    "between",
    "at_least",
    "one_of",
]

T = TypeVar("T")
Check = Callable[[Any], "str | None"]
"""A range check: returns None when the value is fine, else what is expected."""


def join_path(path: str, key: str | int) -> str:
    """Extend a dotted key path (``trial.search`` + ``budget``, or ``[2]`` for list items)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix for the closest option, or '' when none is close."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_keys(data: Mapping[str, Any], allowed: Iterable[str], path: str) -> None:
    """Raise ConfigError for the first key of ``data`` that is not in ``allowed``."""
    allowed = list(allowed)
    for key in data:
        if key not in allowed:
            raise ConfigError(
                join_path(path, str(key)),
                f"unknown key{did_you_mean(str(key), allowed)}; allowed: {', '.join(allowed)}",
            )


def rule(check: Check) -> dict[str, Check]:
    """Field metadata carrying a range check: ``field(default=1, metadata=rule(at_least(1)))``."""
    return {"check": check}


def derived() -> dict[str, bool]:
    """Field metadata of a value validation sets, never read from the file (``load_dataclass``
    rejects it as an unknown key): ``field(default=None, metadata=derived())``."""
    return {"derived": True}


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    """Check ``low <= x <= high`` (either end optionally open)."""

    def _check(value: Any) -> str | None:
        ok_low = value > low if low_open else value >= low
        ok_high = value < high if high_open else value <= high
        if ok_low and ok_high:
            return None
        return f"expected a value in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}, got {value!r}"

    return _check


def at_least(low: float) -> Check:
    """Check ``x >= low``."""

    def _check(value: Any) -> str | None:
        return None if value >= low else f"expected a value >= {low}, got {value!r}"

    return _check


def one_of(options: Iterable[str]) -> Check:
    """Check membership, with a did-you-mean hint (for open-ended string sets)."""
    options = tuple(options)

    def _check(value: Any) -> str | None:
        if value in options:
            return None
        return f"unknown value {value!r}{did_you_mean(value, options)}; expected one of: {', '.join(options)}"

    return _check


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {float: "number", int: "integer", bool: "boolean", str: "string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _fail(path: str, tp: Any, value: Any) -> ConfigError:
    hint = ""
    if isinstance(value, str) and (tp is float or float in get_args(tp) and _is_number(value)):
        hint = " (YAML reads 1e-4 as a string; write 1.0e-4)"
    return ConfigError(path, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}{hint}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it (ints widened to float for float fields)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for arg in args:  # declared order matters: ``int | float`` keeps an int an int
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                continue
        raise _fail(path, tp, value)
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(path, f"unknown value {value!r}{did_you_mean(value, map(str, args))}; expected one of: {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise _fail(path, tp, value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _fail(path, tp, value)
        return load_dataclass(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(path, tp, value)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(path, f"expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, join_path(path, i)) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, join_path(path, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _fail(path, tp, value)
        value_tp = args[1] if args else Any
        return {str(k): _coerce(v, value_tp, join_path(path, str(k))) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _fail(path, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _fail(path, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _fail(path, tp, value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _fail(path, tp, value)
    raise TypeError(f"unsupported annotation {tp!r} at {path}")


def load_dataclass(cls: type[T], data: Mapping[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from a plain mapping, validating as described in the module doc.

    Missing keys take the field defaults. Errors raise ``ConfigError`` naming the key path.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"expected a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if f.init and not f.metadata.get("derived")}
    check_keys(data, fields, path)
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, value in data.items():
        key_path = join_path(path, name)
        coerced = _coerce(value, hints[name], key_path)
        check = fields[name].metadata.get("check")
        if check is not None and coerced is not None:
            problem = check(coerced)
            if problem:
                raise ConfigError(key_path, problem)
        values[name] = coerced
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(path)
    return obj


def dump_dataclass(obj: Any) -> Any:
    """Plain JSON/YAML-ready form of a (nested) dataclass: tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: dump_dataclass(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [dump_dataclass(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: dump_dataclass(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``KEY=VALUE``; the value is parsed as YAML (``0.5`` -> float, ``[a, b]`` -> list)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", f"expected KEY=VALUE, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(key.strip(), f"cannot parse value {raw!r}: {err}") from None
    return key.strip(), value


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a deep copy of ``data`` with dotted keys (``{"search.budget": 0.5}``) set.

    Intermediate mappings are created when missing; unknown keys are left for the schema
    to reject with a did-you-mean hint.
    """
    out = _deep_copy(data)
    for dotted, value in overrides.items():
        parts = [p for p in str(dotted).split(".") if p]
        if not parts:
            raise ConfigError(str(dotted), "empty key")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(".".join(parts[: i + 1]), f"cannot set {dotted!r}: this key holds a {type(child).__name__}, not a mapping")
            node = child
        node[parts[-1]] = _deep_copy(value)
    return out


def flatten_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Spread mapping values into dotted keys, so one sampled value can set several keys.

    ``{"search": {"method": "odbb", "budget": 0.5}}`` -> ``{"search.method": "odbb",
    "search.budget": 0.5}`` (a space "group"); scalars and lists pass through unchanged.
    """
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten_overrides({f"{key}.{k}": v for k, v in value.items()}))
        else:
            out[str(key)] = value
    return out


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deep_copy(v) for v in value]
    return value
