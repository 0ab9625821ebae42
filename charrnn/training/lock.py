"""One training run per run directory: ``run_dir/.lock``.

:class:`RunLock` creates ``.lock`` atomically (``O_CREAT | O_EXCL``), holds an exclusive
``fcntl.flock`` on it for as long as it lives, and writes ``{"pid", "host", "started"}``
into it.  The kernel drops the flock when the owner dies, however it dies, so:

* flock held by someone else and the recorded pid alive (or on another host): the run
  directory is in use -> :class:`~charrnn.errors.LockError`;
* flock not held (the owner died, ``kill -9``, power loss, or the directory was copied),
  or held but the recorded pid is no longer alive on this host (a forked child kept the
  descriptor): the lock is stale and is taken over, with a log line.

A file that is still empty (its creator is between ``open`` and writing its JSON) is
given a moment before being judged.  Before removing a stale file we check that the
path still names the file we inspected, so two processes taking over the same stale
lock cannot remove each other's new one.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path

from .. import console
from ..errors import InputError, LockError
from ..store.fsutil import make_dirs, pid_alive

LOCK_NAME = ".lock"
# How long an empty/unreadable lock file may be "being written" before it is stale.
_FRESH_SECONDS = 2.0
_POLL = 0.05


def _read_info(fd: int) -> dict | None:
    """The JSON a lock file holds, or None when it is empty or unreadable."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            raw += chunk
            if len(raw) > 1 << 20:   # not a lock file of ours
                return None
        info = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    pid = info.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return None
    return info


def _describe(info: dict | None, here: str) -> str:
    if info is None:
        return "pid unknown"
    text = f"pid {info['pid']}"
    host = info.get("host")
    if isinstance(host, str) and host and host != here:
        text += f" on host {host}"
    started = info.get("started")
    if isinstance(started, str) and started:
        text += f", started {started}"
    return text


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def make_run_dir(run_dir: Path) -> None:
    """Create the run directory (and its parents), or say in one line why it cannot be:
    a permanent condition, exit 1 (only a held lock is "busy, try later", 75)."""
    if run_dir.is_symlink() and not run_dir.exists():
        raise InputError(f"{run_dir}: is a symbolic link to {os.readlink(run_dir)}, which "
                         "does not exist")
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"{run_dir}: exists and is not a directory")
    make_dirs(run_dir, run_dir, "the run directory")
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise InputError(f"{run_dir}: cannot write in the run directory (permission denied)")


class RunLock:
    """Context manager holding ``run_dir/.lock`` (see module docstring).

    ``with RunLock(run_dir): ...``; or ``acquire()`` / ``release()``.  The run directory
    is created if needed.  ``path`` is the lock file, ``info`` what it holds.
    """

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.info: dict | None = None
        self._fd: int | None = None
        self._host = socket.gethostname()

    # ------------------------------------------------------------------ public
    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            raise LockError(f"{self.run_dir}: this lock is already held by this process")
        make_run_dir(self.run_dir)
        deadline = time.monotonic() + 10 * _FRESH_SECONDS
        while True:
            if self._try_create():
                return self
            retry = self._inspect_existing()
            if time.monotonic() > deadline:   # pathological churn; give up clearly
                raise LockError(f"{self.run_dir}: could not take {self.path} "
                                "(it keeps changing); try again")
            if not retry:
                time.sleep(_POLL)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    os.unlink(self.path)      # unlink while still holding the flock
        finally:
            os.close(fd)                      # closing drops the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.release()

    # ------------------------------------------------------------------ internals
    def _error(self, info: dict | None) -> LockError:
        return LockError(
            f"{self.run_dir} is in use by another charrnn train ({_describe(info, self._host)}); "
            f"wait for it to finish or remove {self.path} if it is not running")

    def _try_create(self) -> bool:
        """Create the lock file; True when we now hold it, False when it exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR | _NOFOLLOW, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise InputError(f"{self.path}: cannot create the lock file "
                             f"({e.strerror or e})") from None
        try:
            # Someone inspecting the new file may hold its flock for an instant.
            deadline = time.monotonic() + _FRESH_SECONDS
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LockError(f"{self.path}: another process keeps the new lock "
                                        "file locked; try again") from None
                    time.sleep(_POLL / 5)
                except OSError as e:
                    if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                        break                 # no flock on this filesystem: pid check only
                    raise
            info = {
                "pid": os.getpid(),
                "host": self._host,
                "started": _dt.datetime.now(_dt.timezone.utc).astimezone()
                .isoformat(timespec="seconds"),
            }
            os.write(fd, json.dumps(info).encode("utf-8"))
            with contextlib.suppress(OSError):
                os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(fd)
            raise
        self._fd = fd
        self.info = info
        return True

    def _inspect_existing(self) -> bool:
        """Judge an existing lock file: raise LockError if live, remove it if stale.

        Returns True when the caller should try to create the file again, False to
        wait a moment (the file is being written by its creator).
        """
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return True
        if not stat.S_ISREG(st.st_mode):
            kind = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else
                    "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file")
            raise InputError(f"{self.path} is {kind}, not a charrnn lock file; remove it "
                             "(charrnn creates the lock itself)")
        try:
            fd = os.open(self.path, os.O_RDWR | _NOFOLLOW)
        except FileNotFoundError:
            return True
        except OSError as e:
            raise InputError(f"{self.path}: cannot open the lock file "
                             f"({e.strerror or e})") from None
        try:
            flock_free = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                flock_free = False
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
            if not self._same_file(fd):
                return True               # replaced meanwhile: look again
            info = _read_info(fd)
            if info is None:
                age = self._age(fd)
                if age < _FRESH_SECONDS:
                    return False          # its creator is still writing it
                reason = "it holds no owner information"
                if not flock_free:
                    raise self._error(None)
            else:
                same_host = info.get("host") in (None, self._host)
                alive = pid_alive(info["pid"]) if same_host else True
                if not flock_free and alive:
                    raise self._error(info)
                if flock_free:
                    reason = "no process holds it"
                else:
                    reason = "its process is no longer running"
            if not self._same_file(fd):
                return True
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                return True
            console.log(f"Taking over the stale lock {self.path} "
                        f"({_describe(info, self._host)}): {reason}")
            return True
        finally:
            os.close(fd)

    def _same_file(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        fst = os.fstat(fd)
        return (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev)

    @staticmethod
    def _age(fd: int) -> float:
        try:
            return time.time() - os.fstat(fd).st_mtime
        except OSError:
            return _FRESH_SECONDS


__all__ = ["RunLock", "LOCK_NAME", "make_run_dir"]
