"""Text prompts that turn an action word into CLIP text (SelectiveCL's templates)."""

from __future__ import annotations

__all__ = ["HAND_PROMPT", "ego_prompt", "exo_prompt", "readable"]

#: Action-agnostic text of the person's hand (the tiny tier's exo interaction cue).
HAND_PROMPT = "a hand"


def readable(action: str) -> str:
    """Return the action word as prose: ``"cut_with"`` -> ``"cut with"``.

    The reference implementation inserts the raw folder name (underscores included);
    we replace underscores with spaces so the text encoder sees ordinary words.
    """
    return action.replace("_", " ").strip()


def ego_prompt(action: str) -> str:
    """Prompt describing an object that affords ``action``: ``"an item to hold with"``.

    " with" is appended unless the action already ends in a preposition that plays its role
    (``cut_with`` -> ``"an item to cut with"``, ``sit_on`` -> ``"an item to sit on"``).
    """
    words = readable(action)
    last = words.split()[-1] if words else ""
    suffix = "" if last in {"with", "on", "in", "into", "at", "out", "up"} else " with"
    return f"an item to {words}{suffix}"


def exo_prompt(action: str) -> str:
    """Prompt describing a person performing ``action``: ``"a person holding an item"`` style."""
    return f"a person {readable(action)} an item"
