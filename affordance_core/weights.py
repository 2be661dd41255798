"""Offline-first resolution and strict loading of backbone weights.

Order of sources: an explicit file path, then the weights directory (``--weights-dir``,
the ``weights_dir`` node parameter, or ``$AFFORDANCE_WEIGHTS_DIR``), then the torch hub cache,
then (only when ``allow_download``) the upstream hub. A file that is missing, unreadable or
whose keys or shapes do not match the architecture is an error naming the file and how to get
it; nothing is ever loaded with silently ignored keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["WeightsError", "find_weights", "read_state_dict", "load_strict", "weight_dirs"]


class WeightsError(FileNotFoundError):
    """A backbone checkpoint is missing, unreadable, or does not match its architecture."""


def weight_dirs(weights_dir: str | os.PathLike | None) -> list[Path]:
    """Directories searched for backbone files, in order."""
    dirs: list[Path] = []
    if weights_dir:
        dirs.append(Path(weights_dir).expanduser())
    env = os.environ.get("AFFORDANCE_WEIGHTS_DIR")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def find_weights(file_name: str, weights_dir: str | os.PathLike | None) -> Path | None:
    """Return the first existing ``file_name`` in :func:`weight_dirs`, or an explicit path.

    Args:
        file_name: upstream file name (e.g. ``dino_deitsmall16_pretrain.pth``) or a path.
        weights_dir: a directory, or a path to the file itself.
    """
    if weights_dir and Path(weights_dir).is_file():
        return Path(weights_dir)
    if Path(file_name).is_absolute() or os.sep in file_name:
        path = Path(file_name).expanduser()
        return path if path.is_file() else None
    for directory in weight_dirs(weights_dir):
        candidate = directory / file_name
        if candidate.is_file():
            return candidate
    return None


def read_state_dict(path: Path, how_to_get: str) -> dict[str, torch.Tensor]:
    """Read a state dict from a plain ``torch.save`` file or a TorchScript archive.

    Accepts the upstream formats: DINO's ``*.pth`` state dict, OpenAI CLIP's TorchScript
    ``ViT-B-16.pt``, open_clip ``state_dict`` files, and ``{"state_dict"|"model": ...}``
    wrappers with an optional ``module.`` prefix.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - fall through to the TorchScript reader
        try:
            obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as exc:
            raise WeightsError(
                f"cannot read weights file {path} ({type(exc).__name__}); the file is corrupt or "
                f"not a PyTorch checkpoint. {how_to_get}"
            ) from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "teacher"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"weights file {path} holds no state dict. {how_to_get}")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    return state


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: Path,
    how_to_get: str,
    ignore: tuple[str, ...] = (),
) -> None:
    """Load ``state`` into ``module``, failing on any missing, unexpected or misshapen key.

    Args:
        ignore: keys allowed to be absent from or extra in the file (e.g. a classifier head).
    """
    own = module.state_dict()
    state = {k: v for k, v in state.items() if k not in ignore}
    missing = sorted(k for k in own if k not in state and k not in ignore)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"shape mismatches (e.g. {shapes[:2]})")
        raise WeightsError(
            f"weights file {path} does not match the architecture: "
            f"{'; '.join(parts)}. {how_to_get}"
        )
    module.load_state_dict(state, strict=False)
