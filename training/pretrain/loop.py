"""The pretraining loop of the tiny backbones: recipe, optimisers, schedule, checkpoints."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from affordance_core.tiny import (
    TINY_CLIP_FILE,
    TINY_DINO_DEPTH,
    TINY_DINO_FILE,
    TINY_DINO_WIDTH,
    TINY_GRID,
    TINY_IMAGE_SIZE,
    build_tiny_clip,
    build_tiny_dino,
    load_tiny_clip,
    load_tiny_dino,
    save_state_dict_fp16,
    tiny_tokenizer,
)
from training.pretrain.data import (
    PretrainData,
    augment,
    build_pretrain_data,
    build_text_vocabulary,
    load_world,
    patch_targets,
    render_pretrain_data,
)
from training.pretrain.losses import clip_dense_losses, dino_dense_losses

__all__ = ["MODELS", "PRETRAIN_SEED_SALT", "PretrainConfig", "learning_rate", "pretrain"]

PRETRAIN_SEED_SALT = 0  # scenes for pretraining; the probe uses a different salt


@dataclass
class PretrainConfig:
    """Recipe of ``make pretrain`` (see weights/tiny/README.md).

    Attributes:
        seed: seed of scene rendering, initialisation, batching and augmentation.
        n_scenes: size of the pre-rendered pretraining set.
        steps: optimisation steps (shared by both models; one batch feeds both).
        batch_size: images per step.
        lr: peak AdamW learning rate (warm-up then cosine).
        weight_decay: AdamW weight decay (matrices only).
        warmup_frac: fraction of steps of linear warm-up.
        w_global: weight of the CLIP global caption CE.
        w_clip_contrast: weight of the CLIP within-image object/background contrast.
        w_text: weight of the CLIP caption-separation CE.
        w_saliency: weight of the DINO saliency KL.
        w_dino_contrast: weight of the DINO within-image part contrast.
        w_objectness: weight of the CLIP trunk's deep objectness supervision.
        w_threshold: weight of the CLIP soft-threshold term on min-max normalised affinity.
        w_hand: weight of the CLIP hand term (the hand prompt's dense target is the hand
            mask; 0 leaves the hand prompt out of the text set altogether).
        clearclip_query_init_scale: factor on the initial query weights of the CLIP's last
            block (the block ClearCLIP reuses).
        models: which backbones to train (``dino``, ``clip``).
        save_every: write the checkpoints every this many steps (0 = only at the end).
        threads: torch CPU threads (0 = leave torch's default).
        init_from: folder holding ``dino_tiny.pt`` / ``clip_tiny.pt`` to start from instead of
            a random initialisation (a later stage of a multi-stage recipe; the query scaling
            is then not applied again). None starts from scratch.
        dino_width: width of a DINO-role ViT trained from scratch (multiple of 64; the
            shipped one is 192). With ``init_from`` the checkpoint's size is kept.
        dino_depth: its number of blocks (shipped: 4).
        device: torch device of the models and losses (``cpu``, ``cuda``); data rendering and
            augmentation stay on the CPU, so a run draws the same batches on any device.
        render_workers: processes rendering the scene set (the set does not depend on it).
    """

    seed: int = 0
    n_scenes: int = 6000
    steps: int = 2500
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    w_global: float = 0.5
    w_clip_contrast: float = 1.0
    w_text: float = 1.0
    w_saliency: float = 1.0
    w_dino_contrast: float = 0.5
    w_objectness: float = 1.0
    w_threshold: float = 0.0
    w_hand: float = 0.0
    clearclip_query_init_scale: float = 4.0
    models: tuple[str, ...] = ("dino", "clip")
    save_every: int = 250
    threads: int = 0
    init_from: str | None = None
    dino_width: int = TINY_DINO_WIDTH
    dino_depth: int = TINY_DINO_DEPTH
    device: str = "cpu"
    render_workers: int = 1


def _param_groups(model: nn.Module, wd: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


MODELS = ("dino", "clip")

#: A model being pretrained: the module, every parameter it optimises, its optimiser.
TrainedModel = tuple[nn.Module, list[nn.Parameter], torch.optim.Optimizer]


def _initial_model(name: str, cfg: PretrainConfig) -> nn.Module:
    """A freshly initialised backbone, or the checkpoint of an earlier stage, in train mode."""
    init_from = cfg.init_from
    if init_from is None:
        if name == "dino":
            return build_tiny_dino(cfg.dino_width, cfg.dino_depth).train()
        return build_tiny_clip().train()
    path = Path(init_from) / (TINY_DINO_FILE if name == "dino" else TINY_CLIP_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"--init-from {init_from}: no {path.name} there; run the earlier pretraining stage "
            "first (scripts/pretrain.sh runs all stages)"
        )
    return (load_tiny_dino(path) if name == "dino" else load_tiny_clip(path)).train()


def learning_rate(cfg: PretrainConfig, step: int) -> float:
    """AdamW learning rate at ``step``: linear warm-up over ``cfg.warmup_frac`` of the steps,
    then cosine decay to 0."""
    warm = max(1, int(cfg.warmup_frac * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    prog = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * prog))


def _save_checkpoints(
    trained: dict[str, TrainedModel], out_dir: str | Path | None
) -> dict[str, str]:
    """Writes the fp16 checkpoint of every trained model into ``out_dir`` (none when None)."""
    if out_dir is None:
        return {}
    names = {"dino": TINY_DINO_FILE, "clip": TINY_CLIP_FILE}
    return {
        name: str(save_state_dict_fp16(model, Path(out_dir) / names[name]))
        for name, (model, _, _) in trained.items()
    }


def pretrain(
    cfg: PretrainConfig,
    out_dir: str | Path | None = None,
    world: Any | None = None,
    data: PretrainData | None = None,
    log_every: int = 50,
    verbose: bool = True,
) -> dict[str, Any]:
    """Pretrain the tiny backbones named in ``cfg.models``; optionally write their checkpoints.

    Both models see the same batches and augmentations, and each model's initialisation,
    optimiser and gradient clipping are its own, so training one model alone
    (``cfg.models=("clip",)``) gives the same weights as training both together, up to
    floating-point summation order: the two can run as two processes on a multi-core machine.

    Args:
        cfg: the recipe.
        out_dir: where to write ``dino_tiny.pt`` and ``clip_tiny.pt`` (also every
            ``cfg.save_every`` steps, atomically); None writes nothing.
        world: the synthetic world module (default: ``affordance_core.synthetic.world``).
        data: a pre-built set (default: render ``cfg.n_scenes`` scenes from ``world``).
        log_every: steps between log lines.
        verbose: print progress.

    Returns:
        Summary dict: ``dino`` and ``clip`` (the trained float32 models in eval mode, None for
        a model not trained), ``history`` (list of per-log-step loss dicts), ``render_s``,
        ``train_s``, ``files``.
    """
    unknown = set(cfg.models) - set(MODELS)
    if unknown or not cfg.models:
        raise ValueError(f"models must be a non-empty subset of {MODELS}, got {cfg.models}")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    np.random.seed(cfg.seed)
    default_world = world is None
    world = world if world is not None else load_world()
    device = torch.device(cfg.device)
    t0 = time.perf_counter()
    scene_seed = cfg.seed * 1000 + PRETRAIN_SEED_SALT
    if data is None and default_world:
        data = render_pretrain_data(scene_seed, cfg.n_scenes, workers=cfg.render_workers)
    elif data is None:
        scenes = world.iter_pretrain_scenes(seed=scene_seed, n=cfg.n_scenes, size=TINY_IMAGE_SIZE)
        data = build_pretrain_data(scenes, world.OBJECTS, world.PART_TYPES)
    render_s = time.perf_counter() - t0
    vocab = build_text_vocabulary(world, hand=cfg.w_hand > 0)
    if vocab.has_hand and data.hand_mask is None:
        raise ValueError("w_hand > 0 needs pretraining data with hand masks")
    tokens = tiny_tokenizer()(vocab.texts).to(device)
    positives = vocab.positives.to(device)
    n_parts = len(data.part_types)

    dino = clip = None
    trained: dict[str, TrainedModel] = {}
    if "dino" in cfg.models:
        torch.manual_seed(cfg.seed * 7 + 1)
        dino = _initial_model("dino", cfg).to(device)
        prototypes = nn.Parameter((torch.randn(n_parts + 1, dino.embed_dim) * 0.02).to(device))
        groups = _param_groups(dino, cfg.weight_decay)
        groups.append({"params": [prototypes], "weight_decay": 0.0})
        trained["dino"] = (
            dino,
            [p for g in groups for p in g["params"]],
            torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98)),
        )
    if "clip" in cfg.models:
        torch.manual_seed(cfg.seed * 7 + 2)
        clip = _initial_model("clip", cfg).to(device)
        if cfg.init_from is None:
            with torch.no_grad():
                # Larger initial queries make ClearCLIP's q-q attention start near-diagonal, so
                # each patch embedding starts local instead of an image-wide average.
                attn = clip.visual.transformer.resblocks[-1].attn
                attn.in_proj_weight[: attn.embed_dim] *= cfg.clearclip_query_init_scale
        dense_scale = nn.Parameter(torch.tensor(math.log(10.0), device=device))
        dense_bias = nn.Parameter(torch.tensor(-2.0, device=device))
        objectness = nn.Linear(clip.visual.transformer.width, 1).to(device)
        groups = _param_groups(clip, cfg.weight_decay) + _param_groups(objectness, 0.0)
        groups.append({"params": [dense_scale, dense_bias], "weight_decay": 0.0})
        trained["clip"] = (
            clip,
            [p for g in groups for p in g["params"]],
            torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98)),
        )
    gen = torch.Generator().manual_seed(cfg.seed)  # batches and augmentation, shared
    history: list[dict[str, float]] = []
    n = len(data)
    perm = torch.randperm(n, generator=gen)
    cursor = 0
    t1 = time.perf_counter()
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > n:
            perm, cursor = torch.randperm(n, generator=gen), 0
        idx = perm[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        imgs = data.images[idx].float() / 255.0
        hand_frac = None
        if vocab.has_hand:
            imgs, omask, pidx, hand = augment(
                imgs,
                data.object_mask[idx],
                data.part_index[idx],
                gen,
                hand_mask=data.hand_mask[idx],
            )
            hand_frac = F.adaptive_avg_pool2d(hand.float()[:, None], TINY_GRID)[:, 0]
        else:
            imgs, omask, pidx = augment(imgs, data.object_mask[idx], data.part_index[idx], gen)
        obj_frac, part_label, purity = patch_targets(omask, pidx, n_parts)
        imgs, obj_frac, part_label, purity = (
            t.to(device) for t in (imgs, obj_frac, part_label, purity)
        )
        hand_frac = None if hand_frac is None else hand_frac.to(device)
        rec: dict[str, float] = {"step": step}
        log_step = step % log_every == 0 or step == cfg.steps - 1
        for name, (model, params, opt) in trained.items():
            for g in opt.param_groups:
                g["lr"] = learning_rate(cfg, step)
            if name == "clip":
                parts = clip_dense_losses(
                    model,
                    imgs,
                    data.obj_index[idx].to(device),
                    obj_frac,
                    tokens,
                    positives,
                    vocab.n_objects,
                    dense_scale,
                    dense_bias,
                    objectness_head=objectness,
                    hand_frac=hand_frac,
                )
                loss = (
                    parts["dense"]
                    + cfg.w_global * parts["global"]
                    + cfg.w_clip_contrast * parts["contrast"]
                    + cfg.w_text * parts["text"]
                    + cfg.w_objectness * parts["objectness"]
                    + cfg.w_threshold * parts["threshold"]
                    + cfg.w_hand * parts.get("hand", 0.0)
                )
            else:
                parts = dino_dense_losses(model, imgs, obj_frac, part_label, purity, prototypes)
                loss = (
                    parts["part"]
                    + cfg.w_saliency * parts["saliency"]
                    + cfg.w_dino_contrast * parts["contrast"]
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if log_step:  # reading a loss waits for the device: only on logged steps
                rec[f"{name}_loss"] = float(loss.detach())
                rec.update({f"{name}_{k}": float(v.detach()) for k, v in parts.items()})
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            _save_checkpoints(trained, out_dir)
        if log_step:
            rec["elapsed_s"] = time.perf_counter() - t1
            history.append(rec)
            if verbose:
                print(json.dumps({k: round(v, 4) for k, v in rec.items()}), flush=True)
    train_s = time.perf_counter() - t1
    for model, _, _ in trained.values():
        model.eval()
    files = _save_checkpoints(trained, out_dir)
    return {
        "dino": dino,
        "clip": clip,
        "history": history,
        "render_s": render_s,
        "train_s": train_s,
        "files": files,
    }
