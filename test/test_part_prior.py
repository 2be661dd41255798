"""The hand-region part prior: the interaction patches by hand, the fit on descriptors whose
actions are known, the map rule inside ``AffordanceModel.infer``, checkpoints, and the fit that
affordance-train runs before training."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
import torch.nn.functional as F

from affordance_core.part_prior import fit_part_prior, interaction_patches


def test_interaction_patches_are_the_salient_3x3_around_the_hand():
    saliency = torch.zeros(1, 6, 6)
    saliency[0, 1:5, 1:5] = 1.0  # the object
    hand = torch.zeros(1, 6, 6)
    hand[0, 4, 4] = 1.0  # hand on the object's corner
    hand[0, 0, 0] = 2.0  # a stronger hand-like patch off the object loses to saliency
    region = interaction_patches(hand, saliency)
    expected = torch.zeros(1, 6, 6, dtype=torch.bool)
    expected[0, 3:5, 3:5] = True  # the 3x3 around (4, 4), cut to the salient patches
    assert torch.equal(region, expected)
    assert interaction_patches(hand, saliency, radius=0).nonzero().tolist() == [[0, 4, 4]]
    with pytest.raises(ValueError, match="radius"):
        interaction_patches(hand, saliency, radius=-1)


def test_hand_reach_lets_the_hand_lie_beside_the_object():
    """With reach r the hand may be up to r patches off the salient object: the region is then
    the object's patches next to it; farther hand-like patches still lose."""
    from affordance_core.part_prior import hand_patch

    saliency = torch.zeros(1, 8, 8)
    saliency[0, 2:5, 2:5] = 1.0  # the object
    hand = torch.zeros(1, 8, 8)
    hand[0, 3, 3] = 0.5  # a weaker hand-like patch on the object
    hand[0, 3, 5] = 1.0  # the hand, one patch right of the object
    hand[0, 7, 7] = 2.0  # stronger, but three patches away
    assert hand_patch(hand, saliency).tolist() == [3 * 8 + 3]
    assert hand_patch(hand, saliency, reach=1).tolist() == [3 * 8 + 5]
    assert hand_patch(hand, saliency, reach=2).tolist() == [3 * 8 + 5]
    assert hand_patch(hand, saliency, reach=3).tolist() == [7 * 8 + 7]
    region = interaction_patches(hand, saliency, reach=1)
    assert region[0].nonzero().tolist() == [[2, 4], [3, 4], [4, 4]]
    with pytest.raises(ValueError, match="reach"):
        hand_patch(hand, saliency, reach=-1)


