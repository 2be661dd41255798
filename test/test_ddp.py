"""Data-parallel training under torchrun (gloo, CPU) follows the single-process run.

Two processes with a global batch of 4 must produce the loss curve and final heads of one
process with batch 4: same global batches (rank r takes items r::2 of each), BatchNorm over
the global batch, gradients averaged. The data set is made augmentation-proof (uniform-colour
images: random crops and flips give the same tensor; one egocentric image per object and one
exocentric image per item), and the ``ce`` method has no random terms.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from training import distributed
from training.trainer import resolve_amp

REPO = Path(__file__).resolve().parents[1]


def _uniform_images(split: Path) -> None:
    """Rewrites every training JPEG as one uniform colour (distinct per file)."""
    rng = np.random.default_rng(5)
    for path in sorted((split / "trainset").rglob("*.jpg")):
        cv2.imwrite(str(path), np.full((40, 48, 3), rng.integers(0, 256, 3), dtype=np.uint8))


def _train_command(root: Path, weights: Path, out: Path) -> list[str]:
    return [
        "-m",
        "training.train",
        "--data-root",
        str(root),
        "--split",
        "Seen",
        "--method",
        "ce",
        "--model",
        "tiny",
        "--out",
        str(out),
        "--iters",
        "6",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--log-every",
        "1",
        "--device",
        "cpu",
        "--weights-dir",
        str(weights),
        "--no-progress",
        "--set",
        "data.num_exo=1",
    ]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _steps(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in records if "event" not in r]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(
    make_agd_tree, tmp_path: Path, random_tiny_weights: Path
) -> None:
    root = tmp_path / "data"
    _uniform_images(
        make_agd_tree(root, split="Seen", objects_per_aff=2, n_exo=2, n_ego=1, n_test=1, seed=3)
    )
    weights = random_tiny_weights
    single = _run(_train_command(root, weights, tmp_path / "single"))
    multi = _run(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            *_train_command(root, weights, tmp_path / "ddp"),
        ]
    )

    one, two = _steps(tmp_path / "single"), _steps(tmp_path / "ddp")
    assert [r["step"] for r in two] == list(range(1, 7))  # rank 0 alone writes the log
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "ce_ego", "ce_exo"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    # The curve moves: equality is not two constant curves.
    assert abs(one[-1]["loss"] - one[0]["loss"]) > 1e-3

    heads_one = torch.load(tmp_path / "single" / "model.pt", weights_only=False)["heads"]
    heads_two = torch.load(tmp_path / "ddp" / "model.pt", weights_only=False)["heads"]
    assert heads_one.keys() == heads_two.keys()
    for key, value in heads_one.items():
        # Float reduction order only: 1e-3 of the tensor scale, 1e-5 for near-zero biases.
        scale = float(value.float().abs().max()) + 1e-6
        diff = float((heads_two[key].float() - value.float()).abs().max())
        assert diff <= 1e-3 * scale + 1e-5, key
    # One summary line (rank 0), naming the run's model file.
    summaries = [line for line in multi.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["step"] == 6
    assert json.loads(single.stdout.strip().splitlines()[-1])["step"] == 6


def test_sharded_batch_sampler_splits_each_global_batch() -> None:
    batches = [[7, 3, 5, 1], [0, 2, 4, 6]]
    shards = [list(distributed.ShardedBatchSampler(batches, 2, r)) for r in range(2)]
    assert shards == [[[7, 5], [0, 4]], [[3, 1], [2, 6]]]
    assert len(distributed.ShardedBatchSampler(batches, 2, 0)) == 2
    with pytest.raises(RuntimeError, match="does not split over 3 processes"):
        list(distributed.ShardedBatchSampler(batches, 3, 0))
    with pytest.raises(ValueError, match="rank 2 out of range"):
        distributed.ShardedBatchSampler(batches, 2, 2)


def test_cross_rank_batchnorm_is_batchnorm_without_a_process_group() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
    reference = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
    reference.load_state_dict(model.state_dict())
    weight = model[1].weight
    distributed.convert_batchnorm(model, torch.device("cpu"))
    assert isinstance(model[1], distributed.CrossRankBatchNorm2d)
    assert model[1].weight is weight  # optimizers built before stay valid
    assert model.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(5, 3, 6, 6)
    torch.testing.assert_close(model(x), reference(x))
    torch.testing.assert_close(model[1].running_var, reference[1].running_var)


def test_amp_is_off_on_cpu_and_rejects_unknown_values() -> None:
    cpu = torch.device("cpu")
    assert resolve_amp(False, cpu) is None
    assert resolve_amp(True, cpu) is None  # CUDA only
    with pytest.raises(ValueError, match="train.amp must be"):
        resolve_amp("int8", cpu)
