"""Helpers shared by the command-line tools: config layering, logging, devices, errors.

Config layering for ``affordance-train`` (later layers win)::

    training/configs/default.yaml
      < training/configs/<method>.yaml
      < training/configs/<method>.<model>.yaml   (e.g. selectivecl.tiny.yaml)
      < --config YAML
      < explicit CLI flags and --set KEY=VALUE overrides

A config is a nested dict with the sections ``model``, ``method``, ``data`` and ``train``.
Keys of ``train`` and ``data`` must exist in ``default.yaml`` (a typo is an error); keys of
``model`` and ``method`` beyond the documented ones are passed on to ``create_model`` and
``build_method`` as keyword overrides.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import random
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from affordance_core.files import atomic_write

__all__ = [
    "STRICT_SECTIONS",
    "CLIError",
    "apply_overrides",
    "choose_device",
    "config_dir",
    "deep_merge",
    "generator_fingerprint",
    "get_rng_state",
    "layered_config",
    "load_yaml",
    "parse_set_items",
    "print_json_result",
    "resolve_num_workers",
    "run_cli",
    "seed_everything",
    "set_rng_state",
    "setup_logging",
    "source_fingerprint",
    "write_yaml",
]

logger = logging.getLogger(__name__)

STRICT_SECTIONS = ("data", "train")
"""Config sections whose keys must already exist in ``default.yaml``."""


class CLIError(Exception):
    """Bad command-line usage; reported as ``<prog>: error: <message>`` with exit status 2."""


@functools.cache
def source_fingerprint() -> str:
    """What decides a trained run besides its arguments, as 16 hex digits of a SHA-256: the
    Python sources of ``affordance_core`` and ``training``, the training configs and the tiny
    tier's weight files. Cached results (demo runs, benchmark rows) are reused only under the
    same fingerprint."""
    from affordance_core.tiny import default_tiny_weights_dir

    root = Path(__file__).resolve().parent.parent
    files = [
        *sorted((root / "affordance_core").rglob("*.py")),
        *sorted((root / "training").rglob("*.py")),
        *sorted(config_dir().glob("*.yaml")),
        *sorted(default_tiny_weights_dir().glob("*.pt")),
    ]
    return _files_digest(files)


def generator_fingerprint() -> str:
    """The synthetic corpus generator's Python sources (``affordance_core/synthetic``) as 16
    hex digits of a SHA-256: a cached corpus is rebuilt when they change."""
    root = Path(__file__).resolve().parent.parent / "affordance_core" / "synthetic"
    return _files_digest(sorted(root.rglob("*.py")))


def _files_digest(files: list[Path]) -> str:
    """16 hex digits of a SHA-256 over each file's name and bytes, in the given order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def config_dir() -> Path:
    """Directory of the packaged training configs (``training/configs``)."""
    return Path(__file__).resolve().parent / "configs"


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a YAML mapping.

    Args:
        path: YAML file.

    Returns:
        The mapping ({} for an empty file).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not valid YAML or its top level is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        raise ValueError(f"config file {path} is not valid YAML: {message}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"config file {path} must hold a mapping at its top level, got {type(data).__name__}"
        )
    return data


