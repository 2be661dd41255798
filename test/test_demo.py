"""The demo pipeline end to end on a tiny budget: two splits in two processes, validation-chosen
inference branch and calibration written into the checkpoint, report and figures."""

from __future__ import annotations

import json
import math

import pytest
import torch

from affordance_core.checkpoint import read_checkpoint, save_model, update_checkpoint_config
from training.demo import SPLITS, run_demo

TINY_BUDGET = {"corpus": {"n_exo_per_pair": 1, "n_ego_per_pair": 1, "n_test_per_pair": 1},
               "iters": 2, "batch_size": 4, "methods": ("ce", "selectivecl"),
               "node_seconds": 0}


def test_demo_trains_both_splits_in_two_processes_and_reports(tmp_path):
    from affordance_core import load_model
    from affordance_core.data import AffordanceTestDataset
    from training.demo import evaluate_baselines
    from training.evaluate import evaluate_model

    results = run_demo(tmp_path, budget=TINY_BUDGET, jobs=2)
    for split in SPLITS:
        rows = results["splits"][split]
        for name in ("ce", "selectivecl", "uniform map", "centre Gaussian",
                     "object affinity alone"):
            assert all(math.isfinite(rows[name][m]) for m in ("KLD", "SIM", "NSS")), name
            assert rows[name]["n"] > 0
        assert set(rows["ce"]["inference"]["validation"]) == {"ego/none", "exo/none",
                                                              "ego+exo/none"}
        choice = rows["selectivecl"]["inference"]
        assert set(choice["validation"]) == {f"{b}/{c}" for b in ("ego", "exo", "ego+exo")
                                             for c in ("binary", "continuous")}
        chosen = choice["chosen"]
        kld = {k: v["KLD"] for k, v in choice["validation"].items()}
        assert kld[f"{chosen['inference_branch']}/{chosen['calibration']}"] == min(kld.values())
        saved = read_checkpoint(tmp_path / "runs" / split / "selectivecl" / "model.pt")
        assert saved["config"]["calibration"] == chosen["calibration"]
        assert saved["config"]["inference_branch"] == chosen["inference_branch"]
        gap = rows["selectivecl"]["gap_to_affinity"]
        assert all(g["low"] <= g["mean"] <= g["high"] for g in gap.values())
        assert (tmp_path / f"overlays_{split}.png").stat().st_size > 0
        # values, not only finiteness: a constant map has NSS 0; the reported test row and
        # the chosen validation score are those of the saved checkpoint, rescored here; the
        # affinity row is the min-max affinity of the same images
        assert rows["uniform map"]["NSS"] == 0.0
        assert 0.0 < rows["uniform map"]["SIM"] < 1.0
        model = load_model(tmp_path / "runs" / split / "selectivecl" / "model.pt").eval()
        for root, figures in ((tmp_path / "data", rows["selectivecl"]),
                              (tmp_path / "data_val", choice["validation"][
                                  f"{chosen['inference_branch']}/{chosen['calibration']}"])):
            data = AffordanceTestDataset(root, split, model.image_size,
                                         vocabulary=model.vocabulary)
            again = evaluate_model(model, data, device=torch.device("cpu"), progress=False)
            for key in ("KLD", "SIM", "NSS"):
                assert figures[key] == pytest.approx(again[key], abs=1e-3), (root, key)
        data = AffordanceTestDataset(tmp_path / "data", split, model.image_size,
                                     vocabulary=model.vocabulary)
        affinity = evaluate_baselines(model, data)["object affinity alone"]
        assert rows["object affinity alone"]["KLD"] == pytest.approx(affinity["KLD"], abs=1e-3)
        assert (tmp_path / "runs" / split / "demo.log").is_file()
    # the validation corpus holds the training categories only, from another seed
    val = json.loads((tmp_path / "data_val" / "corpus.json").read_text())
    pairs = val["stats"]["pairs"]["Unseen"]
    assert sorted(map(tuple, pairs["test"])) == sorted(map(tuple, pairs["train"]))
    assert val["params"]["seed"] != results["corpus"]["params"]["seed"]
    text = (tmp_path / "results.md").read_text()
    assert "## Seen" in text and "## Unseen" in text and "inference branch and calibration" in text
    assert "paired-bootstrap interval" in text
    assert json.loads((tmp_path / "results.json").read_text())["jobs"] == 2


