"""``python -m training.pretrain``: the ``affordance-pretrain`` CLI."""

from training.pretrain.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
