"""SelectiveCL by value: its composition on hand-made tensors, and every switch changing the
terms it should and no other."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from affordance_core import create_model
from affordance_core.affinity import exo_object_affinity
from affordance_core.backbones import minmax
from affordance_core.discovery import PartDiscovery, masked_kmeans
from affordance_core.losses import pixel_contrast_loss
from affordance_core.methods import build_method
from affordance_core.methods import locate as locate_module
from affordance_core.methods import selectivecl as methods_module
from affordance_core.methods.selectivecl import (
    anchor_weights,
    background_weights,
    interaction_map,
    part_relevance,
    pixel_labels,
    pixel_threshold,
    reference_exo_rows,
    select_part_maps,
)

VOCAB = ["hold", "cut_with", "pour", "sit_on"]


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    """The batch of test_core.py (generator seed 0)."""
    g = torch.Generator().manual_seed(0)
    return {
        "ego": torch.rand(4, 3, 112, 112, generator=g),
        "exo": torch.rand(4, 3, 3, 112, 112, generator=g),
        "label": torch.tensor([0, 1, 0, 2]),
    }


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny", vocabulary=VOCAB, method="selectivecl", pretrained=False)


@pytest.fixture(scope="module")
def terms(model, batch):
    """Cached ``{(options, progress): {term: float}}`` of one SelectiveCL step."""
    cache: dict = {}

    def get(progress: float = 0.5, **options) -> dict[str, float]:
        key = (tuple(sorted(options.items())), progress)
        if key not in cache:
            with torch.no_grad():
                out = build_method("selectivecl", model, **options)(batch, progress)
            cache[key] = {k: float(v) for k, v in out.items()}
        return cache[key]

    return get


# ------------------------------------------------------------------ no change by the refactor
# Totals of SelectiveCLMethod on this model and batch, computed with the single-function
# losses() of commit a787eef, before it was split into the composition functions.
BEFORE_REFACTOR = [
    ({}, 0.5, 11.763854026794434),  # reliable, after warm-up
    ({}, 0.05, 11.271797180175781),  # warm-up
    ({"piou_threshold": 1.01}, 0.5, 11.503019332885742),  # all unreliable
    ({"exo_indexing": "reference"}, 0.5, 11.403242111206055),  # 3 of 4 reliable
    ({"exo_indexing": "reference", "piou_threshold": 1.01}, 0.5, 11.269691467285156),
    ({"contrast_scale": 7.14, "piou_threshold": 0.0}, 0.5, 66.0641098022461),
]


@pytest.mark.parametrize("options,progress,expected", BEFORE_REFACTOR)
def test_total_loss_is_unchanged_by_the_refactor(terms, options, progress, expected) -> None:
    assert terms(progress, **options)["loss"] == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ each switch, by value
# (proto, pixel, exo_indexing and contrast_scale: test_core.py)
CE = ("ce_ego", "ce_exo")


def test_kmeans_iters_reach_discovery_and_change_the_prototype_term_only(
    terms, model, batch, monkeypatch
) -> None:
    base, one = terms(), terms(kmeans_iters=1)
    assert all(one[k] == base[k] for k in (*CE, "pix"))
    assert abs(one["proto"] - base["proto"]) > 1e-5  # one Lloyd step is not converged
    assert terms(kmeans_iters=300)["proto"] == base["proto"]  # 10 had converged on this batch
    seen = []
    real = methods_module.discover_parts

    def spy(*args, **kwargs):
        seen.append(kwargs["iters"])
        return real(*args, **kwargs)

    monkeypatch.setattr(methods_module, "discover_parts", spy)
    monkeypatch.setattr(locate_module, "discover_parts", spy)
    with torch.no_grad():
        build_method("selectivecl", model, kmeans_iters=300)(batch, 0.5)
        build_method("locate", model, kmeans_iters=42)(batch, 0.5)
    assert seen == [300, 42]


def test_pixel_switches_change_the_pixel_term_only(model, batch, monkeypatch) -> None:
    # The object mask is replaced by the left half of the grid, so that it and Q+ overlap
    # only partly: object-mask anchors then drop Q+ pixels on the right and add non-Q+ ones
    # on the left, which background positives pair with the other non-Q+ pixels.
    real = methods_module.pixel_labels

    def left_half_object(a_ego, rho, object_threshold):
        positive, fallback, mask = real(a_ego, rho, object_threshold)
        half = torch.zeros_like(mask)
        half[..., : mask.shape[-1] // 2] = True
        return positive, fallback, half

    monkeypatch.setattr(methods_module, "pixel_labels", left_half_object)
    with torch.no_grad():
        out = {
            name: {
                k: float(v)
                for k, v in build_method("selectivecl", model, **opts)(batch, 0.5).items()
            }
            for name, opts in (
                ("paper", {}),
                ("object", {"pixel_anchors": "object"}),
                ("reference", {"pixel_anchors": "object", "pixel_bg_positives": True}),
            )
        }
    paper, obj, ref = out["paper"], out["object"], out["reference"]
    for other in (obj, ref):
        assert all(other[k] == paper[k] for k in (*CE, "proto"))
    assert abs(obj["pix"] - paper["pix"]) > 1e-4
    assert abs(ref["pix"] - obj["pix"]) > 1e-4


def test_switches_are_validated_with_clear_errors(model) -> None:
    bad = [
        ({"pixel_anchors": "all"}, "pixel_anchors"),
        ({"pixel_bg_positives": True}, "needs pixel_anchors=object"),
        ({"pixel_bg_positives": "yes"}, "pixel_bg_positives"),
        ({"kmeans_iters": 0}, "kmeans_iters"),
        ({"kmeans_iters": 2.5}, "kmeans_iters"),
        ({"aff_norm_lr_mult": 0}, "aff_norm_lr_mult"),
        ({"aff_norm_lr_mult": "x10"}, "aff_norm_lr_mult"),
        ({"pixel": "no"}, "pixel"),
        ({"proto": "parts"}, "proto"),
        ({"exo_indexing": "wrong"}, "exo_indexing"),
    ]
    for options, message in bad:
        with pytest.raises(ValueError, match=message):
            build_method("selectivecl", model, **options)
    with pytest.raises(ValueError, match="kmeans_iters"):
        build_method("locate", model, kmeans_iters=-1)


def test_aff_norm_lr_mult_moves_only_the_token_mlp_layernorm() -> None:
    torch.manual_seed(0)
    model = create_model("tiny", vocabulary=VOCAB, method="selectivecl", pretrained=False)
    names = {id(p): n for n, p in model.named_parameters()}

    def multipliers() -> dict[str, float]:
        return {names[id(p)]: g["lr_mult"] for g in model.param_groups(1e-3) for p in g["params"]}

    default = multipliers()
    assert default["aff_proj.norm.weight"] == 10.0 and default["aff_proj.norm.bias"] == 20.0
    build_method("selectivecl", model, aff_norm_lr_mult=1)
    reference = multipliers()
    assert reference["aff_proj.norm.weight"] == 1.0 and reference["aff_proj.norm.bias"] == 2.0
    changed = {n for n in default if default[n] != reference[n]}
    assert changed == {"aff_proj.norm.weight", "aff_proj.norm.bias"}
    assert reference["aff_proj.fc1.weight"] == 10.0 and reference["classifier.bias"] == 20.0
    build_method("ce", model)  # every method sets it; 10 by default
    assert multipliers() == default


# ------------------------------------------------------------------ composition, hand-made
def test_interaction_is_the_affinity_in_warm_up_and_the_rectified_product_after() -> None:
    a_exo = torch.tensor([[[[0.5, -0.2], [0.3, 0.1]]]])
    cam = torch.tensor([[[[2.0, 3.0], [-1.0, 0.5]]]], requires_grad=True)
    assert interaction_map(a_exo, cam, warm=True) is a_exo
    after = interaction_map(a_exo, cam, warm=False)
    assert torch.allclose(after, torch.tensor([[[[1.0, 0.0], [0.0, 0.05]]]]))
    assert not after.requires_grad  # discovery never trains the CAM


def test_part_relevance_by_hand() -> None:
    # ego: 2 patches, descriptors along e0 (scaled by 5: only the direction counts) and e1
    centroid = torch.tensor([[1.0, 0.0]])
    ego = torch.tensor([[[[5.0, 0.0]], [[0.0, 3.0]]]])  # (1, D=2, 1, 2)
    exo = torch.stack([ego, torch.tensor([[[[0.0, 0.0]], [[2.0, 2.0]]]])], 1)  # (1, E=2, 2, 1, 2)
    ego_part, exo_part = part_relevance(centroid, exo, ego)
    r2 = math.sqrt(2.0)
    soft = torch.tensor([1.0, math.exp(-r2)]) / (1 + math.exp(-r2))
    assert torch.allclose(
        ego_part, (0.5 * (torch.tensor([1.0, 0.0]) + soft)).view(1, 1, 2), atol=1e-6
    )
    # exo: one softmax over all E x h x w = 4 patches (distances 0, sqrt2, sqrt2, sqrt2)
    z = 1 + 3 * math.exp(-r2)
    expected = 0.5 * (
        torch.tensor([1.0, 0.0, 0.0, 0.0])
        + torch.tensor([1.0, math.exp(-r2), math.exp(-r2), math.exp(-r2)]) / z
    )
    assert torch.allclose(exo_part, expected.view(1, 2, 1, 2), atol=1e-6)


def test_reliable_samples_take_part_maps_and_affinity_anchors_unreliable_ones_do_not() -> None:
    reliable = torch.tensor([True, False])
    ego_rel, a_ego = torch.full((2, 2, 2), 0.7), torch.full((2, 2, 2), 0.3)
    exo_rel, exo_fb = torch.full((2, 3, 2, 2), 0.9), torch.full((2, 3, 2, 2), 0.1)
    ego_part, exo_part = select_part_maps(reliable, ego_rel, exo_rel, a_ego, exo_fb)
    assert ego_part[0].eq(0.7).all() and ego_part[1].eq(0.3).all()
    assert exo_part[0].eq(0.9).all() and exo_part[1].eq(0.1).all()
    anchors = anchor_weights(reliable, a_ego)
    assert anchors[0].eq(0.3).all() and anchors[1].eq(1.0).all()


def test_background_weights_switch_from_one_minus_part_to_the_cam_product() -> None:
    part = torch.tensor([[[0.5, 1.0]]])
    cam = torch.tensor([[[2.0, -1.0]]])
    ego_bg, exo_bg = background_weights(part, part[:, None], cam, cam[:, None], warm=True)
    assert torch.allclose(ego_bg, torch.tensor([[[0.5, 0.0]]]))
    assert torch.allclose(exo_bg, torch.tensor([[[[0.5, 0.0]]]]))
    ego_bg, _ = background_weights(part, part[:, None], cam, cam[:, None], warm=False)
    assert torch.allclose(ego_bg, torch.tensor([[[0.0, 1.0]]]))  # 1 - 0.5*2, 1 - 1*relu(-1)


def test_rho_is_the_min_over_exos_of_the_max_affinity_and_q_plus_falls_back() -> None:
    exo_to_ego = torch.zeros(2, 2, 2, 2)
    exo_to_ego[0, 0, 0, 1], exo_to_ego[0, 1, 1, 0] = 0.3, 0.5
    exo_to_ego[1, 0, 1, 1], exo_to_ego[1, 1, 0, 0] = 0.9, 0.95
    rho = pixel_threshold(exo_to_ego)
    assert torch.allclose(rho, torch.tensor([0.3, 0.9]))
    a_ego = torch.tensor(
        [
            [[0.1, 0.4], [0.2, 0.35]],  # two pixels above 0.3
            [[0.1, 0.8], [0.5, 0.6]],
        ]
    )  # none above 0.9: object mask
    positive, fallback, mask = pixel_labels(a_ego, rho, object_threshold=0.6)
    assert fallback.tolist() == [False, True]
    assert positive[0].tolist() == [[False, True], [False, True]]
    # minmax of sample 1: [0, 1, 4/7, 5/7] -> >= 0.6: the 0.8 and 0.6 pixels
    assert mask[1].tolist() == [[False, True], [False, True]]
    assert torch.equal(positive[1], mask[1])


def test_reference_exo_rows_read_row_n_of_flat_image_b() -> None:
    b, e, h, w = 2, 3, 4, 4
    maps = torch.arange(b * e * h * w, dtype=torch.float32).view(b, e, h, w)
    a_exo = -maps
    seen, fallback = reference_exo_rows(maps, a_exo)
    flat = maps.view(b * e, h, w)
    for i in range(b):
        for n in range(e):
            row = flat[i, n]  # row n of flat exo image i
            assert torch.equal(seen[i, n, 0], row)
            assert seen[i, n, 1:].eq(row.min()).all()
            assert torch.equal(fallback[i, n], (-row).expand(h, w))


# ------------------------------------------------------------------ composition in the method
def _record(monkeypatch, reliable: torch.Tensor):
    """Patch discovery (fixed reliability, centroid e0) and record what losses() passes on."""
    log: dict = {"weights": []}
    real_wp = methods_module.weighted_prototypes

    def fake_discover(exo_keys, exo_maps, ego_keys, sal, *args, **kwargs):
        log["exo_maps"] = exo_maps.clone()
        b, d = ego_keys.shape[:2]
        centroid = F.normalize(torch.ones(b, d), dim=1)
        return PartDiscovery(
            centroid,
            reliable.clone(),
            torch.ones(b, dtype=torch.bool),
            torch.zeros(b),
            centroid[:, None].repeat(1, 3, 1),
            torch.zeros(b, 3),
        )

    def spy_wp(features, weights):
        log["weights"].append(weights.detach().clone())
        return real_wp(features, weights)

    def spy_pix(features, positive, *args, **kwargs):
        log["positive"] = positive.clone()
        return features.sum() * 0.0

    monkeypatch.setattr(methods_module, "discover_parts", fake_discover)
    monkeypatch.setattr(methods_module, "weighted_prototypes", spy_wp)
    monkeypatch.setattr(methods_module, "pixel_contrast_loss", spy_pix)
    return log


@pytest.mark.parametrize("warm", [True, False])
def test_method_composes_discovery_parts_anchors_and_q_plus(
    model, batch, monkeypatch, warm
) -> None:
    reliable = torch.tensor([True, False, True, False])
    log = _record(monkeypatch, reliable)
    method = build_method("selectivecl", model, warmup=0.1)
    with torch.no_grad():
        method(batch, 0.05 if warm else 0.5)
        ego, exo = method.features(batch)
        labels = batch["label"]
        exo_labels = labels.repeat_interleave(3)
        a_ego = model.affinity(ego.clip, labels, "ego")
        to_ego = model.affinity(exo.clip, exo_labels, "ego")
        a_exo = exo_object_affinity(model, exo.clip, exo_labels).view(4, 3, 14, 14)
        _, exo_cam = model.cam(exo.keys, "exo")
        cam_exo = exo_cam[torch.arange(12), exo_labels].view(4, 3, 14, 14)
        ego_rel, _ = part_relevance(
            F.normalize(torch.ones(4, ego.keys.shape[1]), dim=1),
            exo.keys.view(4, 3, -1, 14, 14),
            ego.keys,
        )
    # interaction: A_exo during warm-up, relu(A_exo) * relu(CAM_exo) after
    expected = a_exo if warm else F.relu(a_exo) * F.relu(cam_exo)
    assert torch.allclose(log["exo_maps"], expected, atol=1e-6)
    anchor_w, ego_part = log["weights"][0], log["weights"][1]
    assert torch.allclose(anchor_w[reliable], a_ego[reliable], atol=1e-6)
    assert anchor_w[~reliable].eq(1.0).all()
    assert torch.allclose(ego_part[reliable], ego_rel[reliable], atol=1e-6)
    assert torch.allclose(ego_part[~reliable], a_ego[~reliable], atol=1e-6)
    # Q+: ego affinity above rho = min over exos of the max exo-to-ego cosine
    rho = to_ego.view(4, 3, -1).amax(-1).amin(-1)
    above = a_ego > rho.view(4, 1, 1)
    mask = minmax(a_ego) >= model.config.object_threshold
    want = torch.where(above.flatten(1).any(1).view(4, 1, 1), above, mask)
    assert torch.equal(log["positive"], want)


# ------------------------------------------------------------------ pixel contrast by value
def _pixel_oracle(
    features: torch.Tensor,
    positive: torch.Tensor,
    anchors: torch.Tensor,
    bg_positives: bool,
    tau: float,
) -> float:
    """Loop-by-loop SupCon over pixels, written independently of the batched version."""
    per_sample = []
    for z, pos, anc in zip(
        F.normalize(features.flatten(2), dim=1), positive.flatten(1), anchors.flatten(1)
    ):
        p = z.shape[1]
        values = []
        for i in range(p):
            if not anc[i]:
                continue
            if pos[i]:
                mates = [j for j in range(p) if j != i and pos[j]]
            else:
                mates = [j for j in range(p) if j != i and not pos[j]] if bg_positives else []
            if not mates:
                continue
            others = [j for j in range(p) if j != i]
            denom = math.log(sum(math.exp(float(z[:, i] @ z[:, j]) / tau) for j in others))
            values.append(-sum(float(z[:, i] @ z[:, j]) / tau - denom for j in mates) / len(mates))
        if values:
            per_sample.append(sum(values) / len(values))
    return sum(per_sample) / len(per_sample) if per_sample else 0.0


def test_pixel_contrast_anchor_and_background_switches_match_a_loop_oracle() -> None:
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 5, 3, 3, generator=g)
    positive = torch.rand(2, 3, 3, generator=g) > 0.5
    objects = torch.rand(2, 3, 3, generator=g) > 0.3
    positive[0, 0, 0], objects[0, 0, 0] = True, False  # a Q+ pixel outside the object
    objects[0, 2, 2], positive[0, 2, 2] = True, False  # a non-Q+ pixel inside it
    got = {
        "paper": pixel_contrast_loss(feats, positive, 0.5),
        "object": pixel_contrast_loss(feats, positive, 0.5, anchors=objects),
        "reference": pixel_contrast_loss(
            feats, positive, 0.5, anchors=objects, background_positives=True
        ),
    }
    want = {
        "paper": _pixel_oracle(feats, positive, positive, False, 0.5),
        "object": _pixel_oracle(feats, positive, objects, False, 0.5),
        "reference": _pixel_oracle(feats, positive, objects, True, 0.5),
    }
    for name in got:
        assert float(got[name]) == pytest.approx(want[name], rel=1e-5), name
    assert len({round(float(v), 5) for v in got.values()}) == 3
    scaled = pixel_contrast_loss(
        feats, positive, 0.5, scale=7.14, anchors=objects, background_positives=True
    )
    assert float(scaled) == pytest.approx(7.14 * want["reference"], rel=1e-5)


# ------------------------------------------------------------------ K-means iterations
def test_kmeans_iterations_matter_until_a_fixed_point_and_not_after() -> None:
    g = torch.Generator().manual_seed(0)
    # a 1-D chain of points: Lloyd needs several steps to move from a poor initialisation
    points = torch.cat([torch.linspace(0, 10, 40)[:, None], torch.zeros(40, 1)], 1)[None]
    points = points + 0.01 * torch.randn(points.shape, generator=g)
    valid = torch.ones(1, 40, dtype=torch.bool)

    def run(iters: int) -> torch.Tensor:
        return masked_kmeans(
            points, valid, k=3, iters=iters, generator=torch.Generator().manual_seed(5)
        )[0]

    one, many, more = run(1), run(300), run(1000)
    assert not torch.allclose(one, many, atol=1e-3)
    assert torch.equal(many, more)  # stopped at the same fixed point
    found = sorted(many[0, :, 0].tolist())
    assert found == pytest.approx([10 / 6, 5.0, 50 / 6], abs=0.3)  # thirds of the chain
    with pytest.raises(ValueError, match="iters"):
        masked_kmeans(points, valid, k=3, iters=0)
