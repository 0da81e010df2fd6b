"""The block forms a host's ODBBs can take, by name (``build_model``'s and ``convert``'s ``reparam``)."""

from __future__ import annotations

from .odbb import ODBB
from .online import OnlineODBB
from .qa import OnlineQAODBB, QAODBB

__all__ = ["REPARAM_FORMS", "QUANT_AWARE_FORMS", "odbb_class"]

_FORMS: dict[str, type[ODBB]] = {"offline": ODBB, "online": OnlineODBB, "offline_qa": QAODBB,
                                 "online_qa": OnlineQAODBB}

REPARAM_FORMS: tuple[str, ...] = tuple(_FORMS)
"""How ODBBs train: ``offline`` (a module per branch, DBB/RepNAS), ``online`` (one composed
conv, OREPA), and their quantization-aware arrangements ``offline_qa`` / ``online_qa``
(no normalisation on the identity and 1x1 branches, one BN after the sum; :mod:`searchspace.qa`)."""

QUANT_AWARE_FORMS: tuple[str, ...] = ("offline_qa", "online_qa")
"""The quantization-aware forms."""


def odbb_class(reparam: str) -> type[ODBB]:
    """The block class of a form (one of ``REPARAM_FORMS``)."""
    if reparam not in _FORMS:
        raise ValueError(f"reparam={reparam!r} is invalid; allowed: {', '.join(REPARAM_FORMS)}")
    return _FORMS[reparam]
