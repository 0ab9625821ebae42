"""stderr output: log lines, warnings and progress bars (stdout is for data only, and
:func:`whole_writes` makes sure it is written whole).

Progress bars appear only when stderr is a terminal; otherwise the caller's periodic
plain log lines are what cron mail shows.  ``--quiet`` keeps only errors; ``--log-file``
appends every plain log line to a file as well.
"""
from __future__ import annotations

import sys
import time

_settings = {"quiet": False, "log_file": None}


def configure(quiet: bool = False, log_file: str | None = None) -> None:
    _settings["quiet"] = quiet
    _settings["log_file"] = log_file


def whole_writes() -> None:
    """Under PYTHONUNBUFFERED (``python -u``) stdout's text layer writes straight to the
    file descriptor and drops what a partial write left over (a signal during a write
    into a pipe, or a reader that went away: `| head` then exited 0 with the data cut).
    The CLI puts a buffered layer back, which writes everything or raises; lines still
    go out as they are written."""
    import io

    out = sys.stdout
    if not isinstance(getattr(out, "buffer", None), io.RawIOBase):
        return
    try:
        raw = io.FileIO(out.fileno(), "wb", closefd=False)
    except (OSError, ValueError, AttributeError):
        return
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(raw), encoding=out.encoding,
                                  errors=out.errors, line_buffering=True)


def stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _append_log(line: str) -> None:
    path = _settings["log_file"]
    if path:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{stamp} {line}\n")


def log(msg: str, bar=None) -> None:
    """An informational line on stderr (and in the log file); above ``bar`` (a tqdm
    bar) when one is showing."""
    _append_log(msg)
    if _settings["quiet"]:
        return
    if bar is not None:
        bar.write(msg, file=sys.stderr)
    else:
        print(msg, file=sys.stderr, flush=True)


def error(msg: str) -> None:
    """The one ``Error: ...`` line of a failed command: on stderr whatever --quiet says,
    and in the log file, where a cron job whose stderr goes nowhere can find it."""
    line = f"Error: {msg}"
    try:
        _append_log(line)
    except OSError:
        pass
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def warn(msg: str) -> None:
    """A warning on stderr (kept in the log file; hidden by --quiet)."""
    log(f"Warning: {msg}")


def progress(total=None, desc: str = "", unit: str = "it", initial: int = 0,
             delay: float = 0.0, **tqdm_options):
    """A tqdm bar on a terminal, or None (then the caller logs plain lines).  ``delay``:
    show it only once that many seconds have passed (work that ends sooner shows none)."""
    if _settings["quiet"] or not stderr_is_tty():
        return None
    import os

    from tqdm import tqdm

    try:
        width = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        width = 0
    # A terminal that reports no width (a serial console, some CI ptys) gets a fixed
    # 80-column bar instead of tqdm's zero-width one.
    sizing = {"dynamic_ncols": True} if width > 0 else {"ncols": 80}
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=sys.stderr,
                leave=False, delay=delay, **sizing, **tqdm_options)
