"""``python -m training.demo``: the ``affordance-demo`` CLI."""

from training.demo.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
