"""Paper-tier weight loading from checkpoints written here in the upstream formats.

DINO's ``dino_deitsmall16_pretrain.pth`` is a plain timm-keyed state dict without a head;
OpenAI's ``ViT-B-16.pt`` carries CLIP-keyed tensors (open_clip uses the same names). The
tests write random weights in those formats, then check they load bit-exactly, and that
missing, corrupt or mismatched files fail with a message naming the file and the fix.
"""

from __future__ import annotations

import pytest
import torch

from affordance_core.factory import build_backbones
from affordance_core.registry import get_config
from affordance_core.weights import WeightsError


@pytest.fixture(scope="module")
def paper_weights(tmp_path_factory):
    import open_clip
    import timm

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    torch.save(vit.state_dict(), root / "dino_deitsmall16_pretrain.pth")
    clip = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    state = clip.state_dict()
    state.update(
        input_resolution=torch.tensor(224),
        context_length=torch.tensor(77),
        vocab_size=torch.tensor(49408),
    )  # extra scalars OpenAI files carry
    torch.save(state, root / "ViT-B-16.pt")
    return root, vit.state_dict(), clip.state_dict()


@pytest.mark.slow
def test_paper_tier_loads_upstream_formats_exactly(paper_weights) -> None:
    root, vit_state, clip_state = paper_weights
    cfg = get_config("paper", "selectivecl")
    dino, clip = build_backbones(cfg, weights_dir=root)
    for key, value in vit_state.items():
        assert torch.equal(dino.vit.state_dict()[key], value), key
    loaded = clip.clip.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in clip_state.items())
    feats = dino(torch.rand(1, 3, 224, 224))
    assert feats.keys.shape == (1, 384, 14, 14)
    assert feats.cls_attention.shape == (1, 3, 14, 14)
    dense = clip.encode_dense(torch.rand(1, 3, 224, 224))
    assert dense.shape == (1, 512, 14, 14)
    assert torch.allclose(dense.norm(dim=1), torch.ones(1, 14, 14), atol=1e-4)


def test_missing_weights_name_file_and_fix(tmp_path) -> None:
    cfg = get_config("paper", "selectivecl")
    with pytest.raises(WeightsError) as err:
        build_backbones(cfg, weights_dir=tmp_path)
    message = str(err.value)
    assert "dino_deitsmall16_pretrain.pth" in message and "--weights-dir" in message
    assert "https://" in message


def test_corrupt_and_mismatched_weights(tmp_path) -> None:
    cfg = get_config("tiny", "selectivecl")
    (tmp_path / "dino_tiny.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="dino_tiny.pt.*corrupt"):
        build_backbones(cfg, weights_dir=tmp_path)
    import timm

    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    torch.save(other.state_dict(), tmp_path / "dino_tiny.pt")
    with pytest.raises(WeightsError, match="does not match the architecture"):
        build_backbones(cfg, weights_dir=tmp_path)


@pytest.mark.slow
def test_paper_tier_objectness_head_is_trained_beside_its_weights(paper_weights) -> None:
    """`python -m training.pretrain.objectness --model paper` reads the upstream-format files
    and writes objectness_paper.pt there, which a paper-tier model with the gate accepts."""
    import contextlib
    import io
    import json

    from affordance_core import create_model
    from affordance_core.objectness import load_objectness, objectness_file
    from training.pretrain import objectness as cli

    root, _, _ = paper_weights
    out = io.StringIO()
    args = ["--model", "paper", "--weights-dir", str(root), "--n-frames", "3", "--size", "64"]
    args += ["--seeds", "10", "--mine-seeds", "--epochs", "1"]  # no mining: 3 + 3 frames
    with contextlib.redirect_stdout(out):
        assert cli.main([*args, "--no-progress"]) == 0
    assert json.loads(out.getvalue().strip().splitlines()[-1])["n_backgrounds"] == 3
    fit = load_objectness(root / objectness_file("paper"))
    model = create_model("paper", vocabulary=["hold"], weights_dir=root, objectness=True)
    assert model.objectness.dims == (384, 512, 3, 64)
    model.set_objectness(fit)
    with torch.no_grad():
        p_object = model.frame_objectness(model.extract(torch.rand(2, 3, 224, 224)))
    assert p_object.shape == (2,) and ((p_object >= 0) & (p_object <= 1)).all()
