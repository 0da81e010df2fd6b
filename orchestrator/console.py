"""What the sweep driver and its Ray workers print: quiet by default, everything with ``--verbose``.

Quiet hides notices that need no action: Ray's "Started a local Ray instance", its
token-authentication notice and Tune's end-of-run INFO lines, Ray's per-checkpoint
"Checkpoint successfully created" (in every worker), torch's "No CUDA runtime is found"
(``torch.utils.benchmark`` on a CPU-only host), MLflow's database-creation INFO lines and
registry chatter ("Created version ..."), Optuna's "A new study created". Warnings and
errors of every library, tracebacks, error-file paths and what trials print stay visible.
What Tune itself shows (status line or table, one line per trial) is ``orchestrator.ray_tune.progress``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["configure", "is_verbose", "quiet_optuna", "quiet_worker", "worker_runtime_env", "quiet_mlflow",
           "warn_untested_versions"]


def _levels(where: str) -> dict[str, int]:
    """Logger -> level of the notices hidden in the driver or in the trial workers."""
    from .ray_tune import adapter as ray_adapter

    from . import mlflow_adapter

    quiet = {**ray_adapter.QUIET_LOGGERS, **mlflow_adapter.QUIET_LOGGERS}
    levels = {name: level for name, (place, level) in quiet.items() if place == where}
    levels["torch.utils.cpp_extension"] = logging.ERROR  # "No CUDA runtime is found, using CUDA_HOME=..."
    return levels


_verbose = True


def configure(verbose: bool) -> None:
    """Set this driver's console mode (before Ray, MLflow or torch print anything)."""
    global _verbose
    _verbose = verbose
    if not verbose:
        for name, level in _levels("driver").items():
            logging.getLogger(name).setLevel(level)


def is_verbose() -> bool:
    """Whether ``--verbose`` was given (``True`` outside the CLI: library use prints everything)."""
    return _verbose


def quiet_optuna() -> None:
    """Optuna's INFO notices off (after Optuna is imported: it sets its own level then)."""
    if not _verbose:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)


def quiet_worker() -> None:
    """Ray ``worker_process_setup_hook`` of a quiet sweep: runs first in every worker process."""
    for name, level in _levels("worker").items():
        logging.getLogger(name).setLevel(level)


def worker_runtime_env() -> dict[str, Any] | None:
    """The job ``runtime_env`` for ``ray.init``: the quiet worker setup hook (None when verbose)."""
    return None if _verbose else {"worker_process_setup_hook": f"{__name__}.quiet_worker"}


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """MLflow's event stream off while registering models (its ``print``-style "Successfully
    registered", "Created version" lines; the summary lists the versions). Errors still raise."""
    if _verbose:
        yield
        return
    from .mlflow_adapter import suppressed_event_logs

    with suppressed_event_logs():
        yield


def warn_untested_versions(prog: str) -> list[str]:
    """One line on stderr per installed Ray or MLflow outside the range this project is tested
    with (``TESTED`` of ``trainables.ray_tune.adapter`` and ``orchestrator.mlflow_adapter``); the lines."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.specifiers import SpecifierSet
    from .ray_tune import adapter as ray_adapter

    from . import mlflow_adapter

    lines = []
    for dist, tested in (("ray", ray_adapter.TESTED), ("mlflow", mlflow_adapter.TESTED)):
        try:
            installed = version(dist)
        except PackageNotFoundError:
            continue
        if installed not in SpecifierSet(tested):
            lines.append(f"{prog}: warning: {dist} {installed} is untested here; this project is tested with "
                         f"{dist}{tested} (README, \"Supported versions\")")
    for line in lines:
        print(line, file=sys.stderr)
    return lines
