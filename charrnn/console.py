"""stderr output: log lines, warnings and progress bars (stdout is for data only).

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


def log(msg: str) -> None:
    """An informational line on stderr (and in the log file)."""
    _append_log(msg)
    if not _settings["quiet"]:
        print(msg, file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    """A warning on stderr (kept in the log file; hidden by --quiet)."""
    log(f"Warning: {msg}")


def progress(total=None, desc: str = "", unit: str = "it", initial: int = 0):
    """A tqdm bar on a terminal, or None (then the caller logs plain lines)."""
    if _settings["quiet"] or not stderr_is_tty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=sys.stderr,
                dynamic_ncols=True, leave=False)
