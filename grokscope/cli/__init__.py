"""The ``grokscope`` command: thin typer commands over the library, lazy imports,
one-line errors (exit 2).

- :mod:`.app`: the app, the entry point :func:`main`, the error handling;
- :mod:`.runs`: ``data``, ``train``, ``eval``, ``runs``, ``sweep``, ``import-hf``;
- :mod:`.analysis`: ``report``, ``lens``, ``trace``, ``circuit``;
- :mod:`.discovery`: ``progress``, ``discover``;
- :mod:`.sweeps`: ``phase`` (a sweep's phase diagram);
- :mod:`.common`: argument checks and table printing shared by the commands.
"""

from grokscope.cli.app import app, main

__all__ = ["app", "main"]
