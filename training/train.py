"""``affordance-train``: weakly supervised training of one method on an AGD20K-layout dataset.

Usage::

    affordance-train --data-root DATA --split Seen --method selectivecl --model tiny \
        --out runs/selcl [--iters 2000] [--config my.yaml] [--set train.lr=2e-3] [--resume]

Config layering (later wins): ``training/configs/default.yaml`` < ``<method>.yaml`` <
``--config`` < explicit flags and ``--set KEY=VALUE``. The resolved config is written to
``RUN_DIR/config.yaml``. The model kept is the one of the final step (``RUN_DIR/model.pt``);
``--select-on-test`` additionally keeps the best test-KLD step in ``best.pt``, which is model
selection on the test set and only meant for comparison with the papers' numbers.

The last line on stdout is a JSON summary ``{"step", "loss", "skipped", "seconds", "model",
"best"}``.

Data-parallel training on several GPUs or machines: launch the same command with torchrun,
``--batch-size`` being the global batch (divided evenly among the processes)::

    torchrun --standalone --nproc_per_node=4 -m training.train --data-root DATA --split Seen \
        --method selectivecl --model paper --out runs/selcl --batch-size 32

Rank 0 writes every file and prints the summary; see :mod:`training.distributed`.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from affordance_core import create_model, list_models
from affordance_core.methods import METHODS, build_method
from training import distributed
from training.common import (
    CLIError,
    apply_overrides,
    choose_device,
    layered_config,
    load_yaml,
    parse_set_items,
    run_cli,
    seed_everything,
    setup_logging,
    write_yaml,
)
from training.trainer import Trainer

__all__ = ["build_parser", "build_run", "main", "resolve_config", "validate_config"]

PROG = "affordance-train"
METHOD_CHOICES = ("ce", "locate", "selectivecl", "looptrans")
logger = logging.getLogger(__name__)


def _method_choices() -> list[str]:
    """The documented methods first, then any further method of the core."""
    return [*METHOD_CHOICES, *(m for m in METHODS if m not in METHOD_CHOICES)]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``affordance-train``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train an affordance grounding model (CE, LOCATE, SelectiveCL or "
        "LoopTrans heads on frozen DINO/CLIP backbones) on an AGD20K-layout dataset.",
    )
    parser.add_argument("--data-root", help="dataset root in the AGD20K layout")
    parser.add_argument(
        "--split",
        help="Seen, Unseen, HICO-IIF or the name of your own split folder under the root",
    )
    parser.add_argument("--method", choices=_method_choices(), help="training method")
    parser.add_argument("--model", choices=list_models(), help="model tier (default tiny)")
    parser.add_argument(
        "--out",
        required=True,
        metavar="RUN_DIR",
        help="run directory (config.yaml, last.pt, model.pt, log.jsonl, tb/)",
    )
    parser.add_argument("--iters", type=int, help="optimisation steps")
    parser.add_argument("--config", metavar="YAML", help="YAML overrides of the packaged config")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in RUN_DIR from its last.pt"
    )
    parser.add_argument("--weights-dir", help="directory with the backbone weights")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="base learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    parser.add_argument(
        "--cache-features",
        action="store_const",
        const=True,
        default=None,
        help="precompute the frozen backbones' features once per image and "
        "train the heads on them (flip-only augmentation)",
    )
    parser.add_argument("--cache-dir", help="feature cache folder (default RUN_DIR/feature_cache)")
    parser.add_argument("--log-every", type=int, help="steps between log records")
    parser.add_argument("--save-every", type=int, help="steps between last.pt checkpoints")
    parser.add_argument(
        "--eval-every", type=int, help="steps between test evaluations (with --select-on-test)"
    )
    parser.add_argument(
        "--select-on-test",
        action="store_true",
        default=None,
        help="evaluate on the TEST split and keep the best step as best.pt; "
        "only for comparison with the papers, which select on the test set",
    )
    parser.add_argument(
        "--val-root",
        metavar="DIR",
        help="validation data (same layout; its testset/ has GT, of the "
        "training categories, never the test split): choose the snapshot, "
        "inference branch, calibration and part prior temperature of model.pt on it",
    )
    parser.add_argument("--val-split", help="split folder under --val-root (default --split)")
    parser.add_argument(
        "--snapshots",
        type=int,
        nargs="+",
        metavar="STEP",
        help="also keep the model at these steps (snapshot_<step>.pt): "
        "training budgets that --val-root chooses from",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. train.lr=2e-3 or model.pretrained=false (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Nested config overrides from the explicitly given flags."""
    mapping = {
        "data_root": ("data", "root"),
        "split": ("data", "split"),
        "method": ("method", "name"),
        "model": ("model", "name"),
        "weights_dir": ("model", "weights_dir"),
        "iters": ("train", "iters"),
        "batch_size": ("train", "batch_size"),
        "lr": ("train", "lr"),
        "seed": ("train", "seed"),
        "device": ("train", "device"),
        "num_workers": ("data", "num_workers"),
        "log_every": ("train", "log_every"),
        "save_every": ("train", "save_every"),
        "eval_every": ("train", "eval_every"),
        "select_on_test": ("train", "select_on_test"),
        "cache_features": ("data", "cache_features"),
        "cache_dir": ("data", "cache_dir"),
        "val_root": ("data", "val_root"),
        "val_split": ("data", "val_split"),
        "snapshots": ("train", "snapshots"),
    }
    out: dict[str, Any] = {}
    for attr, (section, key) in mapping.items():
        value = getattr(args, attr)
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


