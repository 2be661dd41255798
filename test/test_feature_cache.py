"""The frozen-feature cache gives the same features the backbones compute, and trains."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from affordance_core import create_model
from affordance_core.data import AffordanceTrainDataset
from affordance_core.data.transforms import center_resize, load_rgb, to_tensor
from affordance_core.feature_cache import CachedTrainDataset, FeatureCache
from affordance_core.methods import build_method


def test_cache_matches_backbones_and_trains(tmp_path, make_agd_tree) -> None:
    make_agd_tree(tmp_path / "data", affordances=("hold", "cut_with", "pour"), n_exo=4)
    model = create_model("tiny", vocabulary=["cut_with", "hold", "pour"], pretrained=False)
    base = AffordanceTrainDataset(tmp_path / "data", "Seen", 112, vocabulary=model.vocabulary)
    paths = base.image_paths()
    cache = FeatureCache.build(model, paths, tmp_path / "cache", progress=False)
    again = FeatureCache.build(model, paths, tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("features-*.npy"))) == 1  # reused, not rebuilt
    assert again.index == cache.index

    image = to_tensor(center_resize(load_rgb(paths[0]), 112))[None]
    feats = model.extract(image)
    packed = cache.unpack(cache.get(paths[0], 0).float())
    assert torch.allclose(packed["keys"], feats.keys[0], atol=2e-2, rtol=1e-2)
    assert torch.allclose(packed["clip"], feats.clip[0], atol=2e-3)
    mirrored = cache.unpack(cache.get(paths[0], 1).float())
    assert torch.allclose(mirrored["clip"], model.extract(image.flip(-1)).clip[0], atol=2e-3)

    data = CachedTrainDataset(cache, tmp_path / "data", "Seen", 112, vocabulary=model.vocabulary)
    batch = next(iter(DataLoader(data, batch_size=4, shuffle=True)))
    assert batch["exo_keys"].shape == (4, 3, 192, 14, 14)
    assert batch["ego_clip"].shape == (4, 128, 14, 14)
    method = build_method("selectivecl", model)
    opt = torch.optim.SGD(model.param_groups(1e-2), lr=1e-2, momentum=0.9)
    losses = []
    for _ in range(4):
        out = method(batch, 0.5)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0]


def test_cache_is_shared_by_methods_and_follows_the_backbone_weights(
    tmp_path, make_agd_tree
) -> None:
    make_agd_tree(tmp_path / "data", affordances=("hold", "cut_with"), n_exo=2)
    vocab = ["cut_with", "hold"]
    torch.manual_seed(0)
    scl = create_model("tiny", vocabulary=vocab, method="selectivecl", pretrained=False)
    ce = create_model("tiny", vocabulary=vocab, method="ce", pretrained=False)
    ce.dino.load_state_dict(scl.dino.state_dict())
    ce.clip.load_state_dict(scl.clip.state_dict())
    paths = AffordanceTrainDataset(tmp_path / "data", "Seen", 112, vocabulary=vocab).image_paths()
    cache_dir = tmp_path / "cache"
    FeatureCache.build(scl, paths, cache_dir, views=1, progress=False)
    FeatureCache.build(ce, paths, cache_dir, views=1, progress=False)
    assert len(list(cache_dir.glob("features-*.npy"))) == 1  # heads differ, features do not

    with torch.no_grad():
        next(ce.clip.parameters()).add_(0.5)  # new CLIP-role weights
    rebuilt = FeatureCache.build(ce, paths, cache_dir, views=1, progress=False)
    assert len(list(cache_dir.glob("features-*.npy"))) == 2
    assert not list(cache_dir.glob("*.tmp.*"))
    image = to_tensor(center_resize(load_rgb(paths[0]), 112))[None]
    fresh = rebuilt.unpack(rebuilt.get(paths[0], 0).float())["clip"]
    assert torch.allclose(fresh, ce.extract(image).clip[0], atol=2e-3)
