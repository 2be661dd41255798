"""Unsupervised patch clustering for LoopTrans' pixel pseudo-masks.

LoopTrans groups the ego patches with an ACSeg module pretrained by its authors; that
module's training code was never released. Two replacements, both computable here:

* :class:`KMeansClusterer` (the default): batched spherical K-means (K=4) on the frozen DINO
  keys of each ego image, run per step. It needs no training stage or extra weights, is
  deterministic given the generator's seed, and costs little next to the backbones.
* :class:`PrototypeClusterer`: an ACSeg-style module (learnable tokens refined by cross- and
  self-attention over the descriptors), trained unsupervised with a modularity objective by
  :func:`fit_prototype_clusterer`. ``freeze_queries=True`` reproduces the reference's quirk of
  attending with the initial token embeddings in every layer.

Every clusterer maps ``(keys (B, D, h, w), generator)`` to ``(B, h, w)`` int64 cluster ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .discovery import masked_kmeans

__all__ = [
    "Clusterer",
    "KMeansClusterer",
    "PrototypeClusterer",
    "modularity_loss",
    "fit_prototype_clusterer",
]


class Clusterer(Protocol):
    """Anything that assigns every patch of every image to one of ``num_clusters`` groups."""

    num_clusters: int

    def __call__(self, keys: Tensor, generator: torch.Generator | None = None) -> Tensor: ...


class KMeansClusterer(nn.Module):
    """Batched spherical K-means over the patches of each image (no parameters).

    Args:
        num_clusters: K (4, as the reference's ACSeg module).
        iters: Lloyd iterations.
    """

    def __init__(self, num_clusters: int = 4, iters: int = 10) -> None:
        super().__init__()
        self.num_clusters = num_clusters
        self.iters = iters

    @torch.no_grad()
    def forward(self, keys: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Args: keys (B, D, h, w); generator for the initial centroids.

        Returns:
            (B, h, w) int64 cluster ids in [0, K). Every image with at least K patches uses
            K non-empty clusters at initialisation; Lloyd updates may still empty one.
        """
        b, _, h, w = keys.shape
        points = F.normalize(keys.flatten(2).transpose(1, 2).float(), dim=-1)  # (B, P, D)
        valid = torch.ones(points.shape[:2], dtype=torch.bool, device=keys.device)
        centroids, _ = masked_kmeans(points, valid, self.num_clusters, self.iters, generator)
        return torch.cdist(points, centroids).argmin(-1).view(b, h, w)


def modularity_loss(scores: Tensor, descriptors: Tensor) -> Tensor:
    """Negative soft modularity of a patch affinity graph under soft cluster assignments.

    The graph has weights A_ij = max(0, cos(x_i, x_j)); with degrees d and total weight 2m,
    Q = 1/(2m) * sum_ij (A_ij - d_i d_j / 2m) <s_i, s_j>, with s_i the soft assignment of
    patch i. Q is high when similar patches share clusters beyond chance.

    Args:
        scores: (B, K, P) soft assignments (each column sums to 1).
        descriptors: (B, D, P) patch descriptors (no gradient needed).

    Returns:
        scalar, -Q averaged over images (in [-1, 0.5]).
    """
    x = F.normalize(descriptors, dim=1)
    adj = (x.transpose(1, 2) @ x).clamp_min(0)  # (B, P, P)
    degree = adj.sum(-1)  # (B, P)
    total = degree.sum(-1)  # (B,) = 2m
    within = ((scores @ adj) * scores).sum((1, 2))
    expected = (scores @ degree[..., None]).pow(2).sum((1, 2)) / total
    return -((within - expected) / total).mean()


class _TokenLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mix = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, queries: Tensor, patches: Tensor) -> Tensor:
        tokens = tokens + self.cross(queries, patches, patches, need_weights=False)[0]
        tokens = tokens + self.mix(tokens, tokens, tokens, need_weights=False)[0]
        return self.norm(tokens + self.ffn(tokens))


class PrototypeClusterer(nn.Module):
    """ACSeg-style clustering: K learnable tokens adapted to each image's descriptors.

    Each layer lets the tokens cross-attend to the (layer-normalised) patch descriptors,
    then to each other, then applies an FFN, with residual connections and a closing
    LayerNorm. A patch's score for token k is cos(descriptor, token_k) + 1; its cluster is
    the argmax.

    Args:
        dim: descriptor width D.
        num_clusters: K tokens.
        depth: layers.
        heads: attention heads (must divide ``dim``).
        mlp_ratio: FFN hidden width / dim.
        freeze_queries: attend with the initial token embeddings in every layer (the
            reference's behaviour) instead of the current token state.
        temperature: softmax temperature of the soft assignments used for training.
    """

    def __init__(
        self,
        dim: int,
        num_clusters: int = 4,
        depth: int = 2,
        heads: int = 8,
        mlp_ratio: int = 4,
        freeze_queries: bool = False,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_clusters = num_clusters
        self.freeze_queries = freeze_queries
        self.temperature = temperature
        self.tokens = nn.Parameter(torch.randn(num_clusters, dim) * 0.02)
        self.input_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(_TokenLayer(dim, heads, mlp_ratio) for _ in range(depth))

    def scores(self, keys: Tensor) -> Tensor:
        """Args: keys (B, D, h, w). Returns: (B, K, h*w) cos(descriptor, token) + 1 in [0, 2]."""
        patches = keys.flatten(2).transpose(1, 2)  # (B, P, D)
        init = self.tokens[None].expand(keys.shape[0], -1, -1)
        tokens = init
        memory = self.input_norm(patches)
        for layer in self.layers:
            tokens = layer(tokens, init if self.freeze_queries else tokens, memory)
        cos = F.normalize(tokens, dim=-1) @ F.normalize(patches, dim=-1).transpose(1, 2)
        return cos + 1

    def loss(self, keys: Tensor) -> Tensor:
        """Unsupervised training objective on (B, D, h, w) keys: :func:`modularity_loss`."""
        soft = ((self.scores(keys) - 1) / self.temperature).softmax(1)
        return modularity_loss(soft, keys.flatten(2).detach())

    @torch.no_grad()
    def forward(self, keys: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Args: keys (B, D, h, w); generator unused. Returns: (B, h, w) int64 ids in [0, K)."""
        b, _, h, w = keys.shape
        return self.scores(keys.float()).argmax(1).view(b, h, w)


def fit_prototype_clusterer(
    clusterer: PrototypeClusterer, batches: Iterable[Tensor], lr: float = 1e-3
) -> list[float]:
    """Train a :class:`PrototypeClusterer` unsupervised, one Adam step per batch of keys.

    Args:
        clusterer: the module to train (in place).
        batches: iterable of (B, D, h, w) frozen descriptors (e.g. ego DINO keys).
        lr: Adam learning rate.

    Returns:
        the loss of every step.
    """
    optimizer = torch.optim.Adam(clusterer.parameters(), lr=lr)
    clusterer.train()
    history = []
    for keys in batches:
        loss = clusterer.loss(keys.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    clusterer.eval()
    return history