def write_yaml(data: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Writes a mapping as YAML, atomically (temporary file, then rename)."""
    with atomic_write(path) as tmp:
        tmp.write_text(yaml.safe_dump(dict(data), sort_keys=False), encoding="utf-8")


def print_json_result(
    result: Mapping[str, Any],
    out: str | os.PathLike | None = None,
    line: Mapping[str, Any] | None = None,
) -> None:
    """Prints a CLI's result as one JSON line; also writes it, indented, to ``out`` if given.

    Args:
        result: the result.
        out: file that receives ``result`` as indented JSON, or None.
        line: what the printed line holds instead of ``result`` (e.g. ``result`` and its
            inputs), or None.
    """
    text = json.dumps(result if line is None else line)
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(text)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merges two mappings; values of ``override`` win, ``base`` is not modified."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _parse_value(text: str) -> Any:
    """YAML scalar parsing, plus floats such as ``1e-3`` that YAML 1.1 reads as strings."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_set_items(items: Iterable[str]) -> dict[str, Any]:
    """Parses ``KEY=VALUE`` strings (dotted keys, YAML values) into a nested mapping.

    Example: ``["train.lr=1e-3", "model.pretrained=false"]`` gives
    ``{"train": {"lr": 0.001}, "model": {"pretrained": False}}``.

    Raises:
        CLIError: on an item without ``=`` or with an empty key part.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise CLIError(
                f"--set expects KEY=VALUE with a dotted key such as train.lr=0.01, got {item!r}"
            )
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CLIError(f"--set {item!r} conflicts with an earlier --set of {part}")
        node[parts[-1]] = _parse_value(text.strip())
    return out


def _check_keys(
    override: Mapping[str, Any], reference: Mapping[str, Any], source: str, prefix: str = ""
) -> None:
    for key, value in override.items():
        name = f"{prefix}{key}"
        if not prefix and key not in reference:
            raise ValueError(
                f"unknown config section {name!r} in {source}; "
                f"valid sections: {', '.join(reference)}"
            )
        if prefix.split(".")[0] in STRICT_SECTIONS and key not in reference:
            raise ValueError(
                f"unknown config key {name!r} in {source}; valid keys: "
                f"{', '.join(sorted(reference))}"
            )
        if isinstance(value, Mapping) and isinstance(reference.get(key), Mapping):
            _check_keys(value, reference[key], source, f"{name}.")


def apply_overrides(
    config: Mapping[str, Any], override: Mapping[str, Any], source: str
) -> dict[str, Any]:
    """Merges ``override`` into ``config`` after checking its keys against ``config``.

    Args:
        config: the config so far (its keys define what is valid in the strict sections).
        override: nested overrides.
        source: where the overrides come from, for error messages (e.g. "--set").

    Raises:
        ValueError: on an unknown section, or an unknown key in a strict section.
    """
    _check_keys(override, config, source)
    return deep_merge(config, override)


def layered_config(
    method: str,
    config_file: str | os.PathLike | None = None,
    overrides: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Resolves a training config: default < <method>.yaml < <method>.<model>.yaml <
    ``config_file`` < ``overrides``.

    ``<method>.<model>.yaml`` holds the settings of one method on one model preset (e.g.
    ``selectivecl.tiny.yaml``); the preset is the ``model.name`` that the whole stack resolves
    to, so ``--model paper`` skips the tiny file.

    Args:
        method: training method name; its packaged config is applied when present.
        config_file: the user's YAML file, or None.
        overrides: further nested overrides, applied in order (CLI flags, then --set).

    Returns:
        The resolved nested config.

    Raises:
        FileNotFoundError: if the packaged default or ``config_file`` is missing.
        ValueError: on malformed YAML or unknown keys.
    """
    directory = config_dir()
    base = load_yaml(directory / "default.yaml")
    method_file = directory / f"{method}.yaml"
    if method_file.is_file():
        base = apply_overrides(base, load_yaml(method_file), str(method_file))
    user = [(load_yaml(config_file), str(config_file))] if config_file is not None else []
    user += [(override, "the command line") for override in overrides]

    def stack(config: dict[str, Any]) -> dict[str, Any]:
        for layer, source in user:
            config = apply_overrides(config, layer, source)
        return config

    model_name = stack(base)["model"].get("name")
    tier_file = directory / f"{method}.{model_name}.yaml"
    if tier_file.is_file():
        base = apply_overrides(base, load_yaml(tier_file), str(tier_file))
    return stack(base)


_OWN_HANDLERS: list[logging.Handler] = []


def setup_logging(verbose: bool = False, log_file: str | os.PathLike | None = None) -> None:
    """Sends log records to stderr, and to ``log_file`` when given.

    Calling it again replaces (and closes) the handlers of the previous call, so the CLIs can
    run several times in one process.
    """
    root = logging.getLogger()
    while _OWN_HANDLERS:
        handler = _OWN_HANDLERS.pop()
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
        _OWN_HANDLERS.append(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def resolve_num_workers(value: int | str | None, device: torch.device) -> int:
    """DataLoader worker count: an int as given, or "auto" (None) for a device-aware default.

    "auto" gives up to 8 workers on CUDA and up to 2 on CPU (where the model's forward pass,
    not image decoding, is the bottleneck), always leaving one core to the main process.
    """
    if value is None or value == "auto":
        cpus = os.cpu_count() or 1
        return max(0, min(8 if device.type == "cuda" else 2, cpus - 1))
    try:
        workers = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"num_workers must be an integer >= 0 or 'auto', got {value!r}") from None
    if workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {workers}")
    return workers


def choose_device(name: str | None = "auto") -> torch.device:
    """Turns a device name into a torch device.

    Args:
        name: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N" or "mps".

    Raises:
        ValueError: on an unknown name or a device that is not available here.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} requested but CUDA is not available; use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} does not exist: {torch.cuda.device_count()} "
                f"CUDA device(s) visible"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but MPS is not available; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """Snapshot of the Python, NumPy, torch CPU and CUDA random generators."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restores a :func:`get_rng_state` snapshot (CUDA states only when CUDA is present)."""
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def run_cli(
    prog: str,
    main: Callable[[Sequence[str] | None], int | None],
    argv: Sequence[str] | None = None,
) -> int:
    """Runs a CLI body and turns expected failures into one-line errors.

    ``CLIError`` exits with status 2; ``ValueError``, ``FileNotFoundError``, ``RuntimeError``
    and other ``OSError`` with status 1; Ctrl-C with 130. The message goes to stderr as
    ``<prog>: error: <message>`` (set ``AFFORDANCE_DEBUG=1`` for the traceback).

    Args:
        prog: program name used in messages.
        main: the CLI body; takes ``argv`` and returns an exit status (None means 0).
        argv: arguments without the program name (None: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """

    def fail(message: str, status: int) -> int:
        if os.environ.get("AFFORDANCE_DEBUG"):
            logger.exception("traceback")
        first = " ".join(str(message).split()) or "unexpected failure"
        print(f"{prog}: error: {first}", file=sys.stderr, flush=True)
        return status

    try:
        status = main(argv)
    except CLIError as exc:
        return fail(str(exc), 2)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        message = str(exc)
        if isinstance(exc, FileNotFoundError) and exc.filename and exc.filename not in message:
            message = f"{message}: {exc.filename}"
        return fail(message, 1)
    return 0 if status is None else int(status)
