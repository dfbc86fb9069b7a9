"""``python -m finetui``: the ``finetui`` command."""

from finetui.engine.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
