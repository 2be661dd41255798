"""``python -m training.pretrain``: the ``affordance-pretrain`` CLI."""

from training.pretrain.cli import main

raise SystemExit(main())
