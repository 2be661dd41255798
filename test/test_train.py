"""affordance-train / affordance-eval end to end on a generated AGD20K tree (tiny model, CPU).

Backbone weights: random tiny backbones saved to a temporary weights directory, so training
and evaluation see the same frozen features without the repository's pretrained files.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from affordance_core.methods import METHODS
from training import evaluate, train

REPO = Path(__file__).resolve().parents[1]
FAST = [
    "--model",
    "tiny",
    "--batch-size",
    "2",
    "--num-workers",
    "0",
    "--log-every",
    "1",
    "--no-progress",
]


def corrupt_some_training_images(split: Path) -> None:
    """Truncates the first exocentric and egocentric JPEG of every <aff>/<obj> folder."""
    for view in ("exocentric", "egocentric"):
        for folder in sorted((split / "trainset" / view).glob("*/*")):
            first = sorted(folder.glob("*.jpg"))[0]
            first.write_bytes(first.read_bytes()[:40])


def read_log(run_dir: Path) -> list[dict]:
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_json_line(text: str) -> dict:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert lines, "no output on stdout"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, make_agd_tree, random_tiny_weights: Path
) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("train")
    root = base / "data"
    make_agd_tree(root, split="Seen", n_exo=3, n_ego=2, n_test=2, seed=1)
    corrupt_root = base / "corrupt"
    corrupt_some_training_images(
        make_agd_tree(corrupt_root, split="Seen", n_exo=3, n_ego=2, n_test=2, seed=2)
    )
    return {
        "base": base,
        "root": root,
        "corrupt_root": corrupt_root,
        "weights": random_tiny_weights,
    }


def train_args(ws: dict[str, Path], out: Path, method: str, iters: int, *extra: str) -> list[str]:
    return [
        "--data-root",
        str(ws["root"]),
        "--split",
        "Seen",
        "--method",
        method,
        "--out",
        str(out),
        "--iters",
        str(iters),
        "--weights-dir",
        str(ws["weights"]),
        *FAST,
        *extra,
    ]


@pytest.fixture(scope="module")
def trained_run(workspace: dict[str, Path]) -> tuple[Path, dict]:
    """A short ce run on the tree with corrupt training images; (run dir, stdout summary)."""
    out = workspace["base"] / "run_shared"
    args = train_args(workspace, out, "ce", 2)
    args[args.index("--data-root") + 1] = str(workspace["corrupt_root"])
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert train.main(args) == 0
    return out, last_json_line(stdout.getvalue())


@pytest.mark.timeout(240)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_training_lowers_the_loss_and_writes_the_run_files(workspace, method, capsys):
    out = workspace["base"] / f"run_{method}"
    status = train.main(
        train_args(workspace, out, method, 6, "--lr", "0.002", "--save-every", "3")
    )
    assert status == 0
    summary = last_json_line(capsys.readouterr().out)
    assert summary["step"] == 6 and summary["skipped"] == 0

    for name in ("config.yaml", "last.pt", "model.pt", "log.jsonl", "train.log"):
        assert (out / name).is_file(), name
    assert any((out / "tb").iterdir())
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["method"]["name"] == method
    assert config["train"]["iters"] == 6 and config["train"]["lr"] == 0.002
    assert config["train"]["momentum"] == 0.9 and config["train"]["weight_decay"] == 5e-4

    records = read_log(out)
    steps = [r for r in records if "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert all(math.isfinite(r["loss"]) for r in steps)
    assert "ce_ego" in steps[0] and "ce_exo" in steps[0]
    checkpoints = [r["step"] for r in records if r.get("event") == "checkpoint"]
    assert checkpoints == [3, 6]
    # The classification terms every method shares must fall; the method-specific terms
    # (pseudo-masks, gates, contrast pairs) legitimately move the total both ways in 6 steps.
    first = sum(r["ce_ego"] + r["ce_exo"] for r in steps[:3]) / 3
    last = sum(r["ce_ego"] + r["ce_exo"] for r in steps[3:]) / 3
    assert last < first, f"the classification loss did not decrease: {first:.3f} -> {last:.3f}"

    payload = torch.load(out / "model.pt", map_location="cpu", weights_only=False)
    assert payload["extra"]["step"] == 6
    assert payload["config"]["method"] == method


@pytest.mark.timeout(120)
def test_config_layering_puts_flags_over_config_file_over_method_defaults(workspace, tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("train:\n  batch_size: 5\n  lr: 0.5\n  lr_gamma: 0.5\n")
    args = train.build_parser().parse_args(
        [
            "--data-root",
            "d",
            "--split",
            "Seen",
            "--method",
            "locate",
            "--out",
            "o",
            "--config",
            str(user),
            "--lr",
            "0.02",
            "--set",
            "train.save_every=7",
            "--set",
            "train.lr_milestones=[0.5]",
        ]
    )
    config = train.resolve_config(args)
    assert config["train"]["batch_size"] == 5  # --config over locate.yaml (16)
    assert config["train"]["lr"] == 0.02  # flag over --config
    assert config["train"]["lr_gamma"] == 0.5  # --config over default.yaml
    assert config["train"]["save_every"] == 7  # --set
    assert config["train"]["lr_milestones"] == [0.5]
    assert config["train"]["momentum"] == 0.9  # default.yaml
    assert config["method"]["name"] == "locate"

    bad = train.build_parser().parse_args(
        [
            "--data-root",
            "d",
            "--split",
            "Seen",
            "--method",
            "ce",
            "--out",
            "o",
            "--set",
            "train.itres=5",
        ]
    )
    with pytest.raises(ValueError, match="train.itres"):
        train.resolve_config(bad)


@pytest.mark.timeout(120)
def test_method_tier_file_applies_to_its_model_preset_only(tmp_path):
    def resolve(*extra: str) -> dict:
        args = train.build_parser().parse_args(
            [
                "--data-root",
                "d",
                "--split",
                "Seen",
                "--method",
                "selectivecl",
                "--out",
                "o",
                *extra,
            ]
        )
        return train.resolve_config(args)

    tiny = resolve("--model", "tiny")  # selectivecl.tiny.yaml
    assert tiny["model"]["proj_residual"] is True
    assert tiny["method"]["contrast_scale"] == pytest.approx(7.14)
    assert tiny["train"]["batch_size"] == 8  # selectivecl.yaml still applies

    paper = resolve("--model", "paper")
    assert "proj_residual" not in paper["model"]
    assert "contrast_scale" not in paper["method"]

    user = tmp_path / "user.yaml"
    user.write_text("model:\n  name: paper\n")  # the preset may come from --config
    assert "contrast_scale" not in resolve("--config", str(user))["method"]

    explicit = resolve("--set", "method.contrast_scale=1.0")
    assert explicit["method"]["contrast_scale"] == 1.0  # --set over the tier file
    assert explicit["model"]["proj_residual"] is True


@pytest.mark.timeout(300)
def test_killed_run_resumes_from_its_checkpoint(workspace):
    out = workspace["base"] / "run_resume"
    cmd = [
        sys.executable,
        "-m",
        "training.train",
        *train_args(workspace, out, "ce", 200, "--save-every", "1"),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    saved = 0
    try:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and proc.poll() is None:
            steps = [r["step"] for r in read_log(out) if r.get("event") == "checkpoint"]
            if steps and max(steps) >= 2:
                saved = max(steps)
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert saved >= 2, proc.stderr.read().decode()[-2000:] if proc.stderr else "no log"
    assert proc.returncode == -signal.SIGKILL

    saved_step = torch.load(out / "last.pt", map_location="cpu", weights_only=False)["extra"][
        "training"
    ]["step"]
    assert saved_step >= saved
    logged = [r["step"] for r in read_log(out) if "event" not in r]

    status = train.main(
        ["--out", str(out), "--resume", "--iters", str(saved_step + 2), "--no-progress"]
    )
    assert status == 0
    records = read_log(out)
    resumed = [r["step"] for r in records if "event" not in r][len(logged) :]
    assert resumed == [saved_step + 1, saved_step + 2]
    payload = torch.load(out / "model.pt", map_location="cpu", weights_only=False)
    assert payload["extra"]["step"] == saved_step + 2

    # A finished run is refused unless --resume is given.
    assert train.main(train_args(workspace, out, "ce", 2)) == 1


@pytest.mark.timeout(120)
def test_eval_prints_a_final_json_line_and_writes_the_breakdown(
    workspace, trained_run, capsys, tmp_path
):
    out_json = tmp_path / "metrics.json"
    viz = tmp_path / "viz"
    status = evaluate.main(
        [
            "--data-root",
            str(workspace["corrupt_root"]),
            "--split",
            "Seen",
            "--checkpoint",
            str(trained_run[0] / "model.pt"),
            "--weights-dir",
            str(workspace["weights"]),
            "--json",
            str(out_json),
            "--viz",
            str(viz),
            "--viz-max",
            "2",
            "--batch-size",
            "4",
            "--no-progress",
        ]
    )
    assert status == 0
    summary = last_json_line(capsys.readouterr().out)
    assert set(summary) == {
        "KLD",
        "SIM",
        "NSS",
        "peak_hit",
        "mask_iou",
        "action_sensitivity",
        "absence_auroc",
        "empty_on_background",
        "n",
        "n_background",
    }
    assert summary["n_background"] == 0 and summary["empty_on_background"] is None
    assert summary["n"] == 6 and isinstance(summary["n"], int)
    assert all(math.isfinite(summary[k]) for k in ("KLD", "SIM", "NSS"))
    assert summary["KLD"] >= 0 and 0 <= summary["SIM"] <= 1
    report = json.loads(out_json.read_text())
    assert set(report["per_affordance"]) == {"hold", "cut_with", "sit_on"}
    assert sum(v["n"] for v in report["per_affordance"].values()) == 6
    assert len(list(viz.glob("*.png"))) == 2


def hand_scores(
    workspace: dict[str, Path],
    checkpoint: Path,
    branch: str,
    binary_threshold: float | None = None,
) -> dict[str, float]:
    """Mean KLD/SIM/NSS of a checkpoint's maps built here from its heads: the labelled CAM of
    ``branch``, times the binarised min-max affinity when ``binary_threshold`` is given, and
    min-max normalised times the part prior's probability when the model has one."""
    from affordance_core import load_model
    from affordance_core.backbones import minmax
    from affordance_core.data import AffordanceTestDataset
    from affordance_core.metrics import affordance_metrics, prepare_prediction

    model = load_model(checkpoint, weights_dir=workspace["weights"]).eval()
    data = AffordanceTestDataset(
        workspace["corrupt_root"], "Seen", model.image_size, vocabulary=model.vocabulary
    )
    per_image = []
    with torch.no_grad():
        for item in torch.utils.data.DataLoader(data, batch_size=4):
            feats = model.extract(item["image"])
            _, cams = model.cam(feats.keys, branch)
            maps = cams[torch.arange(len(item["label"])), item["label"]]
            if binary_threshold is not None:
                aff = minmax(model.affinity(feats.clip, item["label"], "ego"))
                maps = minmax(maps) * (aff >= binary_threshold).float()
            if model.part_prior is not None:
                prior = model.part_probability(feats.keys, item["label"][:, None])[:, 0]
                maps = minmax(maps) * prior
            gt = item["gt"]
            per_image.append(affordance_metrics(prepare_prediction(maps, size=gt.shape[-2:]), gt))
    return {k: float(torch.cat([m[k] for m in per_image]).mean()) for k in ("KLD", "SIM", "NSS")}


