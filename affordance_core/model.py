"""The affordance model: frozen DINO/CLIP backbones plus the trainable LOCATE-style heads."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .affinity import prompt_affinity
from .backbones import ClipBackbone, DinoBackbone, cls_saliency, minmax
from .config import AffordanceConfig
from .objectness import ObjectnessFit, ObjectnessHead
from .part_prior import PartPriorFit, part_descriptors
from .prompts import HAND_PROMPT, ego_prompt, exo_prompt

__all__ = ["AffordanceModel", "Features", "TokenMLP"]


@dataclass
class Features:
    """Frozen-backbone outputs for a batch of images (no gradient).

    Attributes:
        keys: (N, D, h, w) DINO last-block keys.
        cls_attention: (N, K, h, w) DINO CLS attention of the saliency heads.
        clip: (N, Dc, h, w) L2-normalised ClearCLIP patch embeddings, or None without CLIP.
    """

    keys: Tensor
    cls_attention: Tensor
    clip: Tensor | None

    def saliency(self, binarize_heads: bool = True) -> Tensor:
        """(N, h, w) saliency in [0, 1]; see :func:`affordance_core.backbones.cls_saliency`."""
        return cls_saliency(self.cls_attention, binarize_heads)

    def index(self, idx: Tensor | slice) -> Features:
        return Features(
            self.keys[idx], self.cls_attention[idx], None if self.clip is None else self.clip[idx]
        )


class TokenMLP(nn.Module):
    """Token-wise LayerNorm -> Linear -> GELU -> Linear on a (N, D, h, w) map."""

    def __init__(self, dim: int, ratio: int = 4, residual: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * ratio)
        self.fc2 = nn.Linear(dim * ratio, dim)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.permute(0, 2, 3, 1)  # (N, h, w, D)
        out = self.fc2(F.gelu(self.fc1(self.norm(tokens))))
        if self.residual:
            out = out + tokens
        return out.permute(0, 3, 1, 2)


def _view_projection(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(dim, out, 3, padding=1),
        nn.BatchNorm2d(out),
        nn.ReLU(inplace=True),
        nn.Conv2d(out, out, 3, padding=1),
        nn.BatchNorm2d(out),
        nn.ReLU(inplace=True),
    )


class AffordanceModel(nn.Module):
    """Frozen backbones + trainable heads producing class activation maps (CAMs).

    Heads (trainable): ``aff_proj`` (token MLP shared by views), one 2-layer conv projection
    per view (``ego_proj``, ``exo_proj``; LoopTrans' unified localiser is ``exo_proj`` and its
    ego pixel decoder ``pixel_proj``), the shared 1x1 ``classifier`` (C action classes plus
    optional noise classes), and SelectiveCL's two 1x1 contrast heads.

    Args:
        config: architecture (see :class:`AffordanceConfig`).
        vocabulary: action words; index = class id.
        dino: DINO-role backbone (frozen).
        clip: CLIP-role backbone (frozen) or None.
    """

    def __init__(
        self,
        config: AffordanceConfig,
        vocabulary: Sequence[str],
        dino: DinoBackbone,
        clip: ClipBackbone | None,
    ) -> None:
        super().__init__()
        if not vocabulary:
            raise ValueError("the vocabulary is empty; a model needs at least one action word")
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError(f"duplicate action words in the vocabulary: {list(vocabulary)}")
        self.config = config
        self.vocabulary = list(vocabulary)
        self.dino = dino
        self.clip = clip
        dim = dino.dim
        width = config.proj_dim or dim
        self.num_classes = len(self.vocabulary)
        self.aff_proj = TokenMLP(dim, config.mlp_ratio, config.proj_residual)
        self.ego_proj = _view_projection(dim, width)
        self.exo_proj = _view_projection(dim, width)
        self.pixel_proj = (
            _view_projection(dim, width) if config.inference_branch == "pixel" else None
        )
        self.classifier = nn.Conv2d(width, self.num_classes + config.num_noise_classes, 1)
        wants_contrast = config.contrast_heads
        self.proto_head = nn.Conv2d(width, width, 1) if wants_contrast else None
        self.pixel_head = nn.Conv2d(width, width, 1) if wants_contrast else None
        self.part_prior = nn.Conv2d(dim, self.num_classes, 1) if config.part_prior else None
        if self.part_prior is not None:  # fitted by set_part_prior, never by the optimiser
            nn.init.zeros_(self.part_prior.weight)
            nn.init.zeros_(self.part_prior.bias)
            self.part_prior.requires_grad_(False)
        self.objectness: ObjectnessHead | None = None
        if config.objectness and clip is not None:  # trained by set_objectness, never here
            self.objectness = ObjectnessHead(dim, clip.dim, len(dino.saliency_heads))
            self.objectness.requires_grad_(False)
        self.register_buffer("ego_text", torch.empty(0), persistent=False)
        self.register_buffer("exo_text", torch.empty(0), persistent=False)
        self.register_buffer("hand_text", torch.empty(0), persistent=False)
        self.refresh_text_embeddings()

    # ------------------------------------------------------------------ bookkeeping
    @property
    def image_size(self) -> int:
        return self.config.image_size

    def class_id(self, action: str) -> int:
        """Index of ``action`` in the vocabulary (ValueError listing the vocabulary if absent)."""
        try:
            return self.vocabulary.index(action)
        except ValueError:
            raise ValueError(
                f"unknown action {action!r}; this model knows: {', '.join(self.vocabulary)}"
            ) from None

    @torch.no_grad()
    def refresh_text_embeddings(self) -> None:
        """Encode the ego and exo prompts of every class, and the hand prompt, once (the text
        tower is frozen)."""
        if self.clip is None:
            return
        device = next(self.clip.parameters()).device
        self.clip.to(device)
        self.ego_text = self.clip.encode_text([ego_prompt(a) for a in self.vocabulary])
        self.exo_text = self.clip.encode_text([exo_prompt(a) for a in self.vocabulary])
        self.hand_text = self.clip.encode_text([HAND_PROMPT])[0]

    def train(self, mode: bool = True) -> AffordanceModel:
        super().train(mode)
        self.dino.eval()
        if self.clip is not None:
            self.clip.eval()
        return self

    def head_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """The trainable (name, module) pairs, i.e. everything but the backbones."""
        for name, module in self.named_children():
            if name not in ("dino", "clip") and module is not None:
                yield name, module

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """State of the trainable heads only (checkpoints do not repeat the backbones)."""
        return {
            f"{name}.{k}": v
            for name, module in self.head_modules()
            for k, v in module.state_dict().items()
        }

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Strictly load :meth:`trainable_state_dict` output (ValueError on any mismatch)."""
        own = self.trainable_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
        if "objectness.weight" in state and "objectness.out.weight" in own:
            raise ValueError(
                "this checkpoint holds the linear objectness read-out of an older version; "
                "the gate is now a trained head: retrain it with affordance-train (which "
                "copies objectness_<preset>.pt from the weights folder)"
            )
        if missing or unexpected or shapes:
            raise ValueError(
                f"head weights do not match this model: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}, shape mismatch {shapes[:3]}"
            )
        for name, module in self.head_modules():
            prefix = f"{name}."
            module.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )

    def param_groups(self, base_lr: float) -> list[dict]:
        """SGD parameter groups of the LOCATE recipe.

        Weights train at ``base_lr`` and biases at 2x; the token MLP and the classifier at 10x
        (biases 20x). The reference applied the 10x rule by matching "fc" in parameter names,
        which left SelectiveCL's renamed classifier at 1x by accident; we apply it by module.
        The LayerNorm of the token MLP (``aff_proj.norm``) takes the multiplier
        ``self.aff_norm_lr_mult`` (bias twice it): 10 unless a training method set it (the
        method option ``aff_norm_lr_mult``); the reference's name rule gives it 1.

        Returns:
            groups named ``x<mult>`` / ``x<mult>_bias`` with keys params, lr, lr_mult, name.
        """
        norm_mult = float(getattr(self, "aff_norm_lr_mult", 10.0))
        groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
        for name, module in self.head_modules():
            mult = 10.0 if name in ("aff_proj", "classifier") else 1.0
            for pname, param in module.named_parameters():
                if not param.requires_grad:
                    continue
                is_bias = pname.endswith("bias")
                own = norm_mult if name == "aff_proj" and pname.startswith("norm.") else mult
                groups.setdefault((own * (2.0 if is_bias else 1.0), is_bias), []).append(param)
        return [
            {
                "params": params,
                "lr": base_lr * lr_mult,
                "lr_mult": lr_mult,
                "name": f"x{lr_mult:g}{'_bias' if is_bias else ''}",
            }
            for (lr_mult, is_bias), params in sorted(groups.items())
        ]

    # ------------------------------------------------------------------ forward pieces
    @torch.no_grad()
    def extract(self, images: Tensor) -> Features:
        """Run the frozen backbones once.

        Args:
            images: (N, 3, S, S) float RGB in [0, 1].
        """
        dino = self.dino(images)
        clip = self.clip.encode_dense(images) if self.clip is not None else None
        return Features(
            dino.keys.float(), dino.cls_attention.float(), None if clip is None else clip.float()
        )

    def cam(self, keys: Tensor, branch: str = "ego") -> tuple[Tensor, Tensor]:
        """Projected features and CAMs of one branch.

        Args:
            keys: (N, D, h, w) DINO keys.
            branch: ``ego``, ``exo``, ``ego+exo`` (the mean of the two projections, so its
                CAMs are the mean of theirs) or ``pixel``.

        Returns:
            features (N, W, h, w) (W = config.proj_dim or D) and CAMs (N, C + noise, h, w)
            (raw, unbounded).
        """
        tokens = self.aff_proj(keys)
        if branch == "ego+exo":
            feat = 0.5 * (self.ego_proj(tokens) + self.exo_proj(tokens))
            return feat, self.classifier(feat)
        proj = {"ego": self.ego_proj, "exo": self.exo_proj, "pixel": self.pixel_proj}[branch]
        if proj is None:
            raise ValueError(f"this model has no {branch!r} branch")
        feat = proj(tokens)
        return feat, self.classifier(feat)

    def affinity(self, clip_dense: Tensor, class_ids: Tensor, prompt: str = "ego") -> Tensor:
        """Cosine between patch embeddings and each sample's class prompt.

        Args:
            clip_dense: (N, Dc, h, w) normalised patch embeddings.
            class_ids: (N,) int64.
            prompt: ``ego`` ("an item to X with"), ``exo`` ("a person X an item") or
                ``hand`` (``HAND_PROMPT``, the same text for every class).

        Returns:
            (N, h, w) cosine similarities in [-1, 1].
        """
        if prompt == "hand":
            text = self.hand_text.expand(class_ids.shape[0], -1)  # (N, Dc)
        else:
            text = (self.ego_text if prompt == "ego" else self.exo_text)[class_ids]
        return prompt_affinity(clip_dense, text)

    @torch.no_grad()
    def set_part_prior(self, fit: PartPriorFit) -> None:
        """Load a fitted part prior (:func:`affordance_core.part_prior.fit_part_prior`)."""
        if self.part_prior is None:
            raise ValueError("this model has no part prior; build it with part_prior=True")
        weight = self.part_prior.weight
        if tuple(fit.weight.shape) != tuple(weight.shape[:2]):
            raise ValueError(
                f"part prior weights {tuple(fit.weight.shape)} do not fit this model "
                f"({weight.shape[0]} actions, {weight.shape[1]} key channels)"
            )
        weight.copy_(fit.weight.to(weight)[:, :, None, None])
        self.part_prior.bias.copy_(fit.bias.to(weight))

    def part_probability(
        self, keys: Tensor, class_ids: Tensor, temperature: float | None = None
    ) -> Tensor:
        """``p(action | patch)`` of the part prior, ``softmax(logits / T)`` over the actions.

        Args:
            keys: (N, D, h, w) DINO keys.
            class_ids: (N, A) int64 action ids.
            temperature: T > 0; None takes ``config.part_prior_temperature``.

        Returns:
            (N, A, h, w) float in [0, 1] (uniform 1 / C before the prior is fitted).
        """
        if self.part_prior is None:
            raise ValueError("this model has no part prior; build it with part_prior=True")
        if temperature is None:
            temperature = self.config.part_prior_temperature
        logits = self.part_prior(part_descriptors(keys))  # (N, C, h, w)
        prob = (logits / temperature).softmax(1)
        return prob.gather(1, class_ids[:, :, None, None].expand(-1, -1, *prob.shape[2:]))

    @torch.no_grad()
    def set_objectness(self, fit: ObjectnessFit) -> None:
        """Load a trained objectness head (:func:`affordance_core.objectness.train_objectness`).

        Raises:
            ValueError: the model has no head, or the fit's shapes do not match these
                backbones (trained on other backbones).
        """
        if self.objectness is None:
            raise ValueError("this model has no objectness head; build it with objectness=True")
        if tuple(fit.dims) != self.objectness.dims:
            raise ValueError(
                f"the objectness head was trained for (key, CLIP, heads, hidden) = "
                f"{tuple(fit.dims)} but these backbones need {self.objectness.dims}: it was "
                "trained on other backbones; retrain it with `python -m "
                "training.pretrain.objectness --weights-dir DIR`"
            )
        self.objectness.load_state_dict(fit.state)

    def frame_objectness(self, feats: Features) -> Tensor:
        """(N,) float in [0, 1]: the probability that each frame shows an object (1 without a
        head, or with an untrained one)."""
        if self.objectness is None or feats.clip is None:
            return torch.ones(feats.keys.shape[0], device=feats.keys.device)
        logits = self.objectness(feats.keys, feats.cls_attention, feats.clip)
        return torch.sigmoid(logits.float())

    def inference_branch(self) -> str:
        """The branch whose CAM maps an ego image at inference (``config.inference_branch``)."""
        return self.config.inference_branch

    def calibrate(self, cams: Tensor, affinity: Tensor | None) -> Tensor:
        """Apply the configured CAM calibration (``config.calibration``).

        With ``m(x) = (x - min x) / (max x - min x)`` per map (0 for a constant map):

        * ``none``: ``cam`` (the raw CAM);
        * ``binary``: ``m(cam) * [m(A) >= object_threshold]`` (the paper: the object affinity
          binarised at gamma_2);
        * ``product``: ``m(cam) * m(A)`` (both min-max normalised: non-negative everywhere);
        * ``reference``: ``cam * m(A)`` (exactly the SelectiveCL reference code: the raw,
          signed CAM times the min-max affinity).

        Args:
            cams: (N, h, w) raw CAMs of the requested classes (any real values).
            affinity: (N, h, w) ego-prompt affinity, or None (then ``cams`` is returned).

        Returns:
            (N, h, w) maps, not normalised; non-negative except for ``none`` and ``reference``.
        """
        mode = self.config.calibration
        if mode == "none" or affinity is None:
            return cams
        obj = minmax(affinity)
        if mode == "reference":
            return cams * obj
        if mode == "binary":
            obj = (obj >= self.config.object_threshold).to(cams.dtype)
        return minmax(cams) * obj

    def _action_cams(self, feats: Features, class_ids: Tensor) -> Tensor:
        """(N, A, h, w) float raw CAM logits of the requested actions on the inference branch."""
        _, cams = self.cam(feats.keys, self.inference_branch())  # (N, C', h, w)
        cams = cams.float()
        return cams.gather(1, class_ids[:, :, None, None].expand(-1, -1, *cams.shape[2:]))

    def _action_affinity(self, feats: Features, class_ids: Tensor) -> Tensor:
        """(N, A, h, w) float raw ego-prompt affinity of the requested actions."""
        return prompt_affinity(feats.clip, self.ego_text[class_ids]).float()

    def _maps_and_peaks(
        self,
        feats: Features,
        class_ids: Tensor,
        *,
        affinity: bool,
        prior: bool = True,
        cams: Tensor | None = None,
        action_affinity: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The one map path: maps (N, A, h, w) float (calibrated, times the part prior when
        ``prior`` and the model has one) and the presence score's inputs (N, A, 3) float
        (:meth:`score_features`). ``affinity`` reads the CLIP-role affinity (needed by the
        calibration and by ``z_aff``). ``cams`` (:meth:`_action_cams`) and
        ``action_affinity`` (:meth:`_action_affinity`), when given, are used instead of
        computing them."""
        n, a = class_ids.shape
        picked = self._action_cams(feats, class_ids) if cams is None else cams  # (N, A, h, w)
        aff = None
        if affinity:
            aff = (
                self._action_affinity(feats, class_ids)
                if action_affinity is None
                else action_affinity
            )
        calib_aff = None if self.config.calibration == "none" else aff
        maps = self.calibrate(
            picked.flatten(0, 1), None if calib_aff is None else calib_aff.flatten(0, 1)
        ).view(n, a, *picked.shape[2:])
        if prior and self.part_prior is not None:
            maps = minmax(maps) * self.part_probability(feats.keys, class_ids)
        z_cam = picked.amax((-1, -2))
        z_aff = torch.zeros_like(z_cam) if aff is None else aff.amax((-1, -2))
        return maps, torch.stack([z_cam, z_aff, maps.float().amax((-1, -2))], -1)

    def score_features(self, feats: Features, class_ids: Tensor) -> Tensor:
        """The three inputs of the presence score for several actions per image.

        Args:
            feats: backbone features of N images.
            class_ids: (N, A) int64 action ids per image.

        Returns:
            (N, A, 3) float: ``z_cam``, the spatial maximum of the action's raw CAM logit
            (unbounded); ``z_aff``, the spatial maximum of the raw ego-prompt cosine (in
            [-1, 1]; 0 when the model has no CLIP-role backbone); ``z_map``, the spatial
            maximum of the inference map before any stretching (in [0, 1] with a part prior:
            how strongly the action's part is found on the object; the calibrated map's own
            scale without one).
        """
        return self._maps_and_peaks(feats, class_ids, affinity=self.clip is not None)[1]

    def presence_score(self, features: Tensor) -> Tensor:
        """``sigmoid(w_cam * z_cam + w_aff * z_aff + w_map * z_map + b)``
        (``config.score_weights``, ``config.score_map_weight``, ``config.score_bias``) of
        :meth:`score_features`' (..., 3) output; (...) in [0, 1]."""
        w_cam, w_aff = self.config.score_weights
        logit = (
            w_cam * features[..., 0]
            + w_aff * features[..., 1]
            + self.config.score_map_weight * features[..., 2]
            + self.config.score_bias
        )
        return torch.sigmoid(logit)

    @property
    def uses_affinity(self) -> bool:
        """True if :meth:`infer` reads the CLIP patch embeddings: calibrated maps, or a presence
        score that weights the affinity peak (``score_weights[1] != 0``)."""
        return self.clip is not None and (
            self.config.calibration != "none"
            or self.config.score_weights[1] != 0.0
            or self.objectness is not None
        )

    def infer(self, feats: Features, class_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Inference maps and scores for several actions per image: the one map path shared by
        evaluation, the predictor and the exported graph.

        Args:
            feats: backbone features of N images.
            class_ids: (N, A) int64 action ids per image (A >= 1).

        Returns:
            maps (N, A, h, w) float (raw scale: evaluation resizes and min-max normalises them)
            and scores (N, A) float in [0, 1]: the absolute probability that the image affords
            each action, ``sigmoid(w_cam * z_cam + w_aff * z_aff + w_map * z_map + b)`` of the
            spatial maxima of the action's raw CAM logit (inference branch), of its raw
            ego-prompt affinity and of the returned map (:meth:`score_features`,
            :meth:`presence_score`; weights and bias from the config, fitted on validation
            data). Each (image, action) is scored on its own: no
            softmax over the vocabulary. With an objectness read-out (``config.objectness``)
            the score is that probability times :meth:`frame_objectness`, ``P(object in
            frame)``, so background-only frames score low for every action. With a part prior
            (``config.part_prior``) the maps are the min-max calibrated maps times
            :meth:`part_probability`, in [0, 1].
        """
        maps, peaks = self._maps_and_peaks(feats, class_ids, affinity=self.uses_affinity)
        scores = self.presence_score(peaks)
        if self.objectness is not None:
            scores = scores * self.frame_objectness(feats)[:, None]
        return maps, scores

    def method_maps(self, feats: Features, class_ids: Tensor) -> Tensor:
        """:meth:`infer`'s maps without the part prior: the method's calibrated maps
        (N, A, h, w) float (raw scale)."""
        return self._maps_and_peaks(feats, class_ids, affinity=self.uses_affinity, prior=False)[0]

    def maps_under(
        self, feats: Features, class_ids: Tensor, choices: Sequence[tuple[str, str]]
    ) -> list[Tensor]:
        """:meth:`infer`'s maps under several ``(inference_branch, calibration)`` choices, each
        branch's CAM and the affinity computed once (what a validation choice compares).

        Args:
            feats: backbone features of N images.
            class_ids: (N, A) int64 action ids per image.
            choices: ``(branch, calibration)`` pairs (``AffordanceConfig`` values; not
                ``pixel``).

        Returns:
            one (N, A, h, w) float map per choice, in order; the config is left as it was.
        """
        original = self.config
        affinity = self.clip is not None
        action_affinity = self._action_affinity(feats, class_ids) if affinity else None
        cams: dict[str, Tensor] = {}
        maps = []
        try:
            for branch, calibration in choices:
                self.config = dataclasses.replace(
                    original, inference_branch=branch, calibration=calibration
                )
                if branch not in cams:
                    cams[branch] = self._action_cams(feats, class_ids)
                maps.append(
                    self._maps_and_peaks(
                        feats,
                        class_ids,
                        affinity=affinity,
                        cams=cams[branch],
                        action_affinity=action_affinity,
                    )[0]
                )
        finally:
            self.config = original
        return maps

    def maps_from_features(self, feats: Features, class_ids: Tensor) -> Tensor:
        """(N, h, w) inference maps for features of N images and one class id each."""
        return self.infer(feats, class_ids.view(-1, 1))[0][:, 0]

    @torch.no_grad()
    def predict_maps(self, images: Tensor, class_ids: Tensor) -> Tensor:
        """Inference maps for a batch.

        Args:
            images: (N, 3, S, S) float RGB in [0, 1].
            class_ids: (N,) int64 action ids.

        Returns:
            (N, h, w) float maps (raw scale; evaluation resizes and min-max normalises).
        """
        return self.maps_from_features(self.extract(images), class_ids)
