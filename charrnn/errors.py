"""One exception family for the whole library.

Every expected failure (bad input, corrupt checkpoint, impossible option combination)
raises a :class:`CharrnnError` subclass whose message tells the user what is wrong and
what to do.  The command line turns these into a single ``Error: ...`` line on stderr
(see :func:`charrnn.cli.app.main`); nothing else in the library prints.
"""
from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Exit codes of the ``charrnn`` command (one place, used by cli.py)."""

    SUCCESS = 0
    ERROR = 1          # an expected failure: bad input, corrupt file, ...
    USAGE = 2          # click usage errors: bad option value or combination of options
    TEMPFAIL = 75      # EX_TEMPFAIL (sysexits.h): another run holds the lock; try later
    SIGINT = 130       # 128 + SIGINT: interrupted with Ctrl-C
    SIGTERM = 143      # 128 + SIGTERM: terminated
    SIGPIPE = 141      # 128 + SIGPIPE: stdout's reader went away (`| head`), quietly


class CharrnnError(Exception):
    """Base class of every error the library raises on purpose."""

    exit_code: int = ExitStatus.ERROR


class InputError(CharrnnError):
    """A path, a corpus or a piece of text that cannot be used."""


class DataError(CharrnnError):
    """A prepared data directory that is missing, incomplete or inconsistent."""


class VocabError(CharrnnError):
    """Characters that the vocabulary cannot represent, or a malformed vocab.json."""


class CheckpointError(CharrnnError):
    """A checkpoint that is missing, truncated, corrupt, foreign or from a newer format."""


class ConfigError(CharrnnError):
    """Options that are valid one by one but impossible together (or with the data)."""


class CorpusError(CharrnnError):
    """A registry corpus that is unknown, cannot be downloaded, or fails its sha256."""


class LockError(CharrnnError):
    """Another process holds the run directory's lock: exit 75 (EX_TEMPFAIL), so a cron
    wrapper can tell "busy, try later" from "broken"."""

    exit_code = ExitStatus.TEMPFAIL


class TrainingDiverged(CharrnnError):
    """The loss became NaN or infinite."""


class Interrupted(CharrnnError):
    """SIGINT or SIGTERM stopped a command after it saved its state (exit 130 / 143)."""

    def __init__(self, msg: str, exit_code: int):
        super().__init__(msg)
        self.exit_code = exit_code


class DistributedError(CharrnnError):
    """MPI ranks disagree (parameters drifted apart) or a collective failed."""


class DiskFullError(CharrnnError):
    """Writing failed because the disk is full (ENOSPC)."""


def trap(signum: int, handler):
    """``signal.signal(signum, handler)``, unless the process was started with that
    signal ignored (``cmd &`` in a script, ``nohup``): an ignored Ctrl-C stays ignored,
    as Unix tools do.  Returns the previous handler, or None when nothing was changed;
    ValueError outside the main thread, as signal.signal."""
    import signal

    if signal.getsignal(signum) is signal.SIG_IGN:
        return None
    return signal.signal(signum, handler)