def resolve_config(
    args: argparse.Namespace, saved: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Layers the packaged configs, ``--config``, the flags and ``--set`` overrides.

    Args:
        args: parsed command line.
        saved: the config of the run being resumed; it replaces the packaged layers, and only
            the flags and ``--set`` given now apply on top.

    Raises:
        CLIError: on a missing required value or a change of model/method/split on resume.
        ValueError: on unknown config keys or malformed files.
    """
    flags = _flag_overrides(args)
    sets = parse_set_items(args.overrides)
    if saved is not None:
        config = dict(saved)
        for override in (flags, sets):
            config = apply_overrides(config, override, "the command line")
        for section, key in (("model", "name"), ("method", "name"), ("data", "split")):
            if config[section][key] != saved[section][key]:
                raise CLIError(
                    f"cannot resume with {section}.{key}={config[section][key]!r}: "
                    f"the run in {args.out} used {saved[section][key]!r}"
                )
        return config
    method = flags.get("method", {}).get("name") or sets.get("method", {}).get("name")
    if method is None and args.config:
        method = (load_yaml(args.config).get("method") or {}).get("name")
    if method is None:
        raise CLIError(f"--method is required (one of {', '.join(_method_choices())})")
    if method not in _method_choices():
        raise CLIError(f"unknown method {method!r}; choose from {', '.join(_method_choices())}")
    config = layered_config(method, args.config, [flags, sets])
    if not config["data"].get("root"):
        raise CLIError("--data-root is required")
    if not config["data"].get("split"):
        raise CLIError("--split is required")
    return config


def validate_config(config: dict[str, Any]) -> None:
    """Checks the ranges of the training settings before anything is built.

    Raises:
        ValueError: naming the first setting out of range.
    """
    train_cfg = config["train"]
    checks = [
        ("train.iters", train_cfg["iters"], lambda v: int(v) >= 1, ">= 1"),
        ("train.batch_size", train_cfg["batch_size"], lambda v: int(v) >= 1, ">= 1"),
        ("train.lr", train_cfg["lr"], lambda v: float(v) > 0, "> 0"),
        ("train.log_every", train_cfg["log_every"], lambda v: int(v) >= 1, ">= 1"),
        ("train.save_every", train_cfg["save_every"] or 0, lambda v: int(v) >= 0, ">= 0"),
        ("train.eval_every", train_cfg["eval_every"] or 0, lambda v: int(v) >= 0, ">= 0"),
        ("data.num_exo", config["data"]["num_exo"], lambda v: int(v) >= 1, ">= 1"),
        (
            "train.snapshots",
            train_cfg.get("snapshots") or [],
            lambda v: all(1 <= int(s) < int(train_cfg["iters"]) for s in v),
            "a list of steps in [1, train.iters)",
        ),
    ]
    for name, value, ok, rule in checks:
        try:
            good = ok(value)
        except (TypeError, ValueError):
            good = False
        if not good:
            raise ValueError(f"{name} must be {rule}, got {value!r}")


def _split_options(config: dict[str, Any], prefix_keys: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in prefix_keys}


def _load_objectness(model: Any, model_cfg: dict[str, Any]) -> None:
    """Copy the objectness read-out of the model's backbone weights into its heads.

    Random backbones (``model.pretrained: false``, tests) keep the unfitted read-out, which
    passes every frame.
    """
    from affordance_core.factory import default_weights_dir
    from affordance_core.objectness import load_objectness, objectness_file
    from affordance_core.weights import find_weights

    if not bool(model_cfg.get("pretrained", True)):
        logger.info("objectness: random backbones, the read-out stays unfitted (no gating)")
        return
    name = objectness_file(model.config.name)
    weights_dir = default_weights_dir(model.config, model_cfg.get("weights_dir"))
    path = find_weights(name, weights_dir)
    if path is None:
        raise ValueError(
            f"model.objectness is on but {name} is not in {weights_dir or '-'}, "
            "AFFORDANCE_WEIGHTS_DIR or the torch hub cache: write it with `python -m "
            f"training.pretrain.objectness --model {model.config.name} --weights-dir DIR`, "
            "or train without the gate (--set model.objectness=false)"
        )
    model.set_objectness(load_objectness(path))
    logger.info("objectness read-out: %s", path)


def build_run(
    config: dict[str, Any],
    run_dir: Path,
    progress: bool,
    vocabulary: Sequence[str] | None = None,
    device: torch.device | None = None,
    fit_part_prior: bool = True,
) -> Trainer:
    """Builds the model, method, datasets and :class:`~training.trainer.Trainer` of a config.

    Args:
        config: the resolved config.
        run_dir: the run directory.
        progress: show a progress bar.
        vocabulary: class names in id order (a resumed run's); default: resolved from the
            dataset on disk.
        device: the device to train on (a torchrun process's own GPU); default: from
            ``train.device``.
        fit_part_prior: fit the model's part prior (``model.part_prior``) on the training
            exo images before training; a resumed run reads it from ``last.pt`` instead.
    """
    from affordance_core.data import (
        AffordanceTestDataset,
        AffordanceTrainDataset,
        resolve_vocabulary,
    )

    data_cfg, model_cfg, method_cfg = config["data"], config["model"], config["method"]
    root = Path(str(data_cfg["root"]))
    if not root.is_dir():
        raise ValueError(
            f"data root {root} does not exist; pass --data-root DIR holding "
            f"<split>/trainset/... (the AGD20K layout)"
        )
    if device is None:
        device = choose_device(config["train"].get("device"))
    seed_everything(int(config["train"]["seed"]))
    if vocabulary is None:
        vocabulary = resolve_vocabulary(root, str(data_cfg["split"]))
    vocabulary = list(vocabulary)
    overrides = _split_options(model_cfg, ("name", "pretrained", "weights_dir"))
    model = create_model(
        str(model_cfg["name"]),
        vocabulary=vocabulary,
        method=str(method_cfg["name"]),
        weights_dir=model_cfg.get("weights_dir"),
        pretrained=bool(model_cfg.get("pretrained", True)),
        **overrides,
    )
    model.to(device)
    dataset_args = (root, str(data_cfg["split"]), model.config.image_size)
    dataset_kwargs = {
        "vocabulary": vocabulary,
        "num_exo": int(data_cfg.get("num_exo", 3)),
        "seed": int(config["train"]["seed"]),
        "augment": bool(data_cfg.get("augment", True)),
    }
    train_set = AffordanceTrainDataset(*dataset_args, **dataset_kwargs)
    cache = None
    if data_cfg.get("cache_features"):
        from affordance_core.feature_cache import CachedTrainDataset, FeatureCache

        cache_dir = Path(str(data_cfg.get("cache_dir") or run_dir / "feature_cache"))
        with distributed.rank_zero_first():  # rank 0 writes the cache, the others read it
            cache = FeatureCache.build(
                model, train_set.image_paths(), cache_dir, device=device, progress=progress
            )
        train_set = CachedTrainDataset(cache, *dataset_args, **dataset_kwargs)
    if fit_part_prior and model.objectness is not None:
        _load_objectness(model, model_cfg)
    if fit_part_prior and model.part_prior is not None:
        from training.part_prior import fit_training_part_prior

        fit_training_part_prior(model, train_set, cache=cache, device=device, progress=progress)
    eval_set = None
    if config["train"].get("select_on_test"):
        eval_set = AffordanceTestDataset(
            root, str(data_cfg["split"]), model.config.image_size, vocabulary=vocabulary
        )
        logger.warning(
            "--select-on-test: model selection on the TEST split (best.pt), only "
            "for comparison with the papers; model.pt stays the final step"
        )
    options = {"seed": int(config["train"]["seed"]), **_split_options(method_cfg, ("name",))}
    method = build_method(str(method_cfg["name"]), model, **options)
    method.to(device)
    trainer = Trainer(
        config, run_dir, model, method, train_set, device, eval_dataset=eval_set, progress=progress
    )
    logger.info(
        "%s on %s/%s: %d training items, %d classes, model %s, %d steps of batch %d on %s",
        method_cfg["name"],
        root,
        data_cfg["split"],
        len(train_set),
        len(vocabulary),
        model_cfg["name"],
        trainer.iters,
        trainer.batch_size,
        device,
    )
    return trainer


def _read_resume_state(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model payload and the training state stored in ``last.pt``."""
    from affordance_core.checkpoint import read_checkpoint

    payload = read_checkpoint(path)
    state = (payload.get("extra") or {}).get("training")
    if not isinstance(state, dict) or "train_config" not in state:
        raise ValueError(
            f"{path} holds no training state (it is a final model file); resume "
            f"from a last.pt written by {PROG}"
        )
    return payload, state


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.out)
    last = run_dir / "last.pt"
    payload, state = None, None
    if args.resume:
        if not last.is_file():
            raise FileNotFoundError(
                f"cannot resume: {last} does not exist; drop --resume to start a new run"
            )
        payload, state = _read_resume_state(last)
    elif last.exists() or (run_dir / "model.pt").exists():
        raise ValueError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    config = resolve_config(args, state["train_config"] if state else None)
    validate_config(config)
    ctx, device = distributed.init_distributed(choose_device(config["train"].get("device")))
    try:
        status = _train(args, config, run_dir, payload, state, ctx, device)
    except BaseException:
        distributed.shutdown_distributed(ctx, wait=False)  # the others fail on their next call
        raise
    distributed.shutdown_distributed(ctx)
    return status


def _train(
    args: argparse.Namespace,
    config: dict[str, Any],
    run_dir: Path,
    payload: dict[str, Any] | None,
    state: dict[str, Any] | None,
    ctx: distributed.DistContext,
    device: torch.device,
) -> int:
    last = run_dir / "last.pt"
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        setup_logging(args.verbose, run_dir / "train.log")
        write_yaml(config, run_dir / "config.yaml")
    else:
        setup_logging(False)
        logging.getLogger().setLevel(logging.WARNING)
    distributed.barrier()
    if ctx.enabled:
        logger.info(
            "torchrun: %d processes (%s), global batch %s",
            ctx.world_size,
            ctx.backend,
            config["train"]["batch_size"],
        )

    trainer = build_run(
        config,
        run_dir,
        progress=not args.no_progress,
        vocabulary=payload["vocabulary"] if payload else None,
        device=device,
        fit_part_prior=payload is None,
    )
    if payload is not None and state is not None:
        try:
            trainer.model.load_trainable_state_dict(payload["heads"])
        except ValueError as exc:
            raise ValueError(f"{last} does not fit the rebuilt model: {exc}") from None
        trainer.load_training_state(state, last)
        logger.info("resuming %s at step %d/%d", run_dir, trainer.step, trainer.iters)
        if trainer.step >= trainer.iters:
            logger.info(
                "the run already reached %d steps; raise --iters to train further", trainer.iters
            )

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # fit() saves last.pt before exiting

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_term) if in_main_thread else None
    try:
        summary = trainer.fit()
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    if ctx.is_main:
        val_root = config["data"].get("val_root")
        if val_root:
            from training.evaluate import choose_on_validation

            summary["validation"] = choose_on_validation(
                run_dir,
                val_root,
                str(config["data"].get("val_split") or config["data"]["split"]),
                device=device,
                weights_dir=config["model"].get("weights_dir"),
            )
        else:
            cfg = trainer.model.config
            logger.info(
                "no --val-root: model.pt maps with the config's inference branch %r and "
                "calibration %r; pass --val-root DIR (images with GT of the training "
                "categories) to choose them on validation data",
                cfg.inference_branch,
                cfg.calibration,
            )
        print(json.dumps(summary), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``affordance-train``; returns the exit status."""
    return run_cli(PROG, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
