"""numpy's BLAS product, called from numba's threads (the rows of :func:`charrnn.kernels.matmul.matmul`).

:func:`charrnn.kernels.matmul.matmul` computes ``out = a @ b`` by numpy's single-threaded BLAS
with the rows of ``out`` split between the threads.  :func:`gemm_rows` makes those calls
from one numba parallel region, the same C function on the same rows, so the result is
the same bits as one ``np.matmul`` per row range; the alternative, a Python thread pool,
is the fallback when the BLAS cannot be found.

Why: the threads that run charrnn's time loops and packed products are numba's OpenMP
workers.  Between parallel regions they spin a while before they sleep (charrnn sets
``GOMP_SPINCOUNT``, see charrnn.kernels.runtime.tune_environment), because waking a sleeping thread costs
100-200 us on a virtual machine whose idle cores halt (measured on the 2-core Zen 3 of
2026-12-07: an empty 2-thread region 108 us median, p99 0.3-1 ms, when the worker
sleeps; 3-11 us when it spins).  A Python pool thread would have to wake up as well,
and then compete for a core with a spinning worker.  One set of threads for all the
parallel work removes both costs.

Finding the function: threadpoolctl names the BLAS library numpy loaded; its CBLAS
``?gemm`` is looked up under the names numpy's wheels (``scipy_cblas_sgemm64_``,
OpenBLAS with 64-bit integers) and other builds use.  Integer arguments are passed as
64-bit values, which a 32-bit-integer CBLAS also reads correctly on the 64-bit
little-endian ABIs (each argument has a full register or 8-byte stack slot).  Before the
first use, a product of awkward shapes is checked bit for bit against ``np.matmul``
(which calls the same library); anything unexpected turns the path off.
"""
from __future__ import annotations

import ctypes
import sys
from typing import NamedTuple

import numpy as np
from numba import prange

from .jit import jit, pjit

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112

#: candidate names of (sgemm, dgemm), in order
_NAMES = (("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_"),
          ("cblas_sgemm64_", "cblas_dgemm64_"),
          ("scipy_cblas_sgemm", "scipy_cblas_dgemm"),
          ("cblas_sgemm", "cblas_dgemm"))

_state: dict = {}


class Gemm(NamedTuple):
    """One row-major CBLAS product C (M, N) = op(A) (M, K) @ B (K, N): addresses in
    bytes, leading dimensions in elements (all integers)."""

    trans: int            # 1: A is stored transposed, (K, M)
    a: int
    lda: int
    b: int
    ldb: int
    c: int
    ldc: int
    M: int
    N: int
    K: int


@jit
def _gemm_range(fn, isz, i, parts, gm):
    """out[r0:r1] = op(A)[r0:r1] @ B, the i-th of ``parts`` row ranges of the product
    ``gm`` (a :class:`Gemm`) of elements of ``isz`` bytes."""
    trans, a, lda, b, ldb, c, ldc, M, N, K = gm
    r0 = M * i // parts
    r1 = M * (i + 1) // parts
    pa = a + isz * r0 if trans else a + isz * r0 * lda
    fn(_ROW_MAJOR, _TRANS if trans else _NO_TRANS, _NO_TRANS, r1 - r0, N, K, 1.0, pa, lda,
       b, ldb, 0.0, c + isz * r0 * ldc, ldc)


# One parallel kernel per function type: numba's dispatcher, called from Python, may
# reuse the machine code compiled for one ExternalFunctionPointer type for another's
# pointer (float32 code handed dgemm); calls between jitted functions type exactly.
@pjit
def _sgemm_rows(fn, parts, gm):
    for i in prange(parts):
        _gemm_range(fn, 4, i, parts, gm)


@pjit
def _dgemm_rows(fn, parts, gm):
    for i in prange(parts):
        _gemm_range(fn, 8, i, parts, gm)


def _declare(fn, real):
    i32, i64, ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
    fn.restype = None
    fn.argtypes = [i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64, real, ptr, i64]
    return fn


def _numpy_blas_library() -> str | None:
    """The file of the BLAS library numpy's products call (None if unsure)."""
    from pathlib import Path

    from threadpoolctl import threadpool_info

    np.matmul(np.ones((2, 2)), np.ones((2, 2)))       # numpy's BLAS is loaded by now
    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    home = Path(np.__file__).resolve().parent.parent          # site-packages
    files = [Path(i["filepath"]).resolve() for i in libs]
    ours = [i for i, f in zip(libs, files)                       # numpy.libs/, numpy/.dylibs/
            if f.is_relative_to(home) and "numpy" in f.relative_to(home).parts[0]]
    if len(ours) == 1:
        return ours[0]["filepath"]
    return libs[0]["filepath"] if len(libs) == 1 else None


