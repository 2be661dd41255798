"""SelectiveCL part-discovery probe (training.probes.discovery) and PartDiscovery's extras."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from affordance_core import create_model
from affordance_core.data import AffordanceTestDataset, AffordanceTrainDataset
from affordance_core.discovery import discover_parts
from training.probes.discovery import main, probe_discovery

VOCAB = ["hold", "cut_with", "sit_on"]


def test_discovery_reports_every_centroid_and_its_score() -> None:
    g = torch.Generator().manual_seed(0)
    exo = torch.randn(3, 2, 8, 5, 5, generator=g)
    maps = torch.rand(3, 2, 5, 5, generator=g)
    ego = torch.randn(3, 8, 5, 5, generator=g)
    sal = torch.rand(3, 5, 5, generator=g) > 0.5
    found = discover_parts(exo, maps, ego, sal, k=3, generator=torch.Generator().manual_seed(1))
    assert found.centroids.shape == (3, 3, 8)
    assert torch.allclose(found.centroids.norm(dim=-1), torch.ones(3, 3))
    assert found.scores.shape == (3, 3)
    best = found.scores.max(1)
    enough = found.enough_points
    assert torch.allclose(found.best_piou[enough], best.values[enough])
    picked = found.centroids[torch.arange(3), best.indices]
    assert torch.allclose(found.centroid[enough], picked[enough])


@pytest.fixture
def probe_inputs(tiny_agd_root: Path):
    torch.manual_seed(0)
    model = create_model("tiny", vocabulary=VOCAB, method="selectivecl", pretrained=False)
    model.eval()
    val = AffordanceTestDataset(tiny_agd_root, "Seen", model.image_size, vocabulary=VOCAB)
    train = AffordanceTrainDataset(
        tiny_agd_root, "Seen", model.image_size, vocabulary=VOCAB, augment=False
    )
    return model, val, train


def test_probe_scores_every_map_on_every_image(probe_inputs) -> None:
    model, val, train = probe_inputs
    result = probe_discovery(model, val, train, batch_size=4)
    n = len(val)
    assert result["n"] == n and 0.0 <= result["reliable_rate"] <= 1.0
    maps = result["maps"]
    for name in (
        "object affinity",
        "chosen part x affinity",
        "GT-part prototype x affinity",
        "GT-nearest cluster x affinity",
    ):
        assert maps[name]["n"] == n
        assert maps[name]["KLD"] >= 0 and 0 <= maps[name]["SIM"] <= 1
    assert maps["mean over clusters"]["n"] == 3 * n
    # the same inputs and seed give the same figures
    assert probe_discovery(model, val, train, batch_size=4) == result
    # the affinity row is the min-max ego-prompt affinity, scored here independently
    expected = affinity_scores(model, val)
    for key in ("KLD", "SIM", "NSS"):
        assert maps["object affinity"][key] == pytest.approx(expected[key], abs=2e-4), key


def affinity_scores(model, val) -> dict[str, float]:
    from affordance_core.backbones import minmax
    from affordance_core.metrics import affordance_metrics, prepare_prediction

    per_image = []
    with torch.no_grad():
        for item in torch.utils.data.DataLoader(val, batch_size=4):
            feats = model.extract(item["image"])
            aff = minmax(model.affinity(feats.clip, item["label"], "ego"))
            gt = item["gt"]
            per_image.append(affordance_metrics(prepare_prediction(aff, size=gt.shape[-2:]), gt))
    return {k: float(torch.cat([m[k] for m in per_image]).mean()) for k in ("KLD", "SIM", "NSS")}


def test_probe_falls_back_to_the_affinity_without_points_and_gates_by_piou(probe_inputs):
    model, val, train = probe_inputs
    # no interaction point clears a region threshold above 1: every part map is the affinity
    empty = probe_discovery(model, val, train, batch_size=4, region_threshold=1.01)
    maps = empty["maps"]
    assert empty["reliable_rate"] == 0.0
    for name in ("chosen part x affinity", "GT-nearest cluster x affinity"):
        assert maps[name] == maps["object affinity"], name
    assert "chosen part x affinity (reliable samples)" not in maps
    # every point kept and alpha = 0: every sample is reliable, so the reliable-only rows
    # are the full rows
    full = probe_discovery(
        model, val, train, batch_size=4, region_threshold=-1.0, piou_threshold=0.0
    )
    maps = full["maps"]
    assert full["reliable_rate"] == 1.0
    assert maps["chosen part x affinity (reliable samples)"] == maps["chosen part x affinity"]
    assert maps["object affinity (reliable samples)"] == maps["object affinity"]
    assert maps["chosen part x affinity"] != maps["object affinity"]


def test_probe_names_a_pair_without_exo_images(
    probe_inputs, tmp_path: Path, make_agd_tree
) -> None:
    model, val, _ = probe_inputs
    make_agd_tree(tmp_path / "other", split="Seen", affordances=("hold",))
    train = AffordanceTrainDataset(
        tmp_path / "other", "Seen", model.image_size, vocabulary=VOCAB, augment=False
    )
    with pytest.raises(ValueError, match="cut_with/obj0"):
        probe_discovery(model, val, train)


def test_probe_cli_writes_json(probe_inputs, tiny_agd_root: Path, tmp_path: Path, capsys) -> None:
    from affordance_core.checkpoint import save_model

    model, _, _ = probe_inputs
    ckpt = tmp_path / "model.pt"
    save_model(ckpt, model)
    out = tmp_path / "probe.json"
    code = main(
        [
            "--checkpoint",
            str(ckpt),
            "--train-root",
            str(tiny_agd_root),
            "--val-root",
            str(tiny_agd_root),
            "--split",
            "Seen",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["split"] == "Seen" and json.loads(out.read_text())["n"] == last["n"]
