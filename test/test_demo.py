"""The demo pipeline end to end on a tiny budget: two splits in two processes, validation-chosen
inference branch and calibration written into the checkpoint, report and figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from affordance_core.checkpoint import read_checkpoint, save_model, update_checkpoint_config
from training.demo import SPLITS, run_demo

TINY_BUDGET = {
    "corpus": {"n_exo_per_pair": 1, "n_ego_per_pair": 1, "n_test_per_pair": 1, "n_background": 2},
    "iters": 4,
    "batch_size": 4,
    "methods": ("ce", "selectivecl", "selectivecl_paper"),
    "node_seconds": 0,
}
PLANNER = ("peak_hit", "mask_iou", "action_sensitivity", "absence_auroc", "empty_on_background")


def test_demo_trains_both_splits_in_two_processes_and_reports(tmp_path):
    from affordance_core import load_model
    from affordance_core.backbones import minmax
    from affordance_core.data import AffordanceTestDataset
    from affordance_core.metrics import MetricAccumulator
    from training.evaluate import evaluate_model, feature_batches

    results = run_demo(tmp_path, budget=TINY_BUDGET, jobs=2)
    for split in SPLITS:
        rows = results["splits"][split]
        n = rows["ce"]["n"]
        for name in (
            "ce",
            "selectivecl",
            "selectivecl_paper",
            "uniform map",
            "centre Gaussian",
            "object affinity alone",
        ):
            assert all(math.isfinite(rows[name][m]) for m in ("KLD", "SIM", "NSS")), name
            assert all(0.0 <= rows[name][m] <= 1.0 for m in PLANNER), name
            assert rows[name]["n"] == n > 0 and rows[name]["n_background"] == 2
            assert rows[name]["per_image"]["key"] == rows["ce"]["per_image"]["key"]
        # a constant map ties every action and every pair: chance level exactly
        assert rows["uniform map"]["action_sensitivity"] == 0.5
        assert rows["uniform map"]["absence_auroc"] == 0.5
        for name in ("ce", "selectivecl"):
            run = tmp_path / "runs" / split / name
            record = json.loads((run / "validation.json").read_text())
            # 3 branches x 4 calibrations at step 4, then budgets 1 and 2, on validation only
            assert record["candidates"] == 14 and record["val_root"].endswith("data_val")
            chosen = f"{record['inference_branch']}/{record['calibration']}"
            final = {k: v["KLD"] for k, v in record["scores"].items() if k.startswith("4/")}
            assert final[f"4/{chosen}"] == min(final.values())
            budgets = {
                int(k.split("/")[0]): v["KLD"]
                for k, v in record["scores"].items()
                if k.endswith(f"/{chosen}")
            }
            assert sorted(budgets) == [1, 2, 4]
            assert budgets[record["step"]] == min(budgets.values())
            saved = read_checkpoint(run / "model.pt")
            assert saved["config"]["calibration"] == record["calibration"]
            assert saved["config"]["inference_branch"] == record["inference_branch"]
            assert rows[name]["inference"]["step"] == record["step"]
        paper = read_checkpoint(tmp_path / "runs" / split / "selectivecl_paper" / "model.pt")
        assert (
            paper["config"]["inference_branch"],
            paper["config"]["calibration"],
            paper["config"]["proj_residual"],
            paper["config"]["exo_cue"],
        ) == ("ego", "binary", False, "prompt")
        assert rows["selectivecl_paper"]["inference"] is None
        assert not (tmp_path / "runs" / split / "selectivecl_paper" / "validation.json").exists()
        for rival in ("object affinity alone", "ce"):
            gap = rows["selectivecl"]["gaps"][rival]
            kld = np.asarray(rows["selectivecl"]["per_image"]["KLD"]) - np.asarray(
                rows[rival]["per_image"]["KLD"]
            )
            assert gap["KLD"]["mean"] == pytest.approx(float(kld.mean()))
            assert all(
                g["low"] <= g["mean"] <= g["high"]
                for g in gap.values()
                if math.isfinite(g["mean"])
            )
        assert (tmp_path / f"overlays_{split}.png").stat().st_size > 0
        assert [p for p in tmp_path.glob(f"actions_{split}_*.png") if p.stat().st_size > 0]
        # values, not only finiteness: a constant map has NSS 0; the reported test row and
        # the chosen validation score are those of the saved checkpoint, rescored here; the
        # affinity row is the min-max affinity of the same images
        assert rows["uniform map"]["NSS"] == 0.0
        assert 0.0 < rows["uniform map"]["SIM"] < 1.0
        model = load_model(tmp_path / "runs" / split / "selectivecl" / "model.pt").eval()
        record = json.loads(
            (tmp_path / "runs" / split / "selectivecl" / "validation.json").read_text()
        )
        chosen = f"{record['step']}/{record['inference_branch']}/{record['calibration']}"
        for root, figures in (
            (tmp_path / "data", rows["selectivecl"]),
            (tmp_path / "data_val", record["scores"][chosen]),
        ):
            data = AffordanceTestDataset(
                root, split, model.image_size, vocabulary=model.vocabulary
            )
            again = evaluate_model(model, data, device=torch.device("cpu"), progress=False)
            for key in ("KLD", "SIM", "NSS"):
                assert figures[key] == pytest.approx(again[key], abs=1e-3), (root, key)
        data = AffordanceTestDataset(
            tmp_path / "data", split, model.image_size, vocabulary=model.vocabulary
        )
        affinity = MetricAccumulator()
        with torch.inference_mode():
            for feats, labels, gt, _ in feature_batches(model, data, device=torch.device("cpu")):
                affinity.update(minmax(model.affinity(feats.clip, labels, "ego")), gt)
        for key in ("KLD", "SIM", "NSS"):
            assert rows["object affinity alone"][key] == pytest.approx(
                affinity.compute()[key], abs=1e-3
            )
        assert (tmp_path / "runs" / split / "demo.log").is_file()
    # the validation corpus holds the training categories only, from another seed
    val = json.loads((tmp_path / "data_val" / "corpus.json").read_text())
    pairs = val["stats"]["pairs"]["Unseen"]
    assert sorted(map(tuple, pairs["test"])) == sorted(map(tuple, pairs["train"]))
    assert val["params"]["seed"] != results["corpus"]["params"]["seed"]
    text = (tmp_path / "results.md").read_text()
    assert "## Seen" in text and "## Unseen" in text and "absence AUROC" in text
    assert "interval over (action, object) pairs" in text
    public = json.loads((tmp_path / "results.json").read_text())
    assert public["jobs"] == 2 and "per_image" not in public["splits"]["Seen"]["ce"]
    for split in SPLITS:
        pairs = public["peak_hit_per_pair"][split]
        objects = [name.split("/")[1] for name in pairs]
        assert all(objects.count(obj) >= 2 for obj in objects)
        assert all(0.0 <= v <= 1.0 for row in pairs.values() for v in row.values())
    assert "Peak hit per (action, object) pair" in text


def test_per_pair_metric_by_hand():
    from training.demo.report import per_pair_metric, per_pair_table

    keys = ["hold/knife/a", "hold/knife/b", "cut_with/knife/c", "sit_on/chair/d"]
    rows = {
        "m": {"per_image": {"key": keys, "peak_hit": [1.0, 0.0, 1.0, 1.0]}},
        "baseline": {"per_image": {"key": keys[::-1], "peak_hit": [0.0, 0.5, 0.5, 0.5]}},
    }
    pairs = per_pair_metric(rows)
    assert pairs == {
        "cut_with/knife": {"m": 1.0, "baseline": 0.5},
        "hold/knife": {"m": 0.5, "baseline": 0.5},
    }
    assert per_pair_table(pairs)[2] == "| knife | cut_with | 1.000 | 0.500 |"


def test_update_checkpoint_config_rewrites_only_valid_fields(tmp_path):
    from affordance_core import create_model

    model = create_model("tiny", vocabulary=["hold", "cut_with"], method="selectivecl")
    path = save_model(tmp_path / "model.pt", model)
    update_checkpoint_config(path, calibration="reference")
    saved = read_checkpoint(path)
    assert saved["config"]["calibration"] == "reference"
    assert saved["extra"]["config_changes"] == [{"calibration": ["binary", "reference"]}]
    with pytest.raises(ValueError, match="not AffordanceConfig fields"):
        update_checkpoint_config(path, calibrate="binary")
    with pytest.raises(ValueError, match="calibration must be one of"):
        update_checkpoint_config(path, calibration="sometimes")
    assert read_checkpoint(path)["config"]["calibration"] == "reference"
    update_checkpoint_config(path, inference_branch="exo")
    assert read_checkpoint(path)["config"]["inference_branch"] == "exo"
    with pytest.raises(ValueError, match="pixel decoder"):
        update_checkpoint_config(path, inference_branch="pixel")


def test_paired_gap_of_a_row_to_itself_is_zero_and_to_the_affinity_matches_by_hand(tiny_agd_root):
    from affordance_core import create_model
    from affordance_core.data import AffordanceTestDataset
    from training.baselines import baselines_of
    from training.demo import score_rows
    from training.evaluate import extract_test_set
    from training.stats import paired_gaps

    torch.manual_seed(0)
    model = create_model(
        "tiny", vocabulary=["hold", "cut_with", "sit_on"], pretrained=False, method="selectivecl"
    ).eval()
    dataset = AffordanceTestDataset(
        tiny_agd_root, "Seen", model.image_size, vocabulary=model.vocabulary
    )
    extracted = extract_test_set(model, dataset, device=torch.device("cpu"))
    rows = score_rows({"selectivecl": model, **baselines_of(model)}, extracted)
    rows["copy"] = rows["selectivecl"]
    same = paired_gaps(rows, "selectivecl", "copy", resamples=200)
    for g in same.values():
        assert g["mean"] == g["low"] == g["high"] == 0.0
    gap = paired_gaps(rows, "selectivecl", "object affinity alone", resamples=200)
    ours = np.asarray(rows["selectivecl"]["per_image"]["SIM"])
    theirs = np.asarray(rows["object affinity alone"]["per_image"]["SIM"])
    assert gap["SIM"]["mean"] == pytest.approx(float((ours - theirs).mean()))
    assert gap["SIM"]["pairs"] == 3 and abs(gap["SIM"]["mean"]) > 1e-6
    # the uniform map is scored as it is (not min-max'ed to zeros): the protocol's uniform KLD
    uniform = rows["uniform map"]
    assert uniform["SIM"] > 0 and uniform["NSS"] == 0.0 and uniform["KLD"] < 10


def test_extracted_test_set_scores_like_the_dataset_and_refuses_other_backbones(tiny_agd_root):
    from affordance_core import create_model
    from affordance_core.data import AffordanceTestDataset
    from training.evaluate import evaluate_model, extract_test_set, select_inference

    cpu = torch.device("cpu")
    vocab = ["hold", "cut_with", "sit_on"]
    torch.manual_seed(0)
    model = create_model("tiny", vocabulary=vocab, pretrained=False, method="selectivecl").eval()
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
    for key, values in scores.items():  # batches of 32 vs 4: float32 sums differ slightly
        assert values == pytest.approx(scores_direct[key], rel=1e-3)
    kld = {k: v["KLD"] for k, v in scores.items()}
    assert kld[f"{best['inference_branch']}/{best['calibration']}"] == min(kld.values())
    torch.manual_seed(1)
    other = create_model("tiny", vocabulary=vocab, pretrained=False).eval()
    with pytest.raises(ValueError, match="other backbones"):
        evaluate_model(other, extracted, device=cpu, progress=False)
    with pytest.raises(ValueError, match="viz_dir needs the images"):
        evaluate_model(model, extracted, device=cpu, viz_dir="unused", progress=False)


def test_a_finished_run_is_reused_only_under_the_same_code_and_arguments(
    tmp_path, monkeypatch, capsys
):
    """`make demo` on an existing output folder: a run trained by other code (another source
    fingerprint) or with other arguments is trained again; the same one is reused."""
    import training.train
    from training.demo import pipeline

    calls = []

    def fake_train(args):
        calls.append(list(args))
        out = tmp_path / "run"
        (out / "model.pt").write_bytes(b"model")
        return 0

    monkeypatch.setattr(training.train, "main", fake_train)
    run = tmp_path / "run"

    def train(seed=0):
        return pipeline.train_method(
            "ce", tmp_path / "data", "Seen", run, TINY_BUDGET, tmp_path / "cache", seed
        )

    assert train() == run / "model.pt" and len(calls) == 1
    assert train() == run / "model.pt" and len(calls) == 1  # reused
    assert "reusing" in capsys.readouterr().out
    train(seed=1)  # other arguments
    assert len(calls) == 2
    monkeypatch.setattr(pipeline, "source_fingerprint", lambda: "other code")
    (run / "stale.txt").write_text("left by the old run")
    train(seed=1)
    assert len(calls) == 3 and not (run / "stale.txt").exists()
    assert "training ce (Seen) again" in capsys.readouterr().out
    (run / "model.pt").unlink()
    (run / "run_key.json").unlink()  # a run from before run keys: not reused
    (run / "model.pt").write_bytes(b"old")
    train(seed=1)
    assert len(calls) == 4


def test_benchmark_rows_are_reused_only_under_the_same_source(tmp_path, monkeypatch):
    import training.demo
    from training import benchmark

    runs = []

    def fake_demo(out, **kwargs):
        runs.append(out)
        out.mkdir(parents=True, exist_ok=True)
        return {"splits": {"Seen": {"rows": len(runs)}}}

    monkeypatch.setattr(training.demo, "run_demo", fake_demo)
    first = benchmark.seed_rows(tmp_path, 21, 1, TINY_BUDGET)
    assert benchmark.seed_rows(tmp_path, 21, 1, TINY_BUDGET) == first and len(runs) == 1
    monkeypatch.setattr(benchmark, "source_fingerprint", lambda: "other code")
    assert benchmark.seed_rows(tmp_path, 21, 1, TINY_BUDGET) != first and len(runs) == 2


def test_a_cached_corpus_is_rebuilt_when_its_generator_changes(tmp_path, monkeypatch, capsys):
    """The corpus stamp holds the generator's source fingerprint: the same parameters and
    generator reuse the corpus, another generator writes it again."""
    import affordance_core.synthetic.corpus as corpus
    from training.demo import pipeline

    writes = []

    class Stats:
        def to_dict(self):
            return {"n_written": len(writes)}

    def fake_write(root, **kwargs):
        writes.append(root)
        return Stats()

    monkeypatch.setattr(corpus, "write_agd_corpus", fake_write)
    (tmp_path / "data").mkdir()
    budget = {"corpus": {"n_test_per_pair": 2}}
    first = pipeline.make_corpus(tmp_path / "data", budget, seed=7)
    assert pipeline.make_corpus(tmp_path / "data", budget, seed=7) == first and len(writes) == 1
    assert "reusing corpus" in capsys.readouterr().out
    monkeypatch.setattr(pipeline, "generator_fingerprint", lambda: "another generator")
    second = pipeline.make_corpus(tmp_path / "data", budget, seed=7)
    assert len(writes) == 2 and second["params"]["generator"] == "another generator"
