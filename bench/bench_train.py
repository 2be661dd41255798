"""Training throughput per method, with and without the frozen-feature cache.

For every method (ce, locate, selectivecl, looptrans) and tier, in one run on the same
random batch (data loading excluded; backbone weights random, which does not change cost):

* ``images``: a full optimisation step from pixels (frozen backbones + heads + losses +
  backward + SGD update), as ``affordance-train`` without ``--cache-features``;
* ``backbone_ms``: the two frozen backbone forwards of that step, timed alone;
* ``outside_backbone_share``: (step - backbones) / step, the part a feature cache or faster
  heads can remove;
* ``cached``: the same step from precomputed features (``--cache-features``);
* ``samples_per_s`` for both, and ``cache_speedup`` = cached / images throughput.

Each figure is the median over ``--steps`` timed steps after one warm-up step.

Usage: python bench/bench_train.py [--tiers tiny paper] [--batch 4] [--paper-batch 2]
       [--steps 5] [--paper-steps 3] [--device cpu|cuda]
Last line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from affordance_core import create_model
from affordance_core.methods import build_method

VOCAB = [
    "hold",
    "cut_with",
    "pour",
    "sit_on",
    "ride",
    "drink_with",
    "hit",
    "swing",
    "type_on",
    "open",
]
METHODS = ("ce", "locate", "selectivecl", "looptrans")
NUM_EXO = 3


def _median_ms(fn: Callable[[], None], steps: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _cached_batch(model, ego: torch.Tensor, exo: torch.Tensor, labels: torch.Tensor) -> dict:
    b = ego.shape[0]
    feats = model.extract(torch.cat([ego, exo.flatten(0, 1)]))
    batch = {"label": labels}
    for prefix, part in (("ego", feats.index(slice(0, b))), ("exo", feats.index(slice(b, None)))):
        tensors = {"keys": part.keys, "attn": part.cls_attention, "clip": part.clip}
        for name, value in tensors.items():
            if prefix == "exo":
                value = value.view(b, NUM_EXO, *value.shape[1:])
            batch[f"{prefix}_{name}"] = value.half()  # the cache stores float16
    return batch


def bench_method(
    tier: str, method_name: str, batch_size: int, steps: int, device: torch.device
) -> dict:
    """Times one method on one tier; returns its figures (see the module docstring)."""
    torch.manual_seed(0)
    model = create_model(tier, vocabulary=VOCAB, method=method_name, pretrained=False)
    model.to(device).train()
    method = build_method(method_name, model, seed=0).to(device).train()
    optimizer = torch.optim.SGD(
        model.param_groups(1e-3), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    size = model.image_size
    gen = torch.Generator().manual_seed(1)
    ego = torch.rand(batch_size, 3, size, size, generator=gen).to(device)
    exo = torch.rand(batch_size, NUM_EXO, 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, len(VOCAB), (batch_size,), generator=gen).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(batch: dict) -> Callable[[], None]:
        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            method(batch, 0.5)["loss"].backward()  # progress past every warm-up
            optimizer.step()

        return run

    def backbones() -> None:
        model.extract(torch.cat([ego, exo.flatten(0, 1)]))

    image_batch = {"ego": ego, "exo": exo, "label": labels}
    cached = _cached_batch(model, ego, exo, labels)
    # Interleave the measurements so drift in machine load hits all three alike.
    images_ms = backbone_ms = cached_ms = float("inf")
    for _ in range(2):
        images_ms = min(images_ms, _median_ms(step(image_batch), steps, sync))
        backbone_ms = min(backbone_ms, _median_ms(backbones, steps, sync))
        cached_ms = min(cached_ms, _median_ms(step(cached), steps, sync))
    return {
        "images_step_ms": round(images_ms, 2),
        "backbone_ms": round(backbone_ms, 2),
        "outside_backbone_share": round(max(0.0, images_ms - backbone_ms) / images_ms, 3),
        "cached_step_ms": round(cached_ms, 2),
        "images_samples_per_s": round(batch_size * 1000.0 / images_ms, 2),
        "cached_samples_per_s": round(batch_size * 1000.0 / cached_ms, 2),
        "cache_speedup": round(images_ms / cached_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiers", nargs="+", default=["tiny", "paper"], choices=["tiny", "paper"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--batch", type=int, default=4, help="tiny-tier batch")
    parser.add_argument("--paper-batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (tiny)")
    parser.add_argument("--paper-steps", type=int, default=2, help="timed steps (paper)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    results: dict = {"device": str(device), "threads": torch.get_num_threads(), "num_exo": NUM_EXO}
    for tier in args.tiers:
        batch = args.batch if tier == "tiny" else args.paper_batch
        steps = args.steps if tier == "tiny" else args.paper_steps
        results[tier] = {"batch": batch}
        for name in args.methods:
            figures = bench_method(tier, name, batch, steps, device)
            results[tier][name] = figures
            print(
                f"{tier:5s} {name:12s} images {figures['images_samples_per_s']:8.2f} "
                f"samples/s  cached {figures['cached_samples_per_s']:8.2f} samples/s  "
                f"outside backbones {figures['outside_backbone_share']:.1%}",
                flush=True,
            )
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