def _lookup():
    if sys.maxsize <= 2 ** 32 or sys.byteorder != "little":
        return None
    path = _numpy_blas_library()
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    for sname, dname in _NAMES:
        s, d = getattr(lib, sname, None), getattr(lib, dname, None)
        if s is not None and d is not None:
            return {np.dtype(np.float32): (_declare(s, ctypes.c_float), _sgemm_rows),
                    np.dtype(np.float64): (_declare(d, ctypes.c_double), _dgemm_rows)}
    return None


def _layout(a, b, out):
    """(trans, lda, ldb, ldc) for a CBLAS call, or None if the arrays do not fit one."""
    if a.ndim != 2 or b.ndim != 2 or out.ndim != 2:
        return None
    if not (a.dtype == b.dtype == out.dtype) or a.dtype not in _state["fns"]:
        return None
    (M, K), N, isz = a.shape, b.shape[1], a.itemsize
    if b.shape[0] != K or out.shape != (M, N) or min(M, N, K) == 0:
        return None
    if not (a.flags.aligned and b.flags.aligned and out.flags.aligned):
        return None
    if any(s % isz for x in (a, b, out) for s in x.strides):
        return None
    sa, sb, so = (tuple(s // isz for s in x.strides) for x in (a, b, out))
    if sb[1] != 1 or so[1] != 1 or sb[0] < max(1, N) or so[0] < max(1, N):
        return None
    if sa[1] == 1 and sa[0] >= max(1, K):
        return 0, sa[0], sb[0], so[0]
    if sa[0] == 1 and sa[1] >= max(1, M):
        return 1, sa[1], sb[0], so[0]
    return None


def _call(a, b, out, parts, lay) -> None:
    trans, lda, ldb, ldc = lay
    fn, kernel = _state["fns"][a.dtype]
    M, K = a.shape
    kernel(fn, parts, Gemm(int(trans), a.ctypes.data, lda, b.ctypes.data, ldb, out.ctypes.data,
                           ldc, M, b.shape[1], K))


def _self_check() -> bool:
    """The threaded call gives np.matmul's bits, row range by row range."""
    rng = np.random.default_rng(7)
    for dtype in (np.float32, np.float64):
        d = rng.standard_normal((53, 37)).astype(dtype)        # a = d.T (37, 53), transposed
        x = rng.standard_normal((37, 29)).astype(dtype)        # a = x (37, 29), plain
        h = rng.standard_normal((53, 19)).astype(dtype)
        w = rng.standard_normal((29, 23)).astype(dtype)
        for a, b in ((d.T, h), (x, w)):
            out = np.full((a.shape[0], b.shape[1]), np.nan, dtype)
            lay = _layout(a, b, out)
            if lay is None:
                return False
            _call(a, b, out, 3, lay)
            ref = np.empty_like(out)
            for i in range(3):
                r0, r1 = a.shape[0] * i // 3, a.shape[0] * (i + 1) // 3
                np.matmul(a[r0:r1], b, out=ref[r0:r1])
            if not np.array_equal(out, ref):
                return False
    return True


def available() -> bool:
    """Whether :func:`gemm_rows` can run (found and checked once per process)."""
    if "ok" not in _state:
        _state["ok"] = False
        try:
            _state["fns"] = _lookup()
            _state["ok"] = _state["fns"] is not None and _self_check()
        except Exception:          # any surprise (a missing symbol, an odd build): fall back
            _state["ok"] = False
    return _state["ok"]


def gemm_rows(a: np.ndarray, b: np.ndarray, out: np.ndarray, parts: int) -> bool:
    """``out = a @ b`` with the rows of ``out`` in ``parts`` ranges, one BLAS call each,
    in numba's threads.  Returns False (and does nothing) where it cannot: no usable
    BLAS, or arrays that one CBLAS call cannot describe (the caller then falls back)."""
    if parts < 1 or not available():
        return False
    lay = _layout(a, b, out)
    if lay is None:
        return False
    _call(a, b, out, parts, lay)
    return True


__all__ = ["available", "gemm_rows"]