@pytest.mark.timeout(180)
def test_eval_calibration_and_branch_overrides_rescore_the_same_heads(
    workspace, trained_run, capsys
):
    checkpoint = trained_run[0] / "model.pt"
    base = [
        "--data-root",
        str(workspace["corrupt_root"]),
        "--split",
        "Seen",
        "--checkpoint",
        str(checkpoint),
        "--weights-dir",
        str(workspace["weights"]),
        "--batch-size",
        "4",
        "--no-progress",
    ]
    cases = {
        "plain": ([], ("ego", None)),
        "binary": (["--calibration", "binary", "--object-threshold", "0.5"], ("ego", 0.5)),
        "exo": (["--inference-branch", "exo"], ("exo", None)),
    }
    scores = {}
    for name, (flags, (branch, threshold)) in cases.items():
        assert evaluate.main(base + flags) == 0
        scores[name] = last_json_line(capsys.readouterr().out)
        # the CLI's figures are those of the maps built by hand from the same heads
        expected = hand_scores(workspace, checkpoint, branch, threshold)
        for key in ("KLD", "SIM", "NSS"):
            assert scores[name][key] == pytest.approx(expected[key], abs=2e-4), (name, key)
        assert scores[name]["n"] == scores["plain"]["n"]
    assert scores["binary"]["KLD"] != scores["plain"]["KLD"]
    assert scores["exo"]["KLD"] != scores["plain"]["KLD"]
    assert evaluate.main(base + ["--object-threshold", "1.5"]) != 0
    assert "--object-threshold must be in [0, 1]" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_selectivecl_switches_reach_the_method_and_optimizer_from_set(workspace, tmp_path):
    args = train.build_parser().parse_args(
        train_args(
            workspace,
            tmp_path / "run",
            "selectivecl",
            1,
            "--set",
            "method.pixel_anchors=object",
            "--set",
            "method.pixel_bg_positives=true",
            "--set",
            "method.kmeans_iters=300",
            "--set",
            "method.aff_norm_lr_mult=1",
        )
    )
    config = train.resolve_config(args)
    trainer = train.build_run(config, tmp_path / "run", progress=False)
    method = trainer.method
    assert (method.pixel_anchors, method.pixel_bg_positives, method.kmeans_iters) == (
        "object",
        True,
        300,
    )
    norm = trainer.model.aff_proj.norm
    lrs = {id(p): g["lr_mult"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert lrs[id(norm.weight)] == 1.0 and lrs[id(norm.bias)] == 2.0
    assert lrs[id(trainer.model.aff_proj.fc1.weight)] == 10.0
    bad = train.build_parser().parse_args(
        train_args(workspace, tmp_path / "bad", "selectivecl", 1, "--set", "method.kmeans_iters=0")
    )
    with pytest.raises(ValueError, match="kmeans_iters"):
        train.build_run(train.resolve_config(bad), tmp_path / "bad", progress=False)


def test_corrupt_images_are_replaced_counted_and_reported(trained_run):
    out, summary = trained_run
    assert summary["skipped"] > 0
    steps = [r for r in read_log(out) if "event" not in r]
    assert steps[-1]["skipped"] == summary["skipped"]
    assert f"skipped {summary['skipped']} corrupt images" in (out / "train.log").read_text()


def test_lr_milestones_are_fractions_of_the_budget():
    from training.trainer import Trainer

    fake = SimpleNamespace(milestones=[0.5, 0.75], iters=100, train_cfg={"lr_gamma": 0.1})
    factors = [Trainer.lr_factor(fake, step) for step in (0, 49, 50, 74, 75, 99)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.timeout(180)
def test_select_on_test_keeps_best_but_model_pt_is_the_final_step(workspace, capsys):
    out = workspace["base"] / "run_select"
    status = train.main(
        train_args(workspace, out, "ce", 2, "--select-on-test", "--eval-every", "1")
    )
    assert status == 0
    summary = last_json_line(capsys.readouterr().out)
    evals = [r for r in read_log(out) if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [1, 2]
    best = min(evals, key=lambda r: r["KLD"])
    assert summary["best"]["step"] == best["step"]
    best_payload = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    assert best_payload["extra"]["selected_on"] == "test"
    assert best_payload["extra"]["step"] == best["step"]
    final = torch.load(out / "model.pt", map_location="cpu", weights_only=False)
    assert final["extra"]["step"] == 2
