"""The one route to a matrix product: :func:`matmul` from Python, :func:`product` inside
kernels.  Which backend runs is decided here, and only here:

``matmul(a, b, out, bias=None, threads=None)``, ``out = bias + a @ b``:

* ``b`` packed (3-D, made by :func:`charrnn.kernels.packed.packed`): the packed-weight
  kernel, float32 or float64, any strides of ``a``; with ``threads`` > 1 (default
  :func:`charrnn.kernels.runtime.numba_threads`) numba's threads share the rows in
  blocks of ROW_BLOCK rows (more threads only when a has more than ROW_BLOCK rows per
  extra thread).  The numbers do not depend on the thread count.  Used for the
  recurrent layers' whole-pass products and the head.  ``bias`` (N,) or None.
* ``b`` a plain 2-D matrix: numpy's single-threaded BLAS, the rows of ``out`` split
  between ``threads`` threads (default :func:`charrnn.kernels.runtime.threads`), at
  least :data:`MATMUL_ROWS` rows each; one range is one ``np.matmul``.  The ranges run
  in numba's threads (:func:`charrnn.kernels.blas.gemm_rows`, the same CBLAS call on
  the same rows, so the same bits) when numpy's CBLAS was found and the arrays fit one
  CBLAS call (float32/float64, rows or columns contiguous), else in a Python thread
  pool; always the pool with ``CHARRNN_CPU_PATH=numpy``.  The split is fixed for a
  thread count, so a run is deterministic.  Used for the weight gradients (sums over
  all T*B rows).  No ``bias``.

``product(mode, w, wp, x, y)`` inside a kernel, ``y = x @ w.T`` for the sampler
(:mod:`charrnn.kernels.sample`), one thread:

* :attr:`Product.PACKED`: the packed-weight kernel with ``wp`` = w^T packed;
* :attr:`Product.ROWS`: a dot of each weight row with every stream's input while the row
  is in L1 (one stream: the weights stream from memory once per step; each element's
  sum order is fixed, so a stream's numbers do not depend on N).

The time loops (:mod:`charrnn.kernels.steps`) call the packed kernel's jitted
:func:`charrnn.kernels.packed._mm_serial` / ``_mm_bias`` directly: one step's rows.
"""
from __future__ import annotations

import numpy as np

from . import runtime
from .cpu import PORTABLE
from .jit import jit
from .modes import Product
from .packed import ROW_BLOCK, _mm_bias, _mm_rows, _mm_serial, panel_width

#: fewest rows of a product's output per thread of a plain (BLAS) :func:`matmul`
MATMUL_ROWS = 64

_pool: dict = {}


@jit
def _matmul_rows(W, X, Y):
    """Y[n, j] = dot(W[j], X[n]) for W (R, C), X (N, C), Y (N, R).

    Row by row: a weight row is loaded once and meets every stream's input while it is
    in L1, so the weights stream from memory once per step whatever N.  Per element the
    sum order is fixed, so results do not depend on N."""
    R, C = W.shape
    N = X.shape[0]
    for j in range(R):
        row = W[j]
        for n in range(N):
            x = X[n]
            acc = W.dtype.type(0)
            for i in range(C):
                acc += row[i] * x[i]
            Y[n, j] = acc


@jit
def product(mode, W, PW, X, Y):
    """Y (N, R) = X (N, C) @ W (R, C)^T: by the packed kernel from PW, W^T packed
    (``Product.PACKED``), or by :func:`_matmul_rows` (``Product.ROWS``)."""
    if mode == Product.PACKED:
        _mm_serial(X, PW, Y)
    else:
        _matmul_rows(W, X, Y)


# ------------------------------------------------------------------ public, validating

def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray, bias: np.ndarray | None = None,
           threads: int | None = None) -> np.ndarray:
    """``out = bias + a @ b``; the backend by the rule of the module docstring (``b``
    packed or plain).  Returns ``out``."""
    if b.ndim == 3:
        return _packed_matmul(a, b, out, bias,
                              runtime.numba_threads() if threads is None else threads)
    if bias is not None:
        raise ValueError("matmul: a bias needs packed weights (charrnn.kernels.packed)")
    return _blas_matmul(a, b, out, runtime.threads() if threads is None else threads)


def _check(a, wp, out, bias):
    if a.ndim != 2 or out.ndim != 2 or wp.ndim != 3:
        raise ValueError("matmul: a and out must be 2-D and wp 3-D")
    M, K = a.shape
    P, Kw, nr = wp.shape
    if not (a.dtype == wp.dtype == out.dtype) or a.dtype not in (np.float32, np.float64):
        raise ValueError(f"matmul: dtypes differ or are not float ({a.dtype}, {wp.dtype}, "
                         f"{out.dtype})")
    if nr != panel_width(a.dtype) or Kw != K or out.shape[0] != M \
            or not (P - 1) * nr < out.shape[1] <= P * nr:
        raise ValueError(f"matmul: shapes do not fit: a {a.shape}, wp {wp.shape}, "
                         f"out {out.shape}")
    if out.size and out.strides[1] != out.itemsize or wp.size and (
            wp.strides[2] != wp.itemsize or wp.strides[1] != nr * wp.itemsize):
        raise ValueError("matmul: out rows and packed panels must be contiguous")
    if bias is None:
        return np.empty(0, a.dtype)
    if bias.shape != (out.shape[1],) or bias.dtype != a.dtype:
        raise ValueError(f"matmul: bias must be {a.dtype} ({out.shape[1]},), got "
                         f"{bias.dtype} {bias.shape}")
    return np.ascontiguousarray(bias)


def _packed_matmul(a, wp, out, bias, threads: int):
    b = _check(a, wp, out, bias)
    nth = max(1, min(int(threads), a.shape[0] // ROW_BLOCK + 1))
    if nth > 1 or a.shape[0] > ROW_BLOCK:
        # in blocks of ROW_BLOCK rows, one thread too: (2500, 256) x (256, 1024) on one
        # thread measured 137 GFLOP/s as one block, 160 in blocks (Intel Xeon)
        _mm_rows(nth, a, wp, b, out)
    else:
        _mm_bias(a, wp, b, out)
    return out


def _executor(n: int):
    import concurrent.futures

    pool = _pool.get("pool")
    if pool is None or _pool.get("size", 0) < n:
        if pool is not None:
            pool.shutdown(wait=True)
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=n,
                                                     thread_name_prefix="charrnn-blas")
        _pool["pool"], _pool["size"] = pool, n
    return pool


def _blas_matmul(a, b, out, threads: int):
    """The plain product (module docstring).  Measured: LSTM 2x256 training step 37.7 ->
    34.9 ms with the rows split, and no longer 57 ms when numpy was imported before
    charrnn (BLAS's own threads spinning next to numba's)."""
    M = out.shape[0]
    parts = max(1, min(int(threads), M // MATMUL_ROWS))
    if parts == 1:
        return np.matmul(a, b, out=out)
    if not PORTABLE:
        from . import blas

        if blas.gemm_rows(a, b, out, parts):        # the same calls, in numba's threads
            return out
    cut = [M * i // parts for i in range(parts + 1)]
    pool = _executor(parts - 1)
    futures = [pool.submit(np.matmul, a[cut[i]:cut[i + 1]], b, out=out[cut[i]:cut[i + 1]])
               for i in range(1, parts)]
    try:
        np.matmul(a[:cut[1]], b, out=out[:cut[1]])
    finally:
        for f in futures:
            f.result()
    return out


__all__ = ["MATMUL_ROWS", "Product", "matmul", "product"]
