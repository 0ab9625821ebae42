"""numpy's own BLAS ``gemm``, callable from numba kernels.

The time loop of a layer is one product and one fused kernel per step.  Driven from
Python that costs two calls per step (about 15 us at B=50, a fifth of a 2x128 LSTM's
step), each needing the GIL to start, so two layer threads keep handing the GIL back
and forth.  With the BLAS ``cblas_?gemm`` of the library numpy itself loaded, a numba
kernel runs a whole chunk of steps, products included, in one call without the GIL
(charrnn.kernels.steps).

The function is found through threadpoolctl, which reports the file of the BLAS numpy
loaded; its symbol names depend on the build (numpy >= 2 wheels: ``scipy_cblas_sgemm64_``
with 64-bit integers; numpy 1.x wheels: ``cblas_sgemm64_``; a system OpenBLAS:
``cblas_sgemm``).  Where none is found (numpy built on Accelerate or MKL, say),
:func:`gemm` returns None and the layers keep the per-step loop in Python, which gives the
same numbers; so it does while BLAS runs on several threads (see :func:`gemm`).
``CHARRNN_STEP_LOOP=python`` forces that fallback.

The ctypes function is passed to the kernels as an argument, never read as a global,
so the kernels stay cacheable (the address is not baked into the compiled code).
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from .. import runtime

_found: dict = {}

# (symbol of single, symbol of double, 64-bit integers)
_CANDIDATES = [
    ("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", True),
    ("cblas_sgemm64_", "cblas_dgemm64_", True),
    ("scipy_cblas_sgemm", "scipy_cblas_dgemm", False),
    ("cblas_sgemm", "cblas_dgemm", False),
]


def _blas_files() -> list[str]:
    """The BLAS files loaded in this process, numpy's own first: scipy's OpenBLAS is
    often loaded too (numba's np.dot goes through it), and its threads are not the ones
    --threads and the pipeline limit."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:                                      # pragma: no cover
        return []
    files = [i["filepath"] for i in threadpool_info()
             if i.get("user_api") == "blas" and i.get("filepath")]
    home = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))

    def numpys(path: str) -> bool:        # site-packages/numpy.libs, numpy/.dylibs
        rel = os.path.relpath(os.path.abspath(path), home)
        return rel.startswith("numpy")
    return sorted(files, key=lambda f: not numpys(f))


def _bind(lib, name: str, ctype, wide: bool):
    fn = getattr(lib, name)                                  # AttributeError if absent
    I = ctypes.c_int64 if wide else ctypes.c_int
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, I, I, I, ctype,
                   ctypes.c_void_p, I, ctypes.c_void_p, I, ctype, ctypes.c_void_p, I]
    fn.restype = None
    return fn


def _load() -> dict:
    if os.environ.get("CHARRNN_STEP_LOOP", "").strip().lower() == "python":
        return {}
    libs = []
    for path in _blas_files():
        try:
            libs.append(ctypes.CDLL(path))
        except OSError:
            continue
    for s_name, d_name, wide in _CANDIDATES:     # numpy's 64-bit symbols first
        for lib in libs:
            try:
                return {np.dtype(np.float32): _bind(lib, s_name, ctypes.c_float, wide),
                        np.dtype(np.float64): _bind(lib, d_name, ctypes.c_double, wide)}
            except AttributeError:
                continue
    return {}


def gemm(dtype):
    """The ``cblas_?gemm`` ctypes function for ``dtype`` (float32 or float64), or None:
    where none was found, and while BLAS runs on several threads.  There the products
    dominate and the fused loop measured no faster than the Python one (LSTM 2x128 to
    2x512, 2 cores, three alternating runs each), so the Python loop is kept; with one
    BLAS thread (``--threads 1``, or in the layer pipeline) the fused loop saves the
    interpreter between steps and, in the pipeline, lets the layer threads run without
    the GIL."""
    if not runtime.blas_is_single_threaded():
        return None
    key = os.environ.get("CHARRNN_STEP_LOOP", "")
    if key not in _found:
        _found[key] = _load()
    return _found[key].get(np.dtype(dtype))


__all__ = ["gemm"]
