"""Atomic file writes: a crash leaves the old file or the new one, never half of one.

Every file charrnn writes (checkpoints, vocab.json, token files, meta.json) goes through
:func:`atomic_open`: the bytes go to a hidden temporary file in the same directory, which
is flushed and fsynced, then renamed over the target, and the directory is fsynced so the
rename itself survives a power cut.  On any exception the temporary file is removed and
the target is untouched.

Fault injection for the reliability tests (never set in normal use):

* ``CHARRNN_TEST_SLOW_WRITE=SECONDS`` sleeps that long in the middle of every atomic
  write, so a test can SIGKILL the process while a checkpoint is half written;
* ``CHARRNN_TEST_ENOSPC=GLOB`` makes writes to files whose name matches GLOB fail with
  ``OSError(ENOSPC)`` after part of the data is written, as a full disk does.
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import time
from pathlib import Path

from .errors import DiskFullError


class _FaultyFile:
    """Wraps a binary file to inject the test faults described in the module doc."""

    def __init__(self, f, target: Path):
        self._f = f
        self._slow = float(os.environ.get("CHARRNN_TEST_SLOW_WRITE", "0") or 0)
        pattern = os.environ.get("CHARRNN_TEST_ENOSPC", "")
        self._enospc = bool(pattern) and fnmatch.fnmatch(target.name, pattern)

    def write(self, data) -> int:
        view = memoryview(data) if not isinstance(data, str) else data
        half = len(view) // 2
        n = self._f.write(view[:half])
        self._f.flush()
        if self._enospc:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self._slow > 0:
            time.sleep(self._slow)
        return n + self._f.write(view[half:])

    def __getattr__(self, name):
        return getattr(self._f, name)


def fsync_dir(path) -> None:
    """fsync a directory so that renames inside it are durable (no-op where unsupported)."""
    try:
        fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _faults_enabled() -> bool:
    return bool(os.environ.get("CHARRNN_TEST_SLOW_WRITE") or os.environ.get("CHARRNN_TEST_ENOSPC"))


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", encoding: str | None = None):
    """Open a temporary file next to ``path``; on a clean exit fsync and rename it over
    ``path``.  ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8 unless ``encoding``)."""
    if mode not in ("wb", "w"):
        raise ValueError("atomic_open supports modes 'wb' and 'w'")
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    tmp = directory / f".{path.name}.tmp-{os.getpid()}"
    kw = {} if mode == "wb" else {"encoding": encoding or "utf-8", "newline": ""}
    try:
        f = open(tmp, mode, **kw)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFullError(f"{path}: no space left on device") from None
        raise
    try:
        with f:
            yield _FaultyFile(f, path) if (mode == "wb" and _faults_enabled()) else f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise DiskFullError(f"{path}: no space left on device; "
                                "the previous file (if any) is intact") from None
        raise
    fsync_dir(directory)


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path) -> tuple[int, str]:
    """(size in bytes, sha256 hex digest) of a file, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def remove_stale_temps(directory) -> None:
    """Remove temporary files a killed writer left behind (``.NAME.tmp-PID``)."""
    with contextlib.suppress(OSError):
        for p in Path(directory).glob(".*.tmp-*"):
            with contextlib.suppress(OSError):
                p.unlink()


__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "fsync_dir",
           "remove_stale_temps", "sha256_file"]
