"""The command line: one module per command, each a thin layer that parses options,
calls one library function and formats the result (``app`` holds the group and
:func:`main`, which turns library errors into ``Error: ...`` lines and exit codes)."""
from .app import cli, main

__all__ = ["cli", "main"]