def _exo_batch(num_classes: int, n: int, dim: int = 8, seed: int = 0):
    """Images whose one-patch region has key direction e_<label> (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    keys = 0.3 * torch.randn(n, dim, 5, 5, generator=g)
    keys[torch.arange(n), labels, 2, 2] += 3.0
    region = torch.zeros(n, 5, 5, dtype=torch.bool)
    region[:, 2, 2] = True
    return keys, region, labels


def test_fit_recovers_each_actions_part_direction():
    batches = [_exo_batch(3, 30, seed=s) for s in range(2)]
    fit = fit_part_prior(batches, num_classes=4)  # action 3 never shows up
    assert fit.n_images == 60 and fit.n_patches == 60
    assert fit.patches_per_action == {0: 20, 1: 20, 2: 20}
    assert fit.train_accuracy == 1.0
    assert fit.weight.shape == (4, 8) and fit.bias[3] == -30.0
    probe = F.normalize(torch.eye(8)[:3], dim=1)  # descriptors pointing at e_0, e_1, e_2
    prob = (probe @ fit.weight.T + fit.bias).softmax(1)
    assert prob.argmax(1).tolist() == [0, 1, 2]
    assert (prob[:, 3] < 1e-6).all()
    # two actions: the binary solution still gives one softmax row per action
    two = fit_part_prior([_exo_batch(2, 20)], num_classes=2)
    prob = (F.normalize(torch.eye(8)[:2], dim=1) @ two.weight.T + two.bias).softmax(1)
    assert prob.argmax(1).tolist() == [0, 1]


def test_fit_refuses_data_without_two_actions():
    with pytest.raises(ValueError, match="at least two actions"):
        fit_part_prior([_exo_batch(1, 4)], num_classes=2)
    with pytest.raises(ValueError, match="no interaction patch"):
        fit_part_prior([], num_classes=2)


@pytest.fixture(scope="module")
def prior_model():
    from affordance_core import create_model

    torch.manual_seed(0)
    return create_model(
        "tiny", vocabulary=["hold", "cut_with", "sit_on"], pretrained=False, part_prior=True
    ).eval()


def test_infer_multiplies_the_minmax_map_by_the_part_probability(prior_model):
    import dataclasses

    from affordance_core.backbones import minmax
    from affordance_core.part_prior import PartPriorFit

    model = prior_model
    feats = model.extract(torch.rand(2, 3, model.image_size, model.image_size))
    ids = torch.tensor([[0, 2], [1, 1]])
    g = torch.Generator().manual_seed(1)
    fit = PartPriorFit(
        torch.randn(3, model.dino.dim, generator=g), torch.randn(3, generator=g), 1, 1
    )
    model.set_part_prior(fit)
    with torch.inference_mode():
        maps, scores = model.infer(feats, ids)
        original = model.config
        plain = dataclasses.replace(original, part_prior=False)
        prior, model.part_prior = model.part_prior, None
        model.config = plain
        try:
            raw, raw_scores = model.infer(feats, ids)
        finally:
            model.part_prior, model.config = prior, original
        keys = F.normalize(feats.keys, dim=1)
        prob = (torch.einsum("cd,ndhw->nchw", fit.weight, keys) + fit.bias[:, None, None]).softmax(
            1
        )
    expected = minmax(raw) * prob.gather(1, ids[:, :, None, None].expand(-1, -1, 14, 14))
    assert torch.allclose(maps, expected, atol=1e-5)
    assert torch.equal(scores, raw_scores)  # the presence score does not read the prior
    with pytest.raises(ValueError, match="do not fit"):
        model.set_part_prior(PartPriorFit(torch.zeros(2, 5), torch.zeros(2), 1, 1))


def test_temperature_sharpens_the_prior_without_reordering_actions(prior_model):
    import dataclasses

    from affordance_core import AffordanceConfig
    from affordance_core.part_prior import PartPriorFit

    model = prior_model
    g = torch.Generator().manual_seed(2)
    model.set_part_prior(
        PartPriorFit(
            torch.randn(3, model.dino.dim, generator=g), torch.randn(3, generator=g), 1, 1
        )
    )
    keys = model.extract(torch.rand(2, 3, model.image_size, model.image_size)).keys
    every = torch.arange(3).expand(2, -1)
    original = model.config
    try:
        with torch.inference_mode():
            plain = model.part_probability(keys, every)
            model.config = dataclasses.replace(original, part_prior_temperature=0.5)
            sharp = model.part_probability(keys, every)
    finally:
        model.config = original
    assert original.part_prior_temperature == 1.0
    # softmax(logits / 0.5) is the plain softmax squared, renormalised over the actions
    assert torch.allclose(sharp, plain**2 / (plain**2).sum(1, keepdim=True), atol=1e-5)
    assert torch.equal(sharp.argmax(1), plain.argmax(1))
    assert (sharp.amax(1) >= plain.amax(1) - 1e-6).all()
    for bad in (0, -1.0, float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(ValueError, match="part_prior_temperature must be a finite number > 0"):
            AffordanceConfig(part_prior_temperature=bad)
    assert AffordanceConfig().part_prior_hand_reach == 0  # checkpoints that do not record it
    for bad in (-1, True, 1.5, "2"):
        with pytest.raises(ValueError, match="part_prior_hand_reach must be an integer >= 0"):
            AffordanceConfig(part_prior_hand_reach=bad)


def test_temperature_is_chosen_on_validation_by_the_metric(prior_model):
    from affordance_core.feature_cache import backbone_fingerprint
    from training import evaluate

    model = prior_model
    feats = model.extract(torch.rand(3, 3, model.image_size, model.image_size))
    labels = torch.tensor([0, 1, 2])
    gt = torch.zeros(3, 32, 32)
    gt[:, 4:12, 4:12] = 1.0
    data = evaluate.ExtractedTestSet([(feats, labels, gt, {})], backbone_fingerprint(model), None)
    best, scores = evaluate.select_part_prior_temperature(
        model, data, device=torch.device("cpu"), temperatures=(1.0, 0.5, 0.25)
    )
    assert set(scores) == {"1.0", "0.5", "0.25"}
    assert scores[str(best)]["KLD"] == min(v["KLD"] for v in scores.values())
    # each candidate scores the maps the model infers with that temperature
    import dataclasses

    from affordance_core.metrics import MetricAccumulator, prepare_prediction

    original = model.config
    for t in (1.0, 0.25):
        model.config = dataclasses.replace(original, part_prior_temperature=t)
        try:
            acc = MetricAccumulator()
            maps = model.maps_from_features(feats, labels)
            acc.update(prepare_prediction(maps, size=(32, 32)), gt, prepared=True)
        finally:
            model.config = original
        expected = acc.compute()
        for metric in ("KLD", "SIM", "NSS"):
            assert scores[str(t)][metric] == pytest.approx(expected[metric], rel=1e-5)
    assert model.config.part_prior_temperature == 1.0  # left as it was
    best_nss, by_nss = evaluate.select_part_prior_temperature(
        model, data, device=torch.device("cpu"), temperatures=(1.0, 0.5), metric="NSS"
    )
    assert by_nss[str(best_nss)]["NSS"] == max(v["NSS"] for v in by_nss.values())
    with pytest.raises(ValueError, match="temperatures must be numbers > 0"):
        evaluate.select_part_prior_temperature(
            model, data, device=torch.device("cpu"), temperatures=(1.0, 0.0)
        )
    prior, model.part_prior = model.part_prior, None
    try:
        with pytest.raises(ValueError, match="no part prior"):
            evaluate.select_part_prior_temperature(model, data, device=torch.device("cpu"))
    finally:
        model.part_prior = prior


def test_part_prior_is_saved_and_needs_clip(tmp_path, prior_model, random_tiny_weights):
    from affordance_core import AffordanceConfig, load_model, save_model

    path = tmp_path / "model.pt"
    save_model(path, prior_model)
    loaded = load_model(path, weights_dir=random_tiny_weights)
    assert loaded.config.part_prior
    assert torch.equal(loaded.part_prior.weight, prior_model.part_prior.weight)
    assert not any(
        p is loaded.part_prior.weight for g in loaded.param_groups(1.0) for p in g["params"]
    )
    with pytest.raises(ValueError, match="part_prior needs a CLIP-role backbone"):
        AffordanceConfig(clip=None, part_prior=True)


def test_affordance_train_fits_the_prior_before_training(
    tmp_path, make_agd_tree, random_tiny_weights
):
    from affordance_core import load_model
    from training import train

    root = make_agd_tree(tmp_path / "data", split="Seen", n_exo=3, n_ego=2, n_test=2, seed=1)
    run = tmp_path / "run"
    args = [
        "--data-root", str(root.parent), "--split", "Seen", "--method", "locate",
        "--out", str(run), "--iters", "2", "--weights-dir", str(random_tiny_weights),
        "--batch-size", "2", "--num-workers", "0", "--no-progress", "--cache-features",
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        assert train.main(args) == 0
    model = load_model(run / "model.pt", weights_dir=random_tiny_weights)
    assert model.config.part_prior
    assert model.config.part_prior_hand_reach == 2  # training/configs/default.yaml
    assert model.part_prior.weight.abs().sum() > 0  # fitted, not the uniform start
    assert "part prior:" in (run / "train.log").read_text()


def _probe_corpora(root):
    """A training corpus (seed 3, three exo images per pair) and a validation corpus (seed 4)
    of the knife and the cup under ``root``; returns the training vocabulary."""
    from affordance_core.data import resolve_vocabulary
    from affordance_core.synthetic import write_agd_corpus

    objects = {"Seen": {"train": ["knife", "cup"], "test": ["knife", "cup"]}}
    sizes = {"n_ego_per_pair": 1, "n_test_per_pair": 2, "n_background": 1, "progress": False}
    write_agd_corpus(root / "train", seed=3, split_objects=objects, n_exo_per_pair=3, **sizes)
    write_agd_corpus(root / "val", seed=4, split_objects=objects, n_exo_per_pair=1, **sizes)
    return resolve_vocabulary(root / "train", "Seen")


def test_parts_probe_reports_every_stage_and_checks_the_corpus_seed(tmp_path):
    """The diagnosis probe on a small corpus: every stage is reported with shares in [0, 1],
    the grid ceiling is near perfect, and a wrong corpus seed is refused by name."""
    from affordance_core import create_model, save_model
    from training.probes.parts import probe_parts

    vocabulary = _probe_corpora(tmp_path)
    torch.manual_seed(0)
    save_model(tmp_path / "model.pt", create_model("tiny", vocabulary=vocabulary))
    result = probe_parts(tmp_path / "model.pt", tmp_path / "train", 3, tmp_path / "val")
    exo = result["exo"]
    assert exo["n"] == 3 * 5  # five (action, object) training pairs
    for key in ("hand_pointing", "part_precision", "chance", "oracle_hand_precision"):
        assert 0.0 <= exo[key] <= 1.0, key
    assert len(result["ego"]) == 7
    for name, metrics in result["ego"].items():
        assert 0.0 <= metrics["peak_hit"] <= 1.0, name
    assert result["ego"]["GT pooled to the patch grid: ceiling"]["peak_hit"] > 0.9
    # a model with a sharper prior: each prior row at its temperature and again at T = 1
    torch.manual_seed(0)
    sharp = create_model("tiny", vocabulary=vocabulary, part_prior_temperature=0.5)
    save_model(tmp_path / "sharp.pt", sharp)
    rows = probe_parts(tmp_path / "sharp.pt", tmp_path / "train", 3, tmp_path / "val")["ego"]
    priors = [name for name in result["ego"] if name.startswith("x prior")]
    assert set(rows) == set(result["ego"]) | {f"{name}, T = 1" for name in priors}
    for name in priors:  # T = 1 reproduces the plain model's rows
        assert rows[f"{name}, T = 1"] == result["ego"][name]
    # other hand reaches: the model's own (0) reproduces the hand-finder row
    reached = probe_parts(
        tmp_path / "model.pt", tmp_path / "train", 3, tmp_path / "val", hand_reaches=(0, 2)
    )
    assert (
        reached["ego"]["x prior (hand finder, reach 0)"] == result["ego"]["x prior (hand finder)"]
    )
    assert reached["exo"]["part_precision_reach_0"] == exo["part_precision"]
    assert 0.0 <= reached["exo"]["part_precision_reach_2"] <= 1.0
    assert 0.0 <= reached["ego"]["x prior (hand finder, reach 2)"]["peak_hit"] <= 1.0
    with pytest.raises(ValueError, match="--train-seed"):
        probe_parts(tmp_path / "model.pt", tmp_path / "train", 5, tmp_path / "val")


def test_parts_probe_prior_row_is_what_a_model_with_that_prior_scores(tmp_path):
    """The probe's hand-finder row, maps and presence gate included, is the validation result
    of a model whose prior ``affordance-train`` fitted on the same exo images."""
    from affordance_core import create_model, save_model
    from affordance_core.data import AffordanceTestDataset, BackgroundFrames
    from affordance_core.data.datasets import AffordanceTrainDataset
    from training.evaluate import evaluate_model
    from training.part_prior import fit_training_part_prior
    from training.probes.parts import EGO_METRICS, probe_parts

    vocabulary = _probe_corpora(tmp_path)
    torch.manual_seed(0)
    model = create_model(
        "tiny",
        vocabulary=vocabulary,
        part_prior=True,
        part_prior_temperature=0.5,
        score_map_weight=4.0,  # the gate reads the map's peak
        score_bias=-2.0,
    ).eval()
    train_set = AffordanceTrainDataset(tmp_path / "train", "Seen", model.image_size, vocabulary)
    fit_training_part_prior(model, train_set, progress=False)
    save_model(tmp_path / "model.pt", model)
    val = AffordanceTestDataset(tmp_path / "val", "Seen", model.image_size, vocabulary=vocabulary)
    background = BackgroundFrames(tmp_path / "val", "Seen", model.image_size)
    with torch.no_grad():
        own = evaluate_model(model, val, device=torch.device("cpu"), background=background)
    row = probe_parts(tmp_path / "model.pt", tmp_path / "train", 3, tmp_path / "val")["ego"][
        "x prior (hand finder)"
    ]
    for key in EGO_METRICS:
        assert row[key] == pytest.approx(own[key], abs=2e-4), key


def test_readout_probe_reproduces_the_prior_rows_and_reads_finer_grids(tmp_path):
    """The read-out probe on a small corpus: its last-block row is the parts probe's prior
    row (the same fit on the same keys), every block and the finer grid are reported, and a
    size that is not a multiple of the patch is refused."""
    from affordance_core import create_model, save_model
    from training.probes.parts import probe_parts
    from training.probes.readout import dino_at_size, probe_readout

    vocabulary = _probe_corpora(tmp_path)
    torch.manual_seed(0)
    model = create_model("tiny", vocabulary=vocabulary)
    save_model(tmp_path / "model.pt", model)
    args = (tmp_path / "model.pt", tmp_path / "train", 3, tmp_path / "val")
    rows = probe_readout(*args, sizes=(168,))["rows"]
    depth = len(model.dino.vit.blocks)
    last = depth - 1
    names = [f"block {b}" for b in range(depth)] + [f"blocks {last - 1}+{last}"]
    names.append("last block at 168 px")
    assert set(rows) == {f"{n}, {r}" for n in names for r in ("hand finder", "true part")}
    assert rows["last block at 168 px, hand finder"]["grid"] == 21
    for name, row in rows.items():
        assert 0.0 <= row["part_share"] <= 1.0, name
        assert 0.0 <= row["T = 1"]["peak_hit"] <= 1.0, name
    parts = probe_parts(*args)["ego"]
    assert rows[f"block {last}, hand finder"]["T = 1"] == parts["x prior (hand finder)"]
    assert rows[f"block {last}, true part"]["T = 1"] == parts["x prior (true part): ceiling"]
    with pytest.raises(ValueError, match="multiple of the patch size"):
        dino_at_size(model.dino, 100)


def test_heldout_folds_hold_out_training_categories_whose_parts_stay_taught():
    """Each fold of the category-held-out probe tests only Unseen training categories (never
    an Unseen test category), and every tested part is taught, for its action, by a remaining
    category; a fold that would leave a part untaught is named."""
    from affordance_core.synthetic.corpus import DEFAULT_SPLIT_OBJECTS
    from training.probes.heldout import HELDOUT_FOLDS, fold_objects, uncovered_pairs

    for held_out in HELDOUT_FOLDS:
        objs = fold_objects(held_out)["Unseen"]
        assert set(objs["test"]) == set(held_out)
        assert not set(objs["train"]) & set(held_out)
        assert set(objs["train"]) | set(held_out) == set(DEFAULT_SPLIT_OBJECTS["Unseen"]["train"])
        assert uncovered_pairs(held_out) == []
    assert uncovered_pairs(["cup"]) == [("drink_with", "cup", "rim"), ("pour", "cup", "rim")]
    with pytest.raises(ValueError, match="not Unseen training categories"):
        fold_objects(["mug"])


def test_heldout_probe_trains_each_fold_and_scores_only_its_held_out_categories(tmp_path):
    """One fold end to end with the demo's --quick budget: the model trains on the remaining
    categories, the probe scores the held-out ones with each reach, the mean of one fold is
    that fold."""
    from training.probes.heldout import probe_heldout

    kwargs = {"folds": (("hammer", "knife"),), "hand_reaches": (0, 2), "n_test_per_pair": 2}
    result = probe_heldout(tmp_path, quick=True, **kwargs)
    (fold,) = result["folds"]
    assert fold["held_out"] == ["hammer", "knife"]
    # hold and swing on the hammer, hold and cut_with on the knife (hit is not taught)
    assert fold["n_images"] == 4 * 2
    gt = tmp_path / "fold0_hammer_knife/data/Unseen/testset/GT"
    assert sorted(p.name for p in gt.iterdir()) == ["cut_with", "hold", "swing"]
    reached = {"x prior (hand finder, reach 0)", "x prior (hand finder, reach 2)"}
    assert reached <= set(result["mean"])
    for row, metrics in result["mean"].items():
        for key, value in metrics.items():
            assert value == pytest.approx(fold["ego"][row][key], abs=1e-4), (row, key)
