"""What the sweep driver and its Ray workers print: quiet by default, everything with ``--verbose``.

Quiet hides notices that need no action: Ray's "Started a local Ray instance", its
token-authentication notice and Tune's end-of-run INFO lines, Ray's per-checkpoint
"Checkpoint successfully created" (in every worker), torch's "No CUDA runtime is found"
(``torch.utils.benchmark`` on a CPU-only host), MLflow's database-creation INFO lines and
registry chatter ("Created version ..."), Optuna's "A new study created". Warnings and
errors of every library, tracebacks, error-file paths and what trials print stay visible.
What Tune itself shows (status line or table, one line per trial) is ``orchestrator.progress``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["configure", "is_verbose", "quiet_optuna", "quiet_worker", "worker_runtime_env", "quiet_mlflow"]

DRIVER_LEVELS: Mapping[str, int] = {
    "ray._private.worker": logging.WARNING,  # "Started a local Ray instance."
    "ray._private.authentication.authentication_token_setup": logging.ERROR,  # token auth on by default
    "ray.tune.tune": logging.WARNING,  # "Wrote the latest version of all result files", "Total run time"
    "mlflow.store.db.utils": logging.WARNING,  # "Creating initial MLflow database tables..."
    "torch.utils.cpp_extension": logging.ERROR,  # "No CUDA runtime is found, using CUDA_HOME=..."
}
WORKER_LEVELS: Mapping[str, int] = {
    "ray.train": logging.WARNING,  # "Checkpoint successfully created at: ..." once per epoch
    "torch.utils.cpp_extension": logging.ERROR,
}
_verbose = True


def configure(verbose: bool) -> None:
    """Set this driver's console mode (before Ray, MLflow or torch print anything)."""
    global _verbose
    _verbose = verbose
    if not verbose:
        for name, level in DRIVER_LEVELS.items():
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
    for name, level in WORKER_LEVELS.items():
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
    from mlflow.utils.logging_utils import disable_logging, enable_logging

    disable_logging()
    try:
        yield
    finally:
        enable_logging()
