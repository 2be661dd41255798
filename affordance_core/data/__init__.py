"""Datasets, vocabularies and image transforms for AGD20K-layout data."""

from affordance_core.data.datasets import AffordanceTestDataset as AffordanceTestDataset
from affordance_core.data.datasets import AffordanceTrainDataset as AffordanceTrainDataset
from affordance_core.data.datasets import BackgroundFrames as BackgroundFrames
from affordance_core.data.datasets import holdout_split as holdout_split
from affordance_core.data.transforms import load_gray as load_gray
from affordance_core.data.transforms import load_rgb as load_rgb
from affordance_core.data.transforms import to_tensor as to_tensor
from affordance_core.data.transforms import train_augment as train_augment
from affordance_core.data.vocab import AGD20K_SEEN as AGD20K_SEEN
from affordance_core.data.vocab import AGD20K_UNSEEN as AGD20K_UNSEEN
from affordance_core.data.vocab import HICO_IIF as HICO_IIF
from affordance_core.data.vocab import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from affordance_core.data.vocab import OFFICIAL_VOCABULARIES as OFFICIAL_VOCABULARIES
from affordance_core.data.vocab import resolve_vocabulary as resolve_vocabulary
from affordance_core.data.vocab import split_dir as split_dir

__all__ = [
    "AGD20K_SEEN",
    "AGD20K_UNSEEN",
    "HICO_IIF",
    "IMAGE_EXTENSIONS",
    "OFFICIAL_VOCABULARIES",
    "AffordanceTestDataset",
    "AffordanceTrainDataset",
    "BackgroundFrames",
    "holdout_split",
    "load_gray",
    "load_rgb",
    "resolve_vocabulary",
    "split_dir",
    "to_tensor",
    "train_augment",
]
