"""Pretrain the project's ``tiny`` backbones with dense supervision (``affordance-pretrain``).

Trains them (:func:`training.pretrain.loop.pretrain`), then probes them
(:func:`training.probes.backbone.probe_backbones`) into ``OUT/probe.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from affordance_core.tiny import tiny_tokenizer
from training.pretrain.loop import MODELS, PretrainConfig, pretrain
from training.probes.backbone import probe_backbones

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``affordance-pretrain --out weights/tiny [--steps N] [--n-scenes N] [--seed S]``."""
    ap = argparse.ArgumentParser(prog="affordance-pretrain", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="weights/tiny", help="output folder for the checkpoints")
    d = PretrainConfig()
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--n-scenes", type=int, default=d.n_scenes)
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(d.models),
        help="backbones to train (one each in two processes gives the same weights)",
    )
    ap.add_argument(
        "--w-threshold",
        type=float,
        default=d.w_threshold,
        help="weight of the CLIP soft-threshold term",
    )
    ap.add_argument(
        "--w-hand",
        type=float,
        default=d.w_hand,
        help="weight of the CLIP hand term (0: no hand prompt)",
    )
    ap.add_argument(
        "--init-from",
        default=None,
        metavar="DIR",
        help="start from the checkpoints in DIR (a later stage of the recipe)",
    )
    ap.add_argument(
        "--dino-width",
        type=int,
        default=d.dino_width,
        help="width of a DINO-role ViT trained from scratch (multiple of 64)",
    )
    ap.add_argument("--dino-depth", type=int, default=d.dino_depth, help="its number of blocks")
    ap.add_argument("--device", default=d.device, help="torch device (cpu, cuda)")
    ap.add_argument(
        "--render-workers",
        type=int,
        default=d.render_workers,
        help="processes rendering the scene set (same scenes for any number)",
    )
    ap.add_argument("--no-probe", action="store_true", help="skip the backbone probe")
    args = ap.parse_args(argv)
    cfg = PretrainConfig(
        seed=args.seed,
        n_scenes=args.n_scenes,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
        models=tuple(args.models),
        init_from=args.init_from,
        w_threshold=args.w_threshold,
        w_hand=args.w_hand,
        dino_width=args.dino_width,
        dino_depth=args.dino_depth,
        device=args.device,
        render_workers=args.render_workers,
    )
    res = pretrain(cfg, out_dir=args.out, log_every=args.log_every)
    summary: dict[str, Any] = {
        "render_s": round(res["render_s"], 1),
        "train_s": round(res["train_s"], 1),
        "files": res["files"],
    }
    if not args.no_probe and (res["dino"] is None or res["clip"] is None):
        # A file left in --out by an earlier run may not belong with the model just trained.
        print(
            "probe skipped: it needs both backbones trained in this run; run "
            "`python -m training.probes.backbone --weights-dir OUT` once both are written",
            flush=True,
        )
    elif not args.no_probe:
        # the probe runs on the CPU, wherever the models trained
        dino, clip = res["dino"].cpu(), res["clip"].cpu()
        probe = probe_backbones(dino, clip, tiny_tokenizer(), seed=cfg.seed)
        summary["probe"] = probe
        tmp = Path(args.out) / "probe.json.tmp"
        tmp.write_text(json.dumps(probe, indent=2) + "\n")
        tmp.replace(Path(args.out) / "probe.json")
    print(json.dumps(summary))
    return 0
