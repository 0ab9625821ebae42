"""The one place where numba's flags are set. Kernels import ``jit`` and ``pjit`` from here.

* ``cache=True``: compile once per machine; see charrnn.kernels.runtime for the cache directory.
* ``fastmath``: contraction, reassociation and approximate functions let reductions
  vectorise; ``nnan``/``ninf`` are left out so NaN and inf still propagate and a
  diverging run is detected.
* ``parallel=True`` only on the kernels decorated with ``pjit`` (``prange`` over the batch).
* every kernel loads from the cache without starting numba's compiler, and its cache
  object is made only when the kernel is first called (:mod:`charrnn.kernels.fastload`).
"""
from __future__ import annotations

from . import runtime

runtime.ensure_numba()

from numba import njit  # noqa: E402

from . import fastload  # noqa: E402

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
FLAGS = dict(cache=True, nogil=True, fastmath=FASTMATH)
PARALLEL_FLAGS = dict(FLAGS, parallel=True)


def _kernel(flags: dict, fn):
    """``njit(**flags)(fn)``; with fastload on, its cache is made when first used
    (:class:`charrnn.kernels.fastload.LazyCache`) and loads on the fast path."""
    if fastload.ENABLED and flags.get("cache"):
        return fastload.lazy_cache(njit(**dict(flags, cache=False))(fn))
    return fastload.fast_cache(njit(**flags)(fn))


def jit(fn=None, **extra):
    """Serial nopython kernel with the project's flags."""
    if fn is None:
        return lambda f: _kernel({**FLAGS, **extra}, f)
    return _kernel({**FLAGS, **extra}, fn)


def pjit(fn=None, **extra):
    """Parallel nopython kernel (use ``numba.prange`` over the batch)."""
    if fn is None:
        return lambda f: _kernel({**PARALLEL_FLAGS, **extra}, f)
    return _kernel({**PARALLEL_FLAGS, **extra}, fn)
