"""Affordance vocabularies and the on-disk layout of AGD20K-style datasets.

Layout (AGD20K; HICO-IIF is the same tree without the ``<split>`` level)::

    <root>/<split>/trainset/exocentric/<aff>/<obj>/*.jpg
    <root>/<split>/trainset/egocentric/<aff>/<obj>/*.jpg
    <root>/<split>/testset/egocentric/<aff>/<obj>/*.jpg
    <root>/<split>/testset/GT/<aff>/<obj>/<stem>.png      grayscale heat map, 0..255

The order of an official vocabulary defines the class ids.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "AGD20K_SEEN",
    "AGD20K_UNSEEN",
    "HICO_IIF",
    "IMAGE_EXTENSIONS",
    "LAYOUT_HELP",
    "OFFICIAL_VOCABULARIES",
    "list_subdirs",
    "resolve_vocabulary",
    "split_dir",
]

AGD20K_SEEN: tuple[str, ...] = (
    "beat",
    "boxing",
    "brush_with",
    "carry",
    "catch",
    "cut",
    "cut_with",
    "drag",
    "drink_with",
    "eat",
    "hit",
    "hold",
    "jump",
    "kick",
    "lie_on",
    "lift",
    "look_out",
    "open",
    "pack",
    "peel",
    "pick_up",
    "pour",
    "push",
    "ride",
    "sip",
    "sit_on",
    "stick",
    "stir",
    "swing",
    "take_photo",
    "talk_on",
    "text_on",
    "throw",
    "type_on",
    "wash",
    "write",
)
"""The 36 AGD20K-Seen affordances; the position is the class id."""

_UNSEEN_EXCLUDED = frozenset(
    {
        "beat",
        "boxing",
        "brush_with",
        "drag",
        "lift",
        "look_out",
        "pack",
        "stir",
        "talk_on",
        "text_on",
        "write",
    }
)

AGD20K_UNSEEN: tuple[str, ...] = tuple(a for a in AGD20K_SEEN if a not in _UNSEEN_EXCLUDED)
"""The 25 AGD20K-Unseen affordances (Seen minus 11, same relative order)."""

HICO_IIF: tuple[str, ...] = (
    "cut_with",
    "drink_with",
    "hold",
    "open",
    "pour",
    "sip",
    "stick",
    "stir",
    "swing",
    "type_on",
)
"""The 10 HICO-IIF affordances."""

OFFICIAL_VOCABULARIES: dict[str, tuple[str, ...]] = {
    "Seen": AGD20K_SEEN,
    "Unseen": AGD20K_UNSEEN,
    "HICO-IIF": HICO_IIF,
}

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
"""Lower-case file suffixes read as images."""

LAYOUT_HELP = (
    "expected the AGD20K layout <root>/<split>/trainset/{egocentric,exocentric}/<aff>/<obj>/*.jpg"
    " and <root>/<split>/testset/{egocentric/<aff>/<obj>/*.jpg, GT/<aff>/<obj>/<stem>.png}"
    ' (HICO-IIF: the same tree without the <split> level; see README, "Data")'
)


def list_subdirs(path: Path) -> list[str]:
    """Sorted names of the non-hidden sub-directories of ``path`` ([] if it does not exist)."""
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_dir(root: str | Path, split: str) -> Path:
    """Directory holding ``trainset/`` and ``testset/`` for a split.

    ``<root>/<split>`` for Seen, Unseen and any other split name. For HICO-IIF, ``<root>``
    itself when it holds ``trainset/`` or ``testset/``, else ``<root>/HICO-IIF``.

    Args:
        root: dataset root directory.
        split: split name, e.g. "Seen", "Unseen", "HICO-IIF" or a user's own.

    Returns:
        The split directory (it exists and holds ``trainset/`` or ``testset/``).

    Raises:
        ValueError: if the root, the split directory or both of its subsets are missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data root {root} does not exist; {LAYOUT_HELP}")
    if not split or split in {".", ".."} or "/" in split or "\\" in split:
        raise ValueError(f"split must be a directory name such as 'Seen', got {split!r}")
    if split == "HICO-IIF" and ((root / "trainset").is_dir() or (root / "testset").is_dir()):
        return root
    path = root / split
    if not path.is_dir():
        found = list_subdirs(root)
        raise ValueError(
            f"split directory {path} does not exist (found {found} under {root}); {LAYOUT_HELP}"
        )
    if not ((path / "trainset").is_dir() or (path / "testset").is_dir()):
        raise ValueError(f"{path} holds neither trainset/ nor testset/; {LAYOUT_HELP}")
    return path


#: Optional file in a split folder that pins the class order of a user's own dataset.
VOCABULARY_FILE = "vocabulary.txt"


def resolve_vocabulary(root: str | Path, split: str) -> list[str]:
    """Affordance vocabulary (class order) of a dataset on disk.

    A ``vocabulary.txt`` in the split folder (one action per line) pins the class order and
    wins over everything else. For Seen / Unseen / HICO-IIF, the official list when every
    affordance directory found in the split (trainset and testset) belongs to it. Otherwise
    (a user's own data) the sorted directory names under ``trainset/exocentric``
    (``testset/egocentric`` when there is no trainset).

    Args:
        root: dataset root directory.
        split: split name.

    Returns:
        Affordance names; the index of a name is its class id.

    Raises:
        ValueError: if the layout is missing or no affordance directory is found.
    """
    base = split_dir(root, split)
    pinned = base / VOCABULARY_FILE
    if pinned.is_file():
        names = [line.strip() for line in pinned.read_text().splitlines() if line.strip()]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"{pinned} must list distinct action words, one per line")
        return names
    subsets = ("trainset/exocentric", "trainset/egocentric", "testset/egocentric", "testset/GT")
    present = set().union(*(list_subdirs(base / s) for s in subsets))
    official = OFFICIAL_VOCABULARIES.get(split)
    if official is not None and present and present <= set(official):
        return list(official)
    names = list_subdirs(base / "trainset" / "exocentric") or list_subdirs(
        base / "testset" / "egocentric"
    )
    if not names:
        raise ValueError(f"no affordance directories found under {base}; {LAYOUT_HELP}")
    return names
