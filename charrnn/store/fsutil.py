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
import glob
import os
import time
from pathlib import Path

from ..errors import DiskFullError


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


def os_message(e: OSError) -> str:
    """The reason of an OSError as a message shows it: "no such file or directory"."""
    return (e.strerror or str(e)).lower()


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


_TMP = ".tmp-"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:        # exists, owned by another user
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def make_dirs(path, shown, what: str) -> None:
    """``mkdir -p path``; a failure is one InputError about ``shown`` (the path as the
    user gave it) saying why, e.g. that a part of the path is a file."""
    from ..errors import InputError

    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise
        # mkdir -p over a file says EEXIST (the file's own level) or ENOTDIR (below it)
        why = "a part of the path is a file, not a folder" \
            if e.errno in (errno.ENOTDIR, errno.EEXIST) else os_message(e)
        raise InputError(f"{shown}: cannot create {what} ({why})") from None


def make_temp(directory, name: str) -> tuple[int, Path]:
    """A new temporary file ``.NAME.tmp-PID-RANDOM`` in ``directory`` (the naming
    :func:`remove_stale_temps` reads): ``tempfile.mkstemp``, so ``O_CREAT|O_EXCL`` with
    an unpredictable name, never a planted symlink.  Returns (descriptor, path);
    OSError as mkstemp raises it."""
    import tempfile

    fd, p = tempfile.mkstemp(prefix=f".{name}{_TMP}{os.getpid()}-", dir=directory)
    return fd, Path(p)


def _default_mode() -> int:
    """0o666 less the umask: what a plain open() would have given the file (mkstemp
    creates it 0o600, and a published model must stay readable by other jobs)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _user_oserror(e: OSError, path: Path) -> OSError:
    """The same error, naming the file the user asked for instead of our temporary."""
    return OSError(e.errno, e.strerror or str(e), str(path))


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", encoding: str | None = None):
    """Open a temporary file next to ``path``; on a clean exit fsync and rename it over
    ``path``.  ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8 unless ``encoding``).

    The temporary is made by :func:`tempfile.mkstemp` (``O_CREAT|O_EXCL``, an
    unpredictable name ``.NAME.tmp-PID-RANDOM``), so a symlink planted in a shared
    folder is never followed, and the rename replaces a symlink at ``path`` itself
    rather than the file it points to.  Errors name ``path``, never the temporary."""

    if mode not in ("wb", "w"):
        raise ValueError("atomic_open supports modes 'wb' and 'w'")
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = make_temp(directory, path.name)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFullError(f"{path}: no space left on device") from None
        raise _user_oserror(e, path) from None
    try:
        os.fchmod(fd, _default_mode())
        kw = {} if mode == "wb" else {"encoding": encoding or "utf-8", "newline": ""}
        f = os.fdopen(fd, mode, **kw)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
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
        if isinstance(e, OSError) and not isinstance(e, DiskFullError):
            raise _user_oserror(e, path) from None
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


def remove_stale_temps(directory, name: str | None = None) -> None:
    """Remove temporary files that a killed writer left in ``directory``
    (``.NAME.tmp-PID...`` whose process is gone), only those of ``name`` when given
    (a shared --publish folder holds other people's files).  Never follows a symlink:
    a planted one is removed as a link."""
    pattern = f".{glob.escape(name) if name else '*'}{_TMP}*"
    with contextlib.suppress(OSError):
        for p in Path(directory).glob(pattern):
            pid_text = p.name.rsplit(_TMP, 1)[1].split("-", 1)[0]
            if pid_text.isdigit() and pid_alive(int(pid_text)) and not p.is_symlink():
                continue                  # a live writer's
            with contextlib.suppress(OSError):
                if p.is_symlink() or p.is_file():
                    p.unlink()


def check_publish_target(path) -> Path:
    """Fail at once, before any training, when ``--publish PATH`` could not be written:
    PATH is a folder, its folder is missing, or nothing can be created there."""

    from ..errors import InputError

    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"--publish {path}: is a directory; give the path of a file")
    if not parent.is_dir():
        raise InputError(f"--publish {path}: the folder {parent} does not exist")
    try:
        fd, probe = make_temp(parent, path.name)
    except OSError as e:
        raise InputError(f"--publish {path}: cannot write in {parent} "
                         f"({e.strerror or e})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    remove_stale_temps(parent, path.name)
    return path


def publish_copy(src, dst) -> None:
    """Copy ``src`` to ``dst`` atomically (a reader sees the old file or the new one)."""
    import shutil

    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "fsync_dir",
           "remove_stale_temps", "sha256_file", "pid_alive", "make_temp", "os_message",
           "check_publish_target", "publish_copy"]
