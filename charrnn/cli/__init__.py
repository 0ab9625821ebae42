"""The command line: one module per command, each a thin layer that parses options,
calls one library function and formats the result (``app`` holds the group and its
``main``, which turns library errors into ``Error: ...`` lines and exit codes)."""
from __future__ import annotations


def main(argv=None) -> None:
    """The console script's entry point: :func:`charrnn.cli.app.main`, loaded here so
    that Ctrl-C while the command line itself loads is one line too, not a traceback."""
    try:
        from .app import main as run
    except KeyboardInterrupt:
        import sys

        sys.stderr.write("Error: interrupted\n")
        raise SystemExit(130) from None
    run(argv)


def __getattr__(name):  # PEP 562: ``charrnn.cli.cli`` without loading click up front
    if name == "cli":
        from .app import cli
        return cli
    raise AttributeError(f"module 'charrnn.cli' has no attribute {name!r}")


__all__ = ["cli", "main"]
