"""The occlusion probe re-renders exocentric training scenes exactly as the corpus wrote them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from affordance_core import create_model
from affordance_core.data.transforms import load_rgb
from affordance_core.synthetic.corpus import write_agd_corpus
from training.probes.occlusion import rebuild_exo_truth, score_exo_branch


def test_rebuilt_scenes_match_the_corpus_and_score(tmp_path) -> None:
    objs = {"Seen": {"train": ["knife", "cup"], "test": ["cup"]}}
    write_agd_corpus(
        tmp_path,
        seed=5,
        split_objects=objs,
        n_exo_per_pair=4,
        n_ego_per_pair=1,
        n_test_per_pair=1,
        size=64,
        occlusion_rate=0.5,
        progress=False,
    )
    items = rebuild_exo_truth(
        tmp_path, "Seen", seed=5, size=64, occlusion_rate=0.5, max_items=None
    )
    assert len(items) == 5 * 4 and {o for *_, o in items} == {True, False}
    for path, _, gt, _ in items[:4]:
        assert gt.shape == (64, 64) and gt.max() == pytest.approx(1.0)
        assert load_rgb(path).shape == (64, 64, 3)
    with pytest.raises(ValueError, match="does not reproduce"):
        rebuild_exo_truth(tmp_path, "Seen", seed=6, size=64, occlusion_rate=0.5, max_items=None)
    torch.manual_seed(0)
    model = create_model("tiny", vocabulary=sorted({a for _, a, _, _ in items}), pretrained=False)
    scores = score_exo_branch(model, items)
    assert set(scores) == {"occluded", "visible"}
    assert all(np.isfinite(scores[k]["KLD"]) for k in scores)
    assert scores["occluded"]["n"] + scores["visible"]["n"] == len(items)
