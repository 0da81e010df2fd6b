"""Timing spans for ``benchmarks/sweep_overhead.py --breakdown`` (not part of the packages).

On ``PYTHONPATH`` with ``REPNAS_TIMING=<file>`` set, every Python process of the run (the
plain runner, the driver, the Ray workers) wraps the functions in ``SPANS`` when their
module is imported and appends one JSON line per call: pid, function, start, duration.
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

SPANS: dict[str, tuple[str, ...]] = {
    "orchestrator.ray_tune.cluster": ("connect",),
    "orchestrator.tracking.parent_run": ("start_parent_run", "finish_parent_run"),
    "orchestrator.tracking.child_run": ("MLflowTrialHook.on_start", "MLflowTrialHook.on_epoch", "MLflowTrialHook.on_end"),
    "orchestrator.tracking.fused_model": ("log_fused_model",),
    "orchestrator.tracking.from_ray": ("sync_mlflow",),
    "orchestrator.results.sweep_summary": ("summarize", "print_summary"),
    "trainables.run.trial": ("run_trial",),
    "trainables.run.checkpoint": ("save_checkpoint",),
    "trainables.run.export": ("export_model", "measure_latency", "_write_formats"),
    "ray.tune": ("report",),
    "ray.tune.tuner": ("Tuner.fit",),
}
_OUT = os.environ.get("REPNAS_TIMING")
_LOCK = threading.Lock()


def _emit(name: str, start: float, seconds: float) -> None:
    with _LOCK, open(str(_OUT), "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[:1], "f": name, "s": start, "d": seconds}) + "\n")


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            _emit(name, start, time.time() - start)

    return wrapper


class _Spans(importlib.abc.MetaPathFinder):
    """Wraps the listed functions of a module right after it is executed."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name not in SPANS:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None and spec.loader is not None:
                execute = spec.loader.exec_module

                def exec_module(module: ModuleType, execute: Callable[[ModuleType], None] = execute) -> None:
                    execute(module)
                    for qualname in SPANS[name]:
                        owner_name, _, attr = qualname.rpartition(".")
                        owner = getattr(module, owner_name) if owner_name else module
                        setattr(owner, attr, _timed(f"{name}.{qualname}", getattr(owner, attr)))

                spec.loader.exec_module = exec_module  # type: ignore[method-assign]
                return spec
        return None


if _OUT:
    sys.meta_path.insert(0, _Spans())
    _emit("process", time.time(), 0.0)
    atexit.register(lambda: _emit("exit", time.time(), 0.0))  # registered first, so it runs last
