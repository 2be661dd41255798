"""Training methods by name: CE, LOCATE, SelectiveCL and LoopTrans (plain and gated).

``build_method(name, model, **options)`` builds one; ``method_spec(name)`` says what it needs
from the model (:class:`~affordance_core.methods.base.MethodSpec`).
"""

from __future__ import annotations

from typing import Any

from ..model import AffordanceModel
from .base import Method, MethodSpec, StepInputs
from .locate import LocateMethod
from .looptrans import GatedLoopTransMethod, LoopTransMethod
from .selectivecl import SelectiveCLMethod

__all__ = ["METHODS", "Method", "MethodSpec", "StepInputs", "build_method", "method_spec"]

METHODS: dict[str, type[Method]] = {
    "ce": Method,
    "locate": LocateMethod,
    "selectivecl": SelectiveCLMethod,
    "looptrans": LoopTransMethod,
    "looptrans_gated": GatedLoopTransMethod,
}


def _method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


def method_spec(name: str) -> MethodSpec:
    """What method ``name`` needs from the model (ValueError listing the methods if unknown)."""
    return _method_class(name).spec


def build_method(name: str, model: AffordanceModel, **options: Any) -> Method:
    """Build a training method by name.

    Raises:
        ValueError: unknown method (message lists the valid ones) or bad options.
    """
    cls = _method_class(name)
    try:
        return cls(model, **options)
    except TypeError as exc:
        raise ValueError(f"bad options for method {name!r}: {exc}") from None
