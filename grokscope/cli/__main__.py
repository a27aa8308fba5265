"""``python -m grokscope.cli``: the ``grokscope`` command (as ``torchrun -m grokscope.cli`` needs)."""

from grokscope.cli.app import main

main()
