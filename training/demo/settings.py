"""What the demo runs: the method rows, the splits, the budgets and the reported metrics."""

from __future__ import annotations

from typing import Any

__all__ = [
    "CORPUS_VERSION",
    "DEFAULT_METHODS",
    "METHOD_ORDER",
    "PAPER_SETTINGS",
    "ROW_METRICS",
    "SPLITS",
    "VALIDATION_SEED_OFFSET",
    "VARIANTS",
    "budget_snapshots",
    "demo_budget",
]

METHOD_ORDER = ("ce", "locate", "selectivecl", "selectivecl_paper", "looptrans", "looptrans_gated")
DEFAULT_METHODS = ("ce", "locate", "selectivecl", "selectivecl_paper", "looptrans")
SPLITS = ("Seen", "Unseen")

#: SelectiveCL exactly as the paper sets it: ego branch, binary calibration, lambda = 1, no
#: residual token MLP, exo action prompt, no part prior, no objectness gate; trained to the
#: end of the budget, nothing chosen.
PAPER_SETTINGS = (
    "model.proj_residual=false",
    "method.contrast_scale=1.0",
    "model.exo_cue=prompt",
    "model.inference_branch=ego",
    "model.calibration=binary",
    "model.part_prior=false",
    "model.objectness=false",
)

#: Row name -> (affordance-train --method, extra --set items, choose on validation).
VARIANTS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "ce": ("ce", (), True),
    "locate": ("locate", (), True),
    "selectivecl": ("selectivecl", (), True),
    "selectivecl_paper": ("selectivecl", PAPER_SETTINGS, False),
    "looptrans": ("looptrans", (), True),
    "looptrans_gated": ("looptrans_gated", (), True),
}


#: Row metrics of the results table (``training.evaluate.evaluate_model`` names).
ROW_METRICS = (
    "KLD",
    "SIM",
    "NSS",
    "peak_hit",
    "mask_iou",
    "action_sensitivity",
    "absence_auroc",
    "empty_on_background",
)

#: Bumped when the corpus changes for a reason outside ``affordance_core/synthetic`` (whose
#: sources are fingerprinted into the corpus stamp), so that a cached corpus is rebuilt.
CORPUS_VERSION = 3

#: The validation corpus is written with the corpus seed plus this offset.
VALIDATION_SEED_OFFSET = 1000


def demo_budget(quick: bool) -> dict[str, Any]:
    """The demo's corpus size, training budget, methods and node run time.

    Args:
        quick: the smaller corpus and budget of ``affordance-demo --quick``.

    Returns:
        ``{"corpus": write_agd_corpus sizes, "iters", "batch_size", "methods",
        "node_seconds"}``.
    """
    if quick:
        return {
            "corpus": {
                "n_exo_per_pair": 5,
                "n_ego_per_pair": 2,
                "n_test_per_pair": 2,
                "n_background": 6,
            },
            "iters": 12,
            "batch_size": 8,
            "methods": ("ce", "selectivecl", "looptrans"),
            "node_seconds": 3.0,
        }
    return {
        "corpus": {
            "n_exo_per_pair": 10,
            "n_ego_per_pair": 3,
            "n_test_per_pair": 10,
            "n_background": 20,
        },
        "iters": 100,
        "batch_size": 8,
        "methods": DEFAULT_METHODS,
        "node_seconds": 6.0,
    }


def budget_snapshots(iters: int) -> list[int]:
    """Training budgets a method chooses from on validation: a quarter, half and all of
    ``iters`` (the last is ``model.pt`` itself)."""
    return sorted({s for s in (iters // 4, iters // 2) if 1 <= s < iters})
