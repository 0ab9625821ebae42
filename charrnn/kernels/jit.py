"""The one place where numba's flags are set. Kernels import ``jit`` and ``pjit`` from here.

* ``cache=True``: compile once per machine; see charrnn.kernels.runtime for the cache directory.
* ``fastmath``: contraction, reassociation and approximate functions let reductions
  vectorise; ``nnan``/``ninf`` are left out so NaN and inf still propagate and a
  diverging run is detected.
* ``parallel=True`` only on the kernels decorated with ``pjit`` (``prange`` over the batch).
* every kernel loads from the cache without starting numba's compiler
  (:mod:`charrnn.kernels.fastload`).
"""
from __future__ import annotations

from . import runtime

runtime.ensure_numba()

from numba import njit  # noqa: E402

from .fastload import fast_cache  # noqa: E402

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
FLAGS = dict(cache=True, nogil=True, fastmath=FASTMATH)
PARALLEL_FLAGS = dict(FLAGS, parallel=True)


def jit(fn=None, **extra):
    """Serial nopython kernel with the project's flags."""
    if fn is None:
        return lambda f: fast_cache(njit(**FLAGS, **extra)(f))
    return fast_cache(njit(**FLAGS, **extra)(fn))


def pjit(fn=None, **extra):
    """Parallel nopython kernel (use ``numba.prange`` over the batch)."""
    if fn is None:
        return lambda f: fast_cache(njit(**PARALLEL_FLAGS, **extra)(f))
    return fast_cache(njit(**PARALLEL_FLAGS, **extra)(fn))
