"""``affordance-demo``: the embedded default, end to end on a CPU.

Stages (each cached under ``--out``, so a second run reuses what it can; a trained run only
when its arguments and :func:`~training.common.source_fingerprint` are unchanged):

1. write the synthetic affordance corpus (AGD20K layout, Seen and Unseen splits);
2. check the tiny backbones (``weights/tiny``) and copy their probe numbers;
3. train every method on each split with the same seed and budget (``affordance-train``,
   frozen features cached once per split); each method's training budget (a snapshot),
   inference branch, calibration and part prior temperature are chosen on the validation
   corpus (new images of the training categories, another corpus seed), never on the test
   split;
4. evaluate them and the trivial baselines (uniform, centre Gaussian, object affinity alone)
   once on the test split: KLD, SIM, NSS and the planner metrics;
5. write ``results.md``, ``results.json`` and heatmap overlay figures;
6. run the ROS 2 node on synthetic camera frames for a few seconds and print what it
   published (skipped with a note when the ROS messages are not built).

Modules: ``settings`` (method rows, splits, budgets, reported metrics), ``pipeline`` (the
stages, :func:`run_demo`), ``report`` (``results.md``, ``results.json``, figures) and ``cli``
(``affordance-demo``, also ``python -m training.demo``).
"""

from training.demo.cli import main
from training.demo.pipeline import (
    available_cpus,
    make_corpus,
    make_validation_corpus,
    run_demo,
    score_rows,
    train_and_evaluate_split,
    train_method,
)
from training.demo.report import SHORT
from training.demo.settings import (
    DEFAULT_METHODS,
    METHOD_ORDER,
    ROW_METRICS,
    SPLITS,
    VARIANTS,
    budget_snapshots,
    demo_budget,
)

__all__ = [
    "DEFAULT_METHODS",
    "METHOD_ORDER",
    "ROW_METRICS",
    "SHORT",
    "SPLITS",
    "VARIANTS",
    "available_cpus",
    "budget_snapshots",
    "demo_budget",
    "main",
    "make_corpus",
    "make_validation_corpus",
    "run_demo",
    "score_rows",
    "train_and_evaluate_split",
    "train_method",
]
