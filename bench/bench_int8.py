"""int8 against float32 on the demo's corpus: metric change and speed on the tiny tier.

One run: writes the demo's synthetic corpus and validation corpus (``--quick``-sized unless
``--full``) into ``--work``, trains SelectiveCL on the tiny tier on the Seen split as the demo
does (branch, calibration and budget chosen on the validation corpus; reused if ``--work``
already holds it), then scores the checkpoint on the validation and
test images (with GT) through three backends of the predictor on the same images: ``torch`` (eager
float32), ``onnxruntime`` (float32 graph) and ``onnxruntime-int8`` (dynamic quantization,
:mod:`affordance_core.runtime`). The maps go through the evaluation protocol exactly as
``affordance-eval`` does (raw 14x14 maps, bilinear to 224, min-max, KLD/SIM/NSS).

Reports per backend and set: the metrics, their change from eager, the largest difference of
the protocol's maps from eager, the fraction of images whose map peak moved, and the median
time of one image's backbone + heads pass with its ratio to eager (alternating image by
image).

Usage: python bench/bench_int8.py [--work DIR] [--full] [--iters N] [--seed S]
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affordance_core import load_model
from affordance_core.data import AffordanceTestDataset
from affordance_core.metrics import MetricAccumulator, prepare_prediction
from affordance_core.predictor import AffordancePredictor

BACKENDS = {
    "torch": {},
    "onnxruntime": {"backend": "onnxruntime"},
    "onnxruntime-int8": {"backend": "onnxruntime", "onnx_variant": "int8"},
}


def raw_maps(predictor: AffordancePredictor, image: torch.Tensor, class_id: int) -> torch.Tensor:
    """(1, h, w) raw map of one (3, S, S) image in [0, 1] for one class, through the
    predictor's backend (the same calls ``set_image`` and ``predict`` make)."""
    if predictor._engine is not None:
        features = predictor._engine.extract(image[None])
        return predictor._engine.maps_and_scores(features, [class_id])[0][0]
    model = predictor.model
    with torch.inference_mode():
        feats = model.extract(image[None])
        return model.infer(feats, torch.tensor([[class_id]]))[0][0]


def score(predictors: dict[str, AffordancePredictor], dataset) -> dict[str, Any]:
    accs = {name: MetricAccumulator() for name in predictors}
    times: dict[str, list[float]] = {name: [] for name in predictors}
    preds: dict[str, list[torch.Tensor]] = {name: [] for name in predictors}
    for i in range(len(dataset)):
        item = dataset[i]
        for name, predictor in predictors.items():
            start = time.perf_counter()
            maps = raw_maps(predictor, item["image"], int(item["label"]))
            times[name].append(time.perf_counter() - start)
            pred = prepare_prediction(maps.float(), size=tuple(item["gt"].shape[-2:]))
            accs[name].update(pred, item["gt"][None], prepared=True)
            preds[name].append(pred[0])
    eager_ms = float(np.median(times["torch"])) * 1000
    out: dict[str, Any] = {}
    for name in predictors:
        metrics = accs[name].compute()
        ms = float(np.median(times[name])) * 1000
        diffs = [float((a - b).abs().max()) for a, b in zip(preds[name], preds["torch"])]
        moved = [int(a.argmax()) != int(b.argmax()) for a, b in zip(preds[name], preds["torch"])]
        out[name] = {
            **{k: round(float(metrics[k]), 4) for k in ("KLD", "SIM", "NSS")},
            "n": int(metrics["n"]),
            "image_ms": round(ms, 2),
            "ratio_to_eager": round(ms / eager_ms, 3),
            "max_map_diff": round(max(diffs), 4),
            "peaks_moved": round(float(np.mean(moved)), 3),
        }
    for name in predictors:
        out[name]["delta"] = {
            k: round(out[name][k] - out["torch"][k], 4) for k in ("KLD", "SIM", "NSS")
        }
    return out


def main() -> None:
    from training.demo import demo_budget, make_corpus, make_validation_corpus, train_method

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="folder for corpus, run and cache (default: temporary)")
    parser.add_argument("--full", action="store_true", help="the demo's full corpus and budget")
    parser.add_argument("--iters", type=int, help="training iterations (default: the budget's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="Seen", choices=["Seen", "Unseen"])
    args = parser.parse_args()

    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="bench_int8_")
    work = Path(args.work or tmp.name)
    budget = demo_budget(quick=not args.full)
    if args.iters:
        budget["iters"] = args.iters
    start = time.perf_counter()
    make_corpus(work / "data", budget, args.seed)
    make_validation_corpus(work / "data_val", budget, args.seed)
    checkpoint = train_method(
        "selectivecl",
        work / "data",
        args.split,
        work / "runs" / args.split / "selectivecl",
        budget,
        work / "feature_cache" / args.split,
        args.seed,
        val_root=work / "data_val",
    )
    prep_s = time.perf_counter() - start
    model = load_model(checkpoint).eval()
    predictors = {
        name: AffordancePredictor(model, onnx_cache_dir=work / "onnx", **options)
        for name, options in BACKENDS.items()
    }
    results: dict[str, Any] = {}
    for label, root in (("validation", work / "data_val"), ("test", work / "data")):
        dataset = AffordanceTestDataset(
            root, args.split, model.image_size, vocabulary=model.vocabulary
        )
        results[label] = score(predictors, dataset)
    results.update(
        model="tiny",
        method="selectivecl",
        split=args.split,
        iters=budget["iters"],
        corpus="full" if args.full else "quick",
        seed=args.seed,
        threads=torch.get_num_threads(),
        prepare_s=round(prep_s, 1),
    )
    print(json.dumps(results))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
