"""Atomic checkpoint files and strict model (re)loading."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .config import AffordanceConfig
from .factory import build_backbones
from .files import atomic_write
from .methods import method_spec
from .model import AffordanceModel

__all__ = [
    "atomic_save",
    "save_model",
    "load_model",
    "read_checkpoint",
    "update_checkpoint_config",
    "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "affordance_ros/model/v1"


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`~affordance_core.files.atomic_write`.

    A crash mid-write leaves the previous file intact.
    """
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_model(
    path: str | os.PathLike, model: AffordanceModel, extra: dict[str, Any] | None = None
) -> Path:
    """Write the model's config, vocabulary and trainable heads (not the frozen backbones)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "vocabulary": list(model.vocabulary),
        "heads": {k: v.detach().cpu() for k, v in model.trainable_state_dict().items()},
        "extra": dict(extra or {}),
    }
    return atomic_save(payload, path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a model checkpoint written by :func:`save_model` (or a training state
    whose ``model`` entry is one).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, or not an affordance model checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; train one with "
            f"affordance-train (it writes RUN_DIR/model.pt)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); is it truncated?"
        ) from None
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        payload = payload["model"]
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not an affordance model checkpoint (expected format "
            f"{CHECKPOINT_FORMAT!r}); pass RUN_DIR/model.pt from affordance-train"
        )
    return payload


def _check_branch_switch(saved: dict[str, Any], fields: dict[str, Any]) -> None:
    """A trained model can map ego images with its ego or exo branch or their mean, but only
    a model trained with LoopTrans' pixel decoder has the ``pixel`` branch (and keeps it)."""
    old, new = saved.get("inference_branch", "ego"), fields.get("inference_branch")
    if new is not None and new != old and "pixel" in (old, new):
        raise ValueError(
            f"inference_branch {old!r} cannot become {new!r} after training: "
            f"the pixel decoder's weights exist only in a model trained with "
            f"inference_branch 'pixel'; choose 'ego', 'exo' or 'ego+exo' instead"
        )


def update_checkpoint_config(path: str | os.PathLike, **fields: Any) -> Path:
    """Rewrite config fields of a saved model (e.g. the inference ``calibration`` or
    ``inference_branch``), atomically.

    The heads are unchanged; the previous values are kept in ``extra["config_changes"]``.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_checkpoint`; ValueError also for a
            field that :class:`AffordanceConfig` does not have, an invalid value, or a switch
            to or from the ``pixel`` inference branch.
    """
    payload = read_checkpoint(path)
    unknown = set(fields) - set(AffordanceConfig().to_dict())
    if unknown:
        raise ValueError(f"not AffordanceConfig fields: {sorted(unknown)}")
    changes = {
        k: [payload["config"].get(k), v]
        for k, v in fields.items()
        if payload["config"].get(k) != v
    }
    if not changes:
        return Path(path)
    _check_branch_switch(payload["config"], fields)
    AffordanceConfig.from_dict({**_saved_config(payload), **fields})  # validates the values
    payload["config"] = {**payload["config"], **fields}
    payload.setdefault("extra", {}).setdefault("config_changes", []).append(changes)
    return atomic_save(payload, path)


def _saved_config(payload: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's config as current :class:`AffordanceConfig` fields: checkpoints
    written before ``contrast_heads`` existed take it from their method's spec, and their
    unused ``extra`` field is dropped."""
    saved = {k: v for k, v in payload["config"].items() if k != "extra"}
    if "contrast_heads" not in saved:
        saved["contrast_heads"] = method_spec(saved.get("method", "selectivecl")).contrast_heads
    return saved


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    weights_dir: str | os.PathLike | None = None,
    pretrained: bool = True,
    allow_download: bool = False,
    **overrides: Any,
) -> AffordanceModel:
    """Rebuild a trained model: preset backbones (from their weights) + the saved heads.

    Args:
        overrides: config fields to change at load time (e.g. ``calibration``, or
            ``inference_branch`` among ``ego``, ``exo`` and ``ego+exo``).

    Raises:
        FileNotFoundError, ValueError: see :func:`read_checkpoint`; ValueError also when the
            saved heads do not fit the preset's backbones (the message names the file).
        WeightsError: backbone weights missing or mismatched.
    """
    payload = read_checkpoint(path)
    _check_branch_switch(payload["config"], overrides)
    cfg = AffordanceConfig.from_dict({**_saved_config(payload), **overrides})
    dino, clip = build_backbones(cfg, weights_dir, pretrained, allow_download)
    model = AffordanceModel(cfg, payload["vocabulary"], dino, clip)
    try:
        model.load_trainable_state_dict(payload["heads"])
    except ValueError as exc:
        raise ValueError(f"checkpoint {path} does not fit the {cfg.name!r} model: {exc}") from None
    return model.to(device).eval()
