"""Threads and the Numba cache: set up once, before the first kernel runs.

* ``configure_threads(n)`` gives numba's parallel kernels ``n`` threads (``--threads``,
  else ``CHARRNN_THREADS``, else all usable cores) and limits BLAS to ONE thread: the
  products charrnn leaves to numpy's BLAS (the weight gradients, sums over all B*T
  rows) are split by rows between ``n`` threads of charrnn's own
  (:func:`charrnn.kernels.matmul.matmul`).
  So no BLAS thread pool ever waits, spinning, next to numba's threads: with
  OpenBLAS's own threads, a process that had loaded numpy before charrnn (which then
  cannot shorten their spin, see tune_environment) trained a third slower.
  (The sampler raises the limit again for the one case where BLAS's threads help.)
* ``ensure_numba()`` points numba's cache at a user cache directory when the package
  directory is not writable, and prints one line on stderr the first time kernels
  compile on this machine.
"""
from __future__ import annotations

import atexit
import contextlib
import os
from pathlib import Path

from .. import __version__
from ..errors import ConfigError, trap

_state = {"numba_ready": False, "threads": None, "blas_limiter": None}


def tune_environment(environ=None) -> None:
    """Settings the thread pools read when they start; the CLI calls this first thing
    (numpy is not loaded yet then), and a value the user set always wins.

    * OpenBLAS's worker threads busy-wait for about 2**28 cycles after every call before
      they sleep.  Training alternates many small BLAS calls with numba kernels on the
      same cores, and those spinning threads steal the cores the kernels need:
      ``OPENBLAS_THREAD_TIMEOUT=4`` (2**4 cycles) trained faster end to end.
    * numba's OpenMP workers spin a while after each parallel region before they sleep,
      so the next region (a training step runs dozens, charrnn.kernels.steps) finds them
      awake: on a virtual machine whose idle cores halt, waking a sleeping worker is
      slow.  All of charrnn's parallel work runs in those workers
      (charrnn.kernels.blas), so a spinning worker holds up no other thread of ours:
      ``GOMP_SPINCOUNT=300000`` (libgomp's own default), unless OMP_WAIT_POLICY is set.
    (The measurements are in docs/performance.md.)"""
    env = os.environ if environ is None else environ
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    if "OMP_WAIT_POLICY" not in env:
        env.setdefault("GOMP_SPINCOUNT", "300000")


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
    return Path(__file__).resolve().parent


def numba_cache_dir() -> Path:
    """Where compiled kernels are cached (NUMBA_CACHE_DIR if set)."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:
        return Path(env)
    return _kernel_dir() / "__pycache__"


def _cpu_choice() -> str:
    """A cache subdirectory name for a forced CPU path (``CHARRNN_CPU_PATH``,
    ``CHARRNN_VECTOR_BITS``, charrnn.kernels.cpu), "" for the default: kernels compiled
    for another choice inline another product, and numba's cache index would not tell."""
    path = os.environ.get("CHARRNN_CPU_PATH", "").strip().lower()
    bits = os.environ.get("CHARRNN_VECTOR_BITS", "").strip()
    if not (path or bits):
        return ""
    return "cpu-" + "".join(c for c in f"{path or 'auto'}-{bits or 'auto'}"
                            if c.isalnum() or c == "-")


def _choose_cache_dir() -> None:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    kdir = _kernel_dir()
    pyc = kdir / "__pycache__"
    choice = _cpu_choice()
    try:
        pyc.mkdir(exist_ok=True)
        writable = os.access(pyc, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        fallback = user_cache_dir() / "numba"
        fallback.mkdir(parents=True, exist_ok=True)
        os.environ["NUMBA_CACHE_DIR"] = str(fallback / choice if choice else fallback)
    elif choice:
        os.environ["NUMBA_CACHE_DIR"] = str(pyc / choice)


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
            from .. import console

            console.log("charrnn: compiling numerical kernels (first run; cached for next "
                        "time)")

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


_compiling = {"depth": 0, "pending": None, "previous": {}}


def _signal_default(signum: int, frame) -> None:
    """What a handler that was not ours would have done with the signal."""
    import signal

    prev = _compiling["previous"].get(signum, signal.SIG_DFL)
    if callable(prev):
        prev(signum, frame)
    elif prev == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        from ..errors import Interrupted

        raise Interrupted(f"terminated by {signal.Signals(signum).name}", 128 + signum)


def defer_signals_while_compiling() -> None:
    """SIGINT and SIGTERM that arrive while numba compiles (it holds its compiler lock)
    wait until the compilation ends, then act as they would have.  Raised inside
    numba's compiler, whose LLVM callbacks run through ctypes, the exception would be
    lost there (the command carried on) or leave a half-built kernel behind.  Installed
    once, by the commands, in the main thread; a handler set later (train's) is not
    wrapped, and train holds the signals back itself while it compiles."""
    import signal
    import threading

    main = threading.main_thread()
    if _compiling.get("installed") or threading.current_thread() is not main:
        return
    _compiling["installed"] = True
    import numba.core.event as ev

    class _CompileListener(ev.Listener):
        def on_start(self, event):
            if threading.current_thread() is main:
                _compiling["depth"] += 1

        def on_end(self, event):
            if threading.current_thread() is not main:
                return
            _compiling["depth"] = max(0, _compiling["depth"] - 1)
            if _compiling["depth"] == 0 and _compiling["pending"] is not None:
                signum, _compiling["pending"] = _compiling["pending"], None
                _signal_default(signum, None)

    def handler(signum, frame):
        if _compiling["depth"] > 0:
            _compiling["pending"] = signum          # acted on when the compilation ends
            return
        _signal_default(signum, frame)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if trap(sig, handler) is not None:
            _compiling["previous"][sig] = previous
    ev.register("numba:compiler_lock", _CompileListener())


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
    _state["blas_limiter"] = threadpool_limits(limits=1, user_api="blas")
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
