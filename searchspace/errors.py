"""The project's exception root, in its lowest package so that every package can derive from it.

``searchspace`` imports nothing above it, so the root lives here; ``trainables.errors``
re-exports it beside every other exception the project raises on purpose.
"""

from __future__ import annotations

__all__ = ["RepnasError", "NothingToConvertError", "FactoryError"]


class RepnasError(Exception):
    """Root of the exceptions this project raises."""


class NothingToConvertError(RepnasError, ValueError):
    """The model has no conv -> BN pair that can become an ODBB (the message lists why)."""


class FactoryError(RepnasError, ValueError):
    """A user's model factory failed while building (it raised, or returned no ``nn.Module``): the
    factory is to blame, not the options it was given (those are checked against its signature first)."""
