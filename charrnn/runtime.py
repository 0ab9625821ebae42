"""Threads and the Numba cache: set up once, before the first kernel runs.

* ``configure_threads(n)`` gives numba's parallel kernels and numpy's BLAS the same
  thread count ``n`` (``--threads``, else ``CHARRNN_THREADS``, else all usable cores).
  The two never run at the same time (BLAS is called from Python between kernels, never
  inside a ``prange`` body), so the cores are never oversubscribed.
* ``ensure_numba()`` points numba's cache at a user cache directory when the package
  directory is not writable, and prints one line on stderr the first time kernels
  compile on this machine.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import sys
from pathlib import Path

from . import __version__
from .errors import ConfigError

_state = {"numba_ready": False, "threads": None, "blas_limiter": None}


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/charrnn`` (default ``~/.cache/charrnn``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "charrnn"


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _kernel_dir() -> Path:
    return Path(__file__).resolve().parent / "kernels"


def numba_cache_dir() -> Path:
    """Where compiled kernels are cached (NUMBA_CACHE_DIR if set)."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:
        return Path(env)
    return _kernel_dir() / "__pycache__"


def _choose_cache_dir() -> None:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    kdir = _kernel_dir()
    pyc = kdir / "__pycache__"
    try:
        pyc.mkdir(exist_ok=True)
        writable = os.access(pyc, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        fallback = user_cache_dir() / "numba"
        fallback.mkdir(parents=True, exist_ok=True)
        os.environ["NUMBA_CACHE_DIR"] = str(fallback)


def ensure_numba():
    """Import numba with charrnn's cache settings; returns the numba module."""
    if not _state["numba_ready"]:
        _choose_cache_dir()
        # numba's colorama would write "\x1b[0m" to stdout at exit whenever stdout is a
        # terminal (mpirun gives every rank a pty), corrupting redirected --json output.
        os.environ.setdefault("NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING", "1")
        import numba  # noqa: F401  (heavy: imported only here and in kernels/)

        marker = numba_cache_dir() / f"charrnn-{__version__}-numba-{numba.__version__}.compiled"
        if not marker.exists():
            print("charrnn: compiling numerical kernels (first run; cached for next time)",
                  file=sys.stderr, flush=True)

            def _mark():
                with contextlib.suppress(OSError):
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.touch()
            atexit.register(_mark)
        _state["numba_ready"] = True
        if _state["threads"] is None:
            configure_threads(None)
    import numba
    return numba


def resolve_threads(n: int | None) -> int:
    if n is None or n == 0:
        env = os.environ.get("CHARRNN_THREADS", "").strip()
        if env:
            try:
                n = int(env)
            except ValueError:
                raise ConfigError(f"CHARRNN_THREADS must be a positive integer (got {env!r})") from None
        else:
            n = available_cores()
    if n < 1:
        raise ConfigError(f"threads must be >= 1 (got {n})")
    return n


def configure_threads(n: int | None) -> int:
    """Set numba's and BLAS's thread counts to ``n`` (see module docstring)."""
    n = resolve_threads(n)
    _state["threads"] = n
    import numba
    from threadpoolctl import threadpool_limits

    n_numba = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n_numba)
    _state["blas_limiter"] = threadpool_limits(limits=n, user_api="blas")
    return n


def numba_threads() -> int:
    """numba's thread count in this thread (set by :func:`configure_threads`)."""
    threads()
    import numba
    return numba.get_num_threads()


def threads() -> int:
    if _state["threads"] is None:
        configure_threads(None)
    return _state["threads"]


