"""``python -m grokscope.cli``: the ``grokscope`` command (sweeps start their runs this way)."""

from grokscope.cli.app import main

main()
