"""Tiny backbones: architectures, dense features, pretraining steps, checkpoints, probe."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from affordance_core import tiny
from affordance_core.backbones import clip_trunk
from training import pretrain
from training.probes import backbone as backbone_probe

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def world():
    return pretrain.load_world()


@pytest.fixture(scope="module")
def data(world):
    scenes = world.iter_pretrain_scenes(seed=123, n=16, size=tiny.TINY_IMAGE_SIZE)
    return pretrain.build_pretrain_data(scenes, world.OBJECTS, world.PART_TYPES)


def test_dino_grid_keys_and_saliency():
    torch.manual_seed(0)
    vit = tiny.build_tiny_dino().eval()
    x = tiny.normalize_dino(torch.rand(2, 3, 112, 112))
    keys, sal = tiny.dino_keys_and_saliency(vit, x)
    assert keys.shape == (2, 192, 14, 14)
    assert sal.shape == (2, 14, 14)
    assert bool((sal >= 0).all()) and bool((sal.flatten(1).sum(1) <= 1 + 1e-5).all())
    # Channel d * heads + h must be key dim d of head h, as computed inside timm's attention.
    seen = {}
    vit.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: seen.setdefault("qkv", o))
    vit.forward_features(x)
    heads, dh = 3, 64
    k = seen["qkv"].reshape(2, 197, 3, heads, dh)[:, 1:, 1]  # (N, 196, heads, dh)
    h, d = 2, 5
    ref = k[:, :, h, d].reshape(2, 14, 14)
    assert torch.allclose(keys[:, d * heads + h], ref, atol=1e-5)


def test_clip_grid_and_trunk_matches_encode_image():
    torch.manual_seed(0)
    clip = tiny.build_tiny_clip().eval()
    x = tiny.normalize_clip(torch.rand(2, 3, 112, 112))
    pe = tiny.clearclip_patch_embeddings(clip, x)
    assert pe.shape == (2, 128, 14, 14)
    assert torch.allclose(pe.norm(dim=1), torch.ones(2, 14, 14), atol=1e-4)
    vis = clip.visual
    pooled, _ = vis._pool(vis.transformer.resblocks[-1](clip_trunk(vis, x)))
    assert torch.allclose(pooled @ vis.proj, clip.encode_image(x), atol=1e-5)
    tok = tiny.tiny_tokenizer()(["a photo of a knife", "an item to cut with"])
    assert tok.shape == (2, 16)
    txt = tiny.encode_text_normalized(clip, tok)
    assert txt.shape == (2, 128) and torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_weights_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.delenv("AFFORDANCE_WEIGHTS_DIR", raising=False)
    assert tiny.default_tiny_weights_dir().parts[-2:] == ("weights", "tiny")
    monkeypatch.setenv("AFFORDANCE_WEIGHTS_DIR", str(tmp_path))
    assert tiny.default_tiny_weights_dir() == tmp_path
    (tmp_path / "tiny").mkdir()
    assert tiny.default_tiny_weights_dir() == tmp_path / "tiny"
    with pytest.raises(FileNotFoundError, match="make pretrain"):
        tiny.load_tiny_dino()


def test_patch_targets_fraction_and_majority():
    mask = torch.zeros(1, 112, 112, dtype=torch.bool)
    mask[0, :8, :4] = True  # half of patch (0, 0)
    parts = torch.full((1, 112, 112), -1, dtype=torch.int8)
    parts[0, 8:16, 8:14] = 2  # 75% of patch (1, 1)
    frac, label, purity = pretrain.patch_targets(mask, parts, n_part_types=4)
    assert frac.shape == (1, 14, 14)
    assert math.isclose(float(frac[0, 0, 0]), 0.5) and float(frac[0, 0, 1]) == 0.0
    assert int(label[0, 1, 1]) == 2 and math.isclose(float(purity[0, 1, 1]), 0.75)
    assert int(label[0, 5, 5]) == 4  # background class


def test_augment_keeps_masks_aligned_with_image(data):
    gen = torch.Generator().manual_seed(0)
    img = data.object_mask[:4].float()[:, None].expand(-1, 3, -1, -1).contiguous()
    out, mask, parts = pretrain.augment(img, data.object_mask[:4], data.part_index[:4], gen)
    assert out.shape == img.shape and mask.dtype == torch.bool and parts.dtype == torch.int64
    agree = ((out[:, 0] > 0.5) == mask).float().mean()
    assert agree > 0.97
    assert bool(((parts >= 0) <= mask | (parts < 0)).all())


def test_hand_masks_are_kept_and_cropped_like_the_object(data):
    assert data.hand_mask is not None and data.hand_mask.shape == data.object_mask.shape
    assert bool(data.hand_mask.flatten(1).any(1).any()), "some exo scenes must show a hand"
    args = (data.images[:6].float() / 255, data.object_mask[:6], data.part_index[:6])
    plain = pretrain.augment(*args, torch.Generator().manual_seed(3))
    with_hand = pretrain.augment(
        *args, torch.Generator().manual_seed(3), hand_mask=data.hand_mask[:6]
    )
    assert len(plain) == 3 and len(with_hand) == 4
    for a, b in zip(plain, with_hand[:3], strict=True):
        assert torch.equal(a, b)  # the hand mask changes no random draw
    hand = with_hand[3]
    # A hand-only image augmented as the "image" must land where the hand mask lands.
    img = data.hand_mask[:6].float()[:, None].expand(-1, 3, -1, -1).contiguous()
    out = pretrain.augment(img, *args[1:], torch.Generator().manual_seed(3))[0]
    assert ((out[:, 0] > 0.5) == hand).float().mean() > 0.99


def test_hand_prompt_is_in_the_text_set_only_when_asked(world):
    plain = pretrain.build_text_vocabulary(world)
    with_hand = pretrain.build_text_vocabulary(world, hand=True)
    assert not plain.has_hand and "a hand" not in plain.texts
    assert with_hand.has_hand and with_hand.texts[-1] == "a hand"
    assert with_hand.texts[:-1] == plain.texts
    assert float(with_hand.positives[:, -1].abs().sum()) == 0.0  # no object owns the hand


def test_hand_term_trains_the_hand_prompt_towards_the_hand(data, world):
    torch.manual_seed(0)
    clip = tiny.build_tiny_clip()
    vocab = pretrain.build_text_vocabulary(world, hand=True)
    tokens = tiny.tiny_tokenizer()(vocab.texts)
    scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
    bias = torch.nn.Parameter(torch.tensor(-2.0))
    shown = data.hand_mask.flatten(1).any(1).nonzero().flatten()[:6]
    imgs = data.images[shown].float() / 255
    frac, _, _ = pretrain.patch_targets(
        data.object_mask[shown], data.part_index[shown], len(data.part_types)
    )
    hand_frac = torch.nn.functional.adaptive_avg_pool2d(
        data.hand_mask[shown].float()[:, None], tiny.TINY_GRID
    )[:, 0]
    opt = torch.optim.AdamW([*clip.parameters(), scale, bias], lr=2e-3)

    def hand_loss():
        return pretrain.clip_dense_losses(
            clip,
            imgs,
            data.obj_index[shown],
            frac,
            tokens,
            vocab.positives,
            vocab.n_objects,
            scale,
            bias,
            hand_frac=hand_frac,
        )["hand"]

    with torch.no_grad():
        first = hand_loss()
    for _ in range(6):
        opt.zero_grad()
        hand_loss().backward()
        opt.step()
    with torch.no_grad():
        last = hand_loss()
    assert torch.isfinite(first) and float(last) < float(first)


def test_hand_weight_needs_hand_masks(world, data):
    import dataclasses

    no_hands = dataclasses.replace(data, hand_mask=None)
    cfg = pretrain.PretrainConfig(
        seed=0, n_scenes=16, steps=1, batch_size=4, w_hand=1.0, models=("clip",)
    )
    with pytest.raises(ValueError, match="hand masks"):
        pretrain.pretrain(cfg, world=world, data=no_hands, verbose=False)


def test_text_vocabulary_is_object_level(world):
    vocab = pretrain.build_text_vocabulary(world)
    o = world.OBJECTS.index("knife")
    pos = {vocab.texts[j] for j in vocab.positives[o].nonzero().flatten().tolist()}
    assert world.object_caption("knife", with_actions=False) in pos
    assert "an item to cut with" in pos and "an item to sit on" not in pos


def test_dense_losses_decrease_when_fitting_a_batch(data, world):
    torch.manual_seed(0)
    dino, clip = tiny.build_tiny_dino(), tiny.build_tiny_clip()
    vocab = pretrain.build_text_vocabulary(world)
    tokens = tiny.tiny_tokenizer()(vocab.texts)
    n_parts = len(data.part_types)
    protos = torch.nn.Parameter(torch.randn(n_parts + 1, 192) * 0.02)
    scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
    bias = torch.nn.Parameter(torch.tensor(-5.0))
    params = [*dino.parameters(), *clip.parameters(), protos, scale, bias]
    opt = torch.optim.AdamW(params, lr=1e-3)
    imgs = data.images[:8].float() / 255
    frac, lab, pur = pretrain.patch_targets(data.object_mask[:8], data.part_index[:8], n_parts)

    def losses():
        lc = pretrain.clip_dense_losses(
            clip,
            imgs,
            data.obj_index[:8],
            frac,
            tokens,
            vocab.positives,
            vocab.n_objects,
            scale,
            bias,
        )
        ld = pretrain.dino_dense_losses(dino, imgs, frac, lab, pur, protos)
        return lc["dense"] + lc["global"] + ld["part"] + ld["saliency"]

    with torch.no_grad():
        first = losses()
    for _ in range(4):
        opt.zero_grad()
        loss = losses()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = losses()
    assert torch.isfinite(first) and float(last) < float(first)


def test_pretrain_writes_strict_loadable_fp16_checkpoints(data, world, tmp_path):
    cfg = pretrain.PretrainConfig(seed=0, n_scenes=16, steps=3, batch_size=8)
    res = pretrain.pretrain(cfg, out_dir=tmp_path, world=world, data=data, verbose=False)
    assert all(
        math.isfinite(r["clip_loss"]) and math.isfinite(r["dino_loss"]) for r in res["history"]
    )
    for name, build in (
        (tiny.TINY_DINO_FILE, tiny.build_tiny_dino),
        (tiny.TINY_CLIP_FILE, tiny.build_tiny_clip),
    ):
        path = tmp_path / name
        assert path.is_file() and not (tmp_path / (name + ".tmp")).exists()
        state = torch.load(path, map_location="cpu", weights_only=True)
        fresh = build()
        assert set(state) == set(fresh.state_dict())
        assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    dino = tiny.load_tiny_dino(tmp_path / tiny.TINY_DINO_FILE)
    clip = tiny.load_tiny_clip(tmp_path / tiny.TINY_CLIP_FILE)
    ref = res["dino"].state_dict()["blocks.0.attn.qkv.weight"]
    assert torch.allclose(dino.state_dict()["blocks.0.attn.qkv.weight"], ref, atol=1e-2)
    assert next(clip.parameters()).dtype == torch.float32


def test_batched_kmeans_separates_two_blobs():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1, 10, 2, generator=g) * 0.1
    b = torch.randn(1, 10, 2, generator=g) * 0.1 + 5.0
    feats = torch.cat([a, b, torch.full((1, 3, 2), 100.0)], 1)
    valid = torch.tensor([[True] * 20 + [False] * 3])
    assign = backbone_probe.batched_kmeans(feats, valid, k=2)
    assert bool((assign[0, 20:] == -1).all())
    assert len(set(assign[0, :10].tolist())) == 1 and len(set(assign[0, 10:20].tolist())) == 1
    assert assign[0, 0] != assign[0, 10]


REPO_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "tiny"


@pytest.mark.skipif(
    not (REPO_WEIGHTS / tiny.TINY_CLIP_FILE).is_file()
    or not (REPO_WEIGHTS / tiny.TINY_DINO_FILE).is_file(),
    reason="repository tiny checkpoints not built",
)
def test_repository_checkpoints_beat_random_init(world):
    dino = tiny.load_tiny_dino(REPO_WEIGHTS / tiny.TINY_DINO_FILE)
    clip = tiny.load_tiny_clip(REPO_WEIGHTS / tiny.TINY_CLIP_FILE)
    res = backbone_probe.probe_backbones(
        dino, clip, tiny.tiny_tokenizer(), seed=5, n=24, world=world
    )
    assert res["clip_object_iou"] > res["random"]["clip_object_iou"] + 0.05
    assert res["dino_saliency_iou"] > res["random"]["dino_saliency_iou"] + 0.1


def test_within_image_contrast_prefers_label_aligned_features():
    e = torch.eye(4)
    # Image of 4 patches: two of label 0 share a direction, two of label 1 share another.
    aligned = torch.stack([e[0], e[0], e[1], e[1]])[None]
    labels = torch.tensor([[0, 0, 1, 1]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    good = pretrain.within_image_contrast(aligned, labels, valid)
    bad = pretrain.within_image_contrast(aligned, torch.tensor([[0, 1, 0, 1]]), valid)
    assert float(good) < 0.01 < float(bad)
    # Pairs never cross images: a second image of opposite labels leaves the first unchanged.
    other = torch.stack([e[2], e[3], e[2], e[3]])[None]
    both = pretrain.within_image_contrast(
        torch.cat([aligned, other]),
        torch.cat([labels, torch.tensor([[0, 0, 1, 1]])]),
        valid.expand(2, -1),
    )
    alone = pretrain.within_image_contrast(other, torch.tensor([[0, 0, 1, 1]]), valid)
    assert torch.isclose(both, (good + alone) / 2, atol=1e-6)
    # No anchor with a positive: a zero that still backpropagates.
    feats = aligned.clone().requires_grad_(True)
    none = pretrain.within_image_contrast(feats, torch.tensor([[0, 1, 2, 3]]), valid)
    none.backward()
    assert float(none) == 0.0 and feats.grad is not None


def test_training_one_backbone_alone_matches_joint_training(data, world, tmp_path):
    cfg = dict(seed=0, n_scenes=16, steps=2, batch_size=4, save_every=0)
    joint = pretrain.pretrain(
        pretrain.PretrainConfig(**cfg), world=world, data=data, verbose=False
    )
    alone = pretrain.pretrain(
        pretrain.PretrainConfig(**cfg, models=("clip",)),
        out_dir=tmp_path,
        world=world,
        data=data,
        verbose=False,
    )
    assert alone["dino"] is None and set(alone["files"]) == {"clip"}
    ref = joint["clip"].state_dict()
    for key, value in alone["clip"].state_dict().items():
        assert torch.allclose(value, ref[key], atol=1e-5), key
    with pytest.raises(ValueError, match="subset"):
        pretrain.pretrain(
            pretrain.PretrainConfig(**cfg, models=("vit",)), world=world, data=data, verbose=False
        )


def test_part_transfer_iou_rewards_type_features_not_colour():
    # Two images, patches 0-1 part type 0 and patches 2-3 part type 1, object-only patches.
    labels = torch.tensor([[0, 0, 1, 1, -1, -1], [0, 0, 1, 1, -1, -1]])
    e = torch.eye(3)
    by_type = torch.stack([e[0], e[0], e[1], e[1], e[2], e[2]])[None].repeat(2, 1, 1)
    assert torch.allclose(backbone_probe.part_transfer_iou(by_type, labels, 2), torch.ones(4))
    # Per-instance colours: image 0 paints type 0 with colour A, image 1 with colour B.
    colour = torch.stack(
        [
            torch.stack([e[0], e[0], e[1], e[1], e[2], e[2]]),
            torch.stack([e[1], e[1], e[0], e[0], e[2], e[2]]),
        ]
    )
    assert float(backbone_probe.part_transfer_iou(colour, labels, 2).max()) == 0.0


def test_second_stage_starts_from_the_first_and_adds_the_threshold_term(data, world, tmp_path):
    cfg = dict(seed=0, n_scenes=16, batch_size=4, save_every=0, models=("clip",))
    first = pretrain.pretrain(
        pretrain.PretrainConfig(**cfg, steps=2),
        out_dir=tmp_path / "s1",
        world=world,
        data=data,
        verbose=False,
    )
    # lr 0: the second stage must hand back exactly the (fp16-rounded) first-stage weights
    still = pretrain.pretrain(
        pretrain.PretrainConfig(**cfg, steps=1, lr=0.0, init_from=str(tmp_path / "s1")),
        world=world,
        data=data,
        verbose=False,
    )
    ref = first["clip"].state_dict()
    for key, value in still["clip"].state_dict().items():
        assert torch.allclose(value, ref[key], atol=2e-3 * (1 + ref[key].abs().max())), key
    # the query scaling of a fresh start is not applied again
    q = still["clip"].visual.transformer.resblocks[-1].attn.in_proj_weight.detach()
    q_ref = first["clip"].visual.transformer.resblocks[-1].attn.in_proj_weight.detach()
    assert torch.allclose(q, q_ref, atol=2e-3 * (1 + float(q_ref.abs().max())))
    second = pretrain.pretrain(
        pretrain.PretrainConfig(**cfg, steps=2, w_threshold=1.0, init_from=str(tmp_path / "s1")),
        world=world,
        data=data,
        verbose=False,
    )
    assert all(0.0 < r["clip_threshold"] < 20.0 for r in second["history"])
    with pytest.raises(FileNotFoundError, match="no clip_tiny.pt there"):
        pretrain.pretrain(
            pretrain.PretrainConfig(**cfg, steps=1, init_from=str(tmp_path)),
            world=world,
            data=data,
            verbose=False,
        )


def test_a_wider_deeper_dino_role_is_pretrained_saved_and_rebuilt_from_its_file(
    data, world, tmp_path
):
    cfg = pretrain.PretrainConfig(
        steps=2, batch_size=4, models=("dino",), dino_width=128, dino_depth=2, save_every=0
    )
    res = pretrain.pretrain(cfg, out_dir=tmp_path, world=world, data=data, verbose=False)
    assert res["dino"].embed_dim == 128 and len(res["dino"].blocks) == 2
    loaded = tiny.load_tiny_dino(tmp_path / tiny.TINY_DINO_FILE)
    assert loaded.embed_dim == 128 and len(loaded.blocks) == 2
    assert loaded.blocks[-1].attn.num_heads == 128 // tiny.TINY_HEAD_WIDTH
    # The model factory builds the same size from the file it loads.
    import dataclasses

    from affordance_core.factory import build_backbones
    from affordance_core.presets import tiny as tiny_preset

    dino, _ = build_backbones(dataclasses.replace(tiny_preset(), clip=None), tmp_path)
    with torch.no_grad():
        keys = dino(torch.rand(1, 3, 112, 112)).keys
    assert keys.shape == (1, 128, 14, 14)
    with pytest.raises(ValueError, match="multiple of 64"):
        tiny.build_tiny_dino(width=100)
    import timm  # a patch-16 ViT of the same width is not read as a tiny DINO role

    foreign = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    with pytest.raises(ValueError, match="not a tiny DINO-role ViT"):
        tiny.tiny_dino_size(foreign.state_dict())


def test_parallel_rendering_gives_the_serial_scene_set(world):
    from training.pretrain.data import render_pretrain_data

    serial = pretrain.build_pretrain_data(
        world.iter_pretrain_scenes(seed=5, n=6, size=tiny.TINY_IMAGE_SIZE),
        world.OBJECTS,
        world.PART_TYPES,
    )
    parallel = render_pretrain_data(5, 6, workers=2)
    for name in ("images", "object_mask", "part_index", "obj_index", "hand_mask"):
        assert torch.equal(getattr(serial, name), getattr(parallel, name)), name
