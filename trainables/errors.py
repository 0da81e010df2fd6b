"""Every exception the project raises on purpose, and the one mapping of errors to exit codes.

All derive from :class:`RepnasError` (defined in ``searchspace.errors``, the lowest package,
so that searchspace's own errors share the root). Those a user fixes (a bad key, a missing
file, a sweep name already taken) derive from :class:`UserError`: every command
(``python -m orchestrator.run|report|sync``, ``python -m trainables.cli``) prints them as one
paragraph, without a traceback, and exits with :data:`EXIT_USAGE` through :func:`run_command`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from searchspace.errors import FactoryError, NothingToConvertError, RepnasError

__all__ = ["RepnasError", "UserError", "ConfigError", "CheckpointError", "NothingToConvertError", "FactoryError",
           "FusionMismatchError", "NonFiniteLossError", "RankDivergenceError", "SweepLockedError",
           "SweepExistsError", "NothingToResumeError", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED",
           "run_command"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
"""Exit codes of every command: success; the work failed; bad input or usage (nothing started)."""
EXIT_INTERRUPTED = 130
"""Stopped by Ctrl-C (SIGINT) or SIGTERM: 128 + SIGINT, as shells report a Ctrl-C; what was
saved stays, and ``--resume`` continues."""


class UserError(RepnasError):
    """A problem the user fixes (config, file, flag, name): one paragraph, exit code 2."""


class ConfigError(UserError, ValueError):
    """A user error in a config: ``path`` is the dotted key, ``message`` what is expected."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str]]:
        """Pickle by (path, message): Ray ships a trial's exception to the driver this way."""
        return type(self), (self.path, self.message)


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated or corrupt."""


class SweepLockedError(UserError):
    """Another driver is running this sweep."""


class SweepExistsError(UserError):
    """The sweep name is taken in this storage path and ``--resume`` was not given."""


class NothingToResumeError(UserError):
    """``--resume`` was given but there is no Tune experiment to restore."""


class FusionMismatchError(RepnasError, RuntimeError):
    """The fused model does not compute what the supernet computes."""


class RankDivergenceError(RepnasError, RuntimeError):
    """DDP ranks used different masks or alpha, or hold different weights."""


class NonFiniteLossError(RepnasError, ArithmeticError):
    """The training (or validation) loss became NaN or infinite."""

    def __init__(self, value: float, epoch: int, step: int | None = None, what: str = "training loss") -> None:
        self.value, self.epoch, self.step, self.what = value, epoch, step, what
        where = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
        super().__init__(f"{what} became {value} at {where}; the trial diverged (lower optim.lr or "
                         "optim.weight_decay, or set optim.grad_clip); retrying would fail the same way")

    def __reduce__(self) -> tuple[type[NonFiniteLossError], tuple[float, int, int | None, str]]:
        """Pickle by the constructor's arguments: Ray ships a trial's exception to the driver this way."""
        return type(self), (self.value, self.epoch, self.step, self.what)


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run a command's ``body`` and return its exit code; a :class:`UserError` is printed as
    ``<prog>: error: <message>`` on stderr and becomes :data:`EXIT_USAGE`."""
    try:
        return body()
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
