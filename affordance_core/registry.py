"""The preset registry, in the manner of timm: ``register_model`` apart from ``create_model``.

A preset is a function returning an :class:`~affordance_core.config.AffordanceConfig`; the
decorator :func:`register_model` files it under its own name (see
:mod:`affordance_core.presets`). :func:`get_config` resolves a preset for a training method:
the method's :class:`~affordance_core.methods.MethodSpec` first, explicit overrides last.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .config import AffordanceConfig
from .methods import method_spec

__all__ = ["register_model", "list_models", "get_config"]

_PRESETS: dict[str, Callable[[], AffordanceConfig]] = {}


def register_model(fn: Callable[[], AffordanceConfig]) -> Callable[[], AffordanceConfig]:
    """Decorator registering a preset function under its own name."""
    _PRESETS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of the registered presets."""
    return sorted(_PRESETS)


def get_config(name: str, method: str = "selectivecl", **overrides: Any) -> AffordanceConfig:
    """Resolve a preset, apply the method's needs and defaults, then explicit overrides.

    Args:
        name: preset (see :func:`list_models`).
        method: training method (``affordance_core.methods.METHODS``).
        **overrides: any :class:`AffordanceConfig` field.

    Raises:
        ValueError: unknown preset, method or field (the message lists the valid ones).
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available: {', '.join(list_models())}")
    spec = method_spec(method)
    cfg = _PRESETS[name]()
    fields = {f.name for f in dataclasses.fields(AffordanceConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown model options {bad}; valid: {sorted(fields)}")
    return dataclasses.replace(cfg, method=method, **{**spec.config_fields(), **overrides})
