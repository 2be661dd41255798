"""Synthetic affordance world: objects made of typed parts, ego/exo scenes, AGD20K-layout corpus.

``world`` draws scenes (``render_scene``); ``corpus`` writes a benchmark corpus in the AGD20K
directory layout (``write_agd_corpus``) and streams pretraining scenes from a disjoint seed
space (``iter_pretrain_scenes``).
"""

from .corpus import (
    DEFAULT_SPLIT_OBJECTS,
    CorpusStats,
    corpus_image_rng,
    corpus_pairs,
    iter_pretrain_backgrounds,
    iter_pretrain_scenes,
    write_agd_corpus,
)
from .world import (
    AFFORDANCES,
    OBJECTS,
    PART_TYPES,
    ObjectSpec,
    Part,
    Scene,
    affordance_heatmap,
    afforded_parts,
    list_actions,
    make_contact_sheet,
    object_caption,
    render_scene,
)

__all__ = [
    "AFFORDANCES",
    "DEFAULT_SPLIT_OBJECTS",
    "OBJECTS",
    "PART_TYPES",
    "CorpusStats",
    "ObjectSpec",
    "Part",
    "Scene",
    "affordance_heatmap",
    "afforded_parts",
    "corpus_image_rng",
    "corpus_pairs",
    "iter_pretrain_backgrounds",
    "iter_pretrain_scenes",
    "list_actions",
    "make_contact_sheet",
    "object_caption",
    "render_scene",
    "write_agd_corpus",
]
