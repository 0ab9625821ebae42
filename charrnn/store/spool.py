"""Spooling a stream (stdin, a pipe) to a file, since prepare reads its input twice, and
the free-space checks that keep it and the token files from filling the disk.

The spool is decoded as it is copied (a binary stream such as /dev/zero fails on its
first chunk), and it stops with a DiskFullError before the disk is full: while free
space stays above a margin (:data:`DISK_MARGIN`, at most half of what was free at the
start) plus as much again as the spool holds, for the token files.

Fault injection for the tests (never set in normal use): ``CHARRNN_TEST_DISK_FREE=BYTES``
makes prepare see at most BYTES free on the disk of its output, less what its build
directory already holds, so the free-space stop is reached without filling a disk.
"""
from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import Iterator

from ..config import DataConfig
from ..errors import DiskFullError, InputError
from ..units import fmt_bytes
from .fsutil import os_message
from .text import decode_stream

# Free space a stream's spool always leaves on the disk (less when the disk had little
# free space to begin with: at most half of what was free when the spool started).
DISK_MARGIN = 256 << 20
# Bytes of a stream copied at a time into its spool.
SPOOL_BLOCK = 1 << 20


def _tree_bytes(directory: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for e in os.scandir(directory):
            with contextlib.suppress(OSError):
                if e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
    return total


def free_bytes(directory: Path) -> int | None:
    """Bytes free for an unprivileged writer on the disk holding ``directory`` (None where
    the system cannot say); ``CHARRNN_TEST_DISK_FREE`` lowers it (the module docstring)."""
    try:
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
    except (OSError, AttributeError):
        free = None
    fake = os.environ.get("CHARRNN_TEST_DISK_FREE", "").strip()
    if fake.isdigit():
        left = max(0, int(fake) - _tree_bytes(directory))
        free = left if free is None else min(free, left)
    return free


def spool(src, directory: Path, index: int, cfg: DataConfig,
           shown_out: Path) -> None:
    """Copy a stream (stdin, a pipe) to a file, since prepare reads its input twice.

    The stream is decoded as it is copied (:func:`decode_stream`), so a binary stream
    (/dev/zero) or one in another encoding fails on its first chunk, and the copy stops
    with DiskFullError while the disk still has :data:`DISK_MARGIN` (at most half of the
    free space at the start) plus as much again as the spool holds, for the token
    files: an endless stream (``yes |``) never fills the disk."""
    path = directory / f".stream-{index}"
    if src.name == "-":
        stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin
        close = False
    else:
        try:
            stream = open(src.path, "rb")
        except OSError as e:
            raise InputError(f"{src.name}: {os_message(e)}") from None
        close = True
    what = "standard input" if src.name == "-" else src.name
    free0 = free_bytes(directory)
    margin = None if free0 is None else min(DISK_MARGIN, free0 // 2)
    spooled = 0

    # read1: what the pipe has now (read would wait for a whole block or the end)
    read = getattr(stream, "read1", stream.read)

    def blocks() -> Iterator[bytes]:
        while True:
            try:
                block = read(SPOOL_BLOCK)
            except OSError as e:
                raise InputError(f"{src.name}: {os_message(e)}") from None
            if not block:
                return
            if isinstance(block, str):
                block = block.encode("utf-8")
            yield block

    try:
        with open(path, "xb") as out:
            for raw, _text in decode_stream(blocks(), src.name, cfg.encoding, cfg.errors):
                if not raw:
                    continue
                if margin is not None:
                    free = free_bytes(directory)
                    if free is not None and free - len(raw) < margin + spooled + len(raw):
                        raise DiskFullError(
                            f"{what}: stopped reading after {fmt_bytes(spooled)}: the disk "
                            f"holding {shown_out} has {fmt_bytes(free)} free, and prepare "
                            f"keeps room for the token files (as much again as the text) "
                            f"and {fmt_bytes(margin)} more; free some space, or give a "
                            "finite input that fits (an endless stream never ends)")
                try:
                    out.write(raw)
                except OSError as e:
                    if e.errno == errno.ENOSPC:
                        raise DiskFullError(f"{what}: no space left on the disk holding "
                                            f"{shown_out} after {fmt_bytes(spooled)} "
                                            "of it") from None
                    raise
                spooled += len(raw)
    finally:
        if close:
            stream.close()
    src.path = path


__all__ = ["spool", "free_bytes", "DISK_MARGIN", "SPOOL_BLOCK"]
