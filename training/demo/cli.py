"""``affordance-demo``: the command line of :func:`training.demo.pipeline.run_demo`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from training.common import run_cli
from training.demo.pipeline import run_demo
from training.demo.settings import DEFAULT_METHODS, METHOD_ORDER

__all__ = ["add_run_arguments", "main"]


def add_run_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    """Adds the options of a demo run: ``--out``, ``--quick``, ``--jobs`` and ``--methods``."""
    parser.add_argument("--out", default=default_out, help="output folder (reused)")
    parser.add_argument("--quick", action="store_true", help="smaller corpus and budget")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="processes training the two splits side by side (default: 2 "
        "with at least two CPUs, else 1)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHOD_ORDER,
        default=None,
        help=f"methods to train (default: {' '.join(DEFAULT_METHODS)}; "
        "looptrans_gated is LoopTrans with the pIoU gate)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``affordance-demo [--out DIR] [--quick] [--seed S] [--jobs N] [--methods ...]``."""
    parser = argparse.ArgumentParser(
        prog="affordance-demo",
        description="Synthetic corpus -> train CE/LOCATE/SelectiveCL/LoopTrans -> evaluate "
        "-> results table, figures -> ROS 2 node run.",
    )
    add_run_arguments(parser, "outputs/demo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def body(_: Sequence[str] | None) -> int:
        run_demo(Path(args.out), args.quick, args.seed, args.jobs, methods=args.methods)
        return 0

    return run_cli("affordance-demo", body, [])