def test_update_checkpoint_config_rewrites_only_valid_fields(tmp_path):
    from affordance_core import create_model

    model = create_model("tiny", vocabulary=["hold", "cut_with"], method="selectivecl")
    path = save_model(tmp_path / "model.pt", model)
    update_checkpoint_config(path, calibration="continuous")
    saved = read_checkpoint(path)
    assert saved["config"]["calibration"] == "continuous"
    assert saved["extra"]["config_changes"] == [{"calibration": ["binary", "continuous"]}]
    with pytest.raises(ValueError, match="not AffordanceConfig fields"):
        update_checkpoint_config(path, calibrate="binary")
    with pytest.raises(ValueError, match="calibration must be one of"):
        update_checkpoint_config(path, calibration="sometimes")
    assert read_checkpoint(path)["config"]["calibration"] == "continuous"
    update_checkpoint_config(path, inference_branch="exo")
    assert read_checkpoint(path)["config"]["inference_branch"] == "exo"
    with pytest.raises(ValueError, match="pixel decoder"):
        update_checkpoint_config(path, inference_branch="pixel")


def test_gap_to_affinity_is_zero_for_the_affinity_itself_and_brackets_its_mean(tiny_agd_root):
    from affordance_core import create_model
    from affordance_core.backbones import minmax
    from affordance_core.data import AffordanceTestDataset
    from training.demo import gap_to_affinity

    torch.manual_seed(0)
    model = create_model("tiny", vocabulary=["hold", "cut_with", "sit_on"], pretrained=False,
                         method="selectivecl").eval()
    dataset = AffordanceTestDataset(tiny_agd_root, "Seen", model.image_size,
                                    vocabulary=model.vocabulary)
    gap = gap_to_affinity(model, dataset, resamples=200)
    assert set(gap) == {"KLD", "SIM", "NSS"}
    assert any(abs(g["mean"]) > 1e-6 for g in gap.values())
    for g in gap.values():
        assert g["low"] <= g["mean"] <= g["high"]
    model.maps_from_features = lambda feats, labels: minmax(
        model.affinity(feats.clip, labels, "ego"))
    same = gap_to_affinity(model, dataset, resamples=200)
    for g in same.values():
        assert abs(g["mean"]) < 1e-6 and abs(g["low"]) < 1e-6 and abs(g["high"]) < 1e-6


def test_extracted_test_set_scores_like_the_dataset_and_refuses_other_backbones(tiny_agd_root):
    from affordance_core import create_model
    from affordance_core.data import AffordanceTestDataset
    from training.evaluate import evaluate_model, extract_test_set, select_inference

    cpu = torch.device("cpu")
    vocab = ["hold", "cut_with", "sit_on"]
    torch.manual_seed(0)
    model = create_model("tiny", vocabulary=vocab, pretrained=False,
                         method="selectivecl").eval()
    dataset = AffordanceTestDataset(tiny_agd_root, "Seen", model.image_size, vocabulary=vocab)
    extracted = extract_test_set(model, dataset, device=cpu, batch_size=4)
    assert len(extracted) == len(dataset)
    direct = evaluate_model(model, dataset, device=cpu, batch_size=4, progress=False)
    shared = evaluate_model(model, extracted, device=cpu, progress=False)
    for key in ("KLD", "SIM", "NSS"):
        assert shared[key] == pytest.approx(direct[key], abs=1e-5)
    assert shared["per_affordance"].keys() == direct["per_affordance"].keys()
    best, scores = select_inference(model, extracted, device=cpu)
    scores_direct = select_inference(model, dataset, device=cpu)[1]
    assert scores.keys() == scores_direct.keys()
    for key, values in scores.items():   # batches of 32 vs 4: float32 sums differ slightly
        assert values == pytest.approx(scores_direct[key], rel=1e-3)
    kld = {k: v["KLD"] for k, v in scores.items()}
    assert kld[f"{best['inference_branch']}/{best['calibration']}"] == min(kld.values())
    torch.manual_seed(1)
    other = create_model("tiny", vocabulary=vocab, pretrained=False).eval()
    with pytest.raises(ValueError, match="other backbones"):
        evaluate_model(other, extracted, device=cpu, progress=False)
    with pytest.raises(ValueError, match="viz_dir needs the images"):
        evaluate_model(model, extracted, device=cpu, viz_dir="unused", progress=False)
