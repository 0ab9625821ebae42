"""Putting a prepared data directory in place, atomically.

prepare builds everything in a hidden sibling directory ``.NAME.tmp-PID-RANDOM`` and then
renames it into place (:func:`install`); an interrupted prepare leaves either the
previous directory or none, never one with a meta.json and missing data.  Two prepares
into the same directory at once both succeed, the last one to finish wins.  SIGTERM
(with :func:`stop_on_sigterm`, as the prepare command installs it) and Ctrl-C remove the
build directory; one that arrives while the output is being swapped waits until it is
in place (:func:`no_interruption`).  Build directories that a killed prepare left behind
are removed by the next one (:func:`remove_stale`).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from ..errors import DataError, Interrupted, InputError, trap
from .fsutil import fsync_dir, os_message, pid_alive
from .meta import DATA_FILES, DATA_FORMAT, read_json


def out_dir_state(out: Path, shown: Path) -> str:
    """'new', 'ours' (empty, or only files prepare writes), or 'foreign'."""
    if not (out.exists() or out.is_symlink()):
        return "new"
    if not out.is_dir():
        raise InputError(f"{shown}: exists and is not a directory")
    try:
        names = [n for n in os.listdir(out) if not (n.startswith(".") and ".tmp-" in n)]
    except OSError as e:
        raise InputError(f"{shown}: {os_message(e)}") from None
    if not names:
        return "ours"
    if not set(names) <= set(DATA_FILES):
        return "foreign"
    meta = out / "meta.json"
    if meta.exists() or meta.is_symlink():
        try:
            doc = read_json(meta, "meta.json")
        except DataError:
            return "foreign"
        if not isinstance(doc, dict) or doc.get("format") != DATA_FORMAT:
            return "foreign"
    return "ours"


# A build or old directory prepare makes next to its output: ``.NAME.tmp-PID-RANDOM``
# (and ``.NAME.tmp-PID`` from earlier versions), ``.NAME.old-PID-RANDOM``.
_WORK_DIR = re.compile(r"\.(?:tmp|old)-(\d+)(?:-[A-Za-z0-9_]+)?$")


def remove_stale(out: Path) -> None:
    """Remove build/old directories that a killed prepare left next to ``out`` (those of
    a process that is gone; a planted symbolic link is removed as a link)."""
    prefix = f".{out.name}."
    with contextlib.suppress(OSError):
        for p in out.parent.glob(f".{_glob_escape(out.name)}.*-*"):
            m = _WORK_DIR.match(p.name, len(prefix) - 1)
            if not p.name.startswith(prefix) or m is None:
                continue
            pid = int(m.group(1))
            if pid == os.getpid() or pid_alive(pid):
                continue
            if p.is_symlink() or not p.is_dir():
                with contextlib.suppress(OSError):
                    p.unlink()
            else:
                shutil.rmtree(p, ignore_errors=True)


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


# Signals that arrive while the output is being swapped into place wait until it is.
_critical = threading.local()


@contextlib.contextmanager
def no_interruption():
    """SIGTERM / SIGINT (when :func:`stop_on_sigterm` handles them) are held back until
    the block ends, so the output directory is never left half swapped."""
    _critical.depth = getattr(_critical, "depth", 0) + 1
    try:
        yield
    finally:
        _critical.depth -= 1
        pending = getattr(_critical, "pending", None)
        if _critical.depth == 0 and pending is not None:
            _critical.pending = None
            raise pending


@contextlib.contextmanager
def stop_on_sigterm(what: str = "prepare"):
    """While the block runs, SIGTERM raises :class:`~charrnn.errors.Interrupted` (exit
    143) and SIGINT KeyboardInterrupt, so prepare's cleanup removes its build directory
    and spool; a signal that arrives while the output is being moved into place is held
    back until it is there.  Does nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if signum == signal.SIGINT:
            exc: BaseException = KeyboardInterrupt()
        else:
            exc = Interrupted(f"terminated by SIGTERM; {what} stopped and removed its "
                              "temporary files", 128 + signum)
        if getattr(_critical, "depth", 0):
            _critical.pending = exc
            return
        raise exc

    old = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = trap(sig, handler)
            if previous is not None:
                old[sig] = previous
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def install(tmp: Path, out: Path, shown: Path, force: bool) -> None:
    """Put the finished build directory ``tmp`` at ``out``.  Another prepare may be
    installing into ``out`` at the same time: the state is looked at again here, and a
    rename that loses the race is retried, so the last one to finish wins."""
    parent = out.parent
    for _ in range(20):
        state = out_dir_state(out, shown)
        if state == "foreign" and not force:
            raise InputError(f"{shown}: another program wrote other files into it while "
                             "prepare was running; nothing was changed (use --force to "
                             "write the data files into it anyway, or choose another -o)")
        try:
            if state == "new":
                os.rename(tmp, out)
            elif state == "ours" and not out.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-",
                                            dir=parent))
                moved = old / "d"
                try:
                    os.rename(out, moved)
                    os.rename(tmp, out)
                except BaseException:
                    # Put the previous data back (a failed rename, or a signal handler
                    # that raised in between), unless a complete directory is there now.
                    with contextlib.suppress(OSError):
                        if moved.exists():
                            os.rename(moved, out)
                    raise
                finally:
                    fsync_dir(parent)
                    shutil.rmtree(old, ignore_errors=True)
            else:
                _replace_files(tmp, out)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EISDIR,
                           errno.ENOTDIR):
                continue        # another prepare moved things meanwhile: look again
            raise
        fsync_dir(parent)
        return
    raise InputError(f"{shown}: other programs kept replacing it while prepare was "
                     "installing its output; nothing was changed, run prepare again")


def _replace_files(tmp: Path, out: Path) -> None:
    """A folder with other files (--force) or a symlink: never delete what prepare did
    not write.  meta.json goes first and comes back last, so the directory never looks
    complete while its files are being replaced."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out / "meta.json")
    fsync_dir(out)
    for name in DATA_FILES:                  # meta.json is the last of them
        if name == "meta.json":
            fsync_dir(out)
        os.replace(tmp / name, out / name)
    fsync_dir(out)
    shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["out_dir_state", "remove_stale", "install", "no_interruption", "stop_on_sigterm"]
