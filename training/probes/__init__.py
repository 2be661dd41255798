"""Diagnostics that read trained models and print numbers; none of them trains.

* ``backbone``: the tiny backbones' dense roles on held-out synthetic scenes, against trivial
  baselines (``make pretrain`` writes its result to ``weights/tiny/probe.json``).
* ``discovery``: SelectiveCL's exo -> ego part discovery against validation GT.
* ``occlusion``: each model's exo branch on parts a hand hides, against the amodal part mask.
"""
