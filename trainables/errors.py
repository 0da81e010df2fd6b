"""The project's exception root and the one mapping of errors to command exit codes.

Every exception the project raises on purpose derives from :class:`RepnasError`. Those a
user fixes (a bad key, a missing file, a sweep name already taken) derive from
:class:`UserError`: every command (``python -m orchestrator.run|report|sync``,
``python -m trainables.cli``) prints them as one paragraph, without a traceback, and exits
with :data:`EXIT_USAGE` through :func:`run_command`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["RepnasError", "UserError", "TrialPreempted", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_PREEMPTED",
           "run_command"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
"""Exit codes of every command: success; the work failed; bad input or usage (nothing started)."""
EXIT_PREEMPTED = 128 + 15
"""Stopped by SIGTERM after checkpointing (what a shell reports for SIGTERM): ``--resume`` continues."""


class RepnasError(Exception):
    """Root of the exceptions this project raises."""


class UserError(RepnasError):
    """A problem the user fixes (config, file, flag, name): one paragraph, exit code 2."""


class TrialPreempted(RepnasError):
    """A trial stopped on a preemption notice (SIGTERM) after writing its checkpoint."""


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run a command's ``body`` and return its exit code; a :class:`UserError` is printed as
    ``<prog>: error: <message>`` on stderr and becomes :data:`EXIT_USAGE`."""
    try:
        return body()
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TrialPreempted as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return EXIT_PREEMPTED
