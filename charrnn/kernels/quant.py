"""Reduced-precision weights for the generation kernel (``charrnn sample --weights``,
``charrnn eval --weights``), and the matrix-vector products that read them.

One stream of a wide model reads every weight once per character and does two flops
with it: the step is bound by how fast the weights arrive from memory, not by
arithmetic.  Stored in fewer bytes, they arrive sooner:

* ``Precision.INT8``: symmetric per-output-row quantization.  Row j of W gets the scale
  ``s_j = max_i |W[j, i]| / 127`` and ``q[j, i] = round(W[j, i] / s_j)`` in [-127, 127]
  (a row of zeros gets s_j = 0); W[j, i] is read as ``q[j, i] * s_j``, off by at most
  s_j / 2.  1 byte a weight.
* ``Precision.BF16``: bfloat16, the top 16 bits of the float32 (rounded to nearest,
  ties to even): 8 bits of mantissa, the float32 range.  2 bytes a weight.
* ``Precision.FLOAT``: the model's own weights (float32 or float64).

Only the weights are reduced.  The activations, the state, the biases, the gate maths
and every sum stay in the model's dtype: a product is ``y[j] = s_j * sum_i w(q[j, i]) *
x[i]``, each weight widened to float32 as it is read.

Products (``Y (N, R) = X (N, C) @ W^T``, W row-major (R, C), each output element one
dot of a contiguous weight row with a contiguous input row; LLVM vectorises the dots):
:func:`rows_product` computes a range of rows on one thread, or with ``nth`` > 1 splits
the rows between numba's threads (one stream of a wide model: the weights stream from
memory on both cores at once).  With N > 1 streams each weight row is widened once into
a scratch row, which then meets every stream's input while it is in L1.  Every output
element is the same dot whichever thread computes it, so the numbers do not depend on
the thread count.  Called from :mod:`charrnn.kernels.sample` (``Product.THREADS``, and
every reduced precision).

Dimension letters: R output rows, C inputs (the reduction), N streams.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .activations import _f32_from_bits
from .jit import jit, pjit
from .modes import Precision

#: fewest weights of a product for which ``nth`` > 1 threads share its rows (smaller:
#: one thread, which beats the cost of waking the others)
PARALLEL_MIN = 1 << 15


# ------------------------------------------------------------------ one weight's value

@jit
def bf16_value(b):
    """The float32 of the bfloat16 bit pattern ``b`` (uint16): its bits, then 16 zeros."""
    return _f32_from_bits(np.int64(b) << 16)


@jit
def int8_value(q):
    """The float32 of the int8 ``q`` (times its row's scale, outside the sum)."""
    return np.float32(q)


# ------------------------------------------------------------------ quantizing (numpy)

def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q, s): int8 ``q`` of w's shape (..., C) and float32 row scales ``s`` (...,) with
    ``w ~ q * s[..., None]`` (module docstring); w must be finite."""
    w = np.asarray(w)
    m = np.max(np.abs(w), axis=-1) if w.shape[-1] else np.zeros(w.shape[:-1])
    s = (m.astype(np.float64) / 127.0).astype(np.float32)                  # (...,)
    inv = np.divide(1.0, s, out=np.zeros(s.shape), where=s > 0)            # (...,)
    q = np.rint(w.astype(np.float64) * inv[..., None])                     # (..., C)
    return np.clip(q, -127, 127).astype(np.int8), s


def quantize_bf16(w: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns of w (rounded to nearest, ties to even; NaN stays a
    NaN)."""
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (u & 0x7F800000 == 0x7F800000) & (u & 0x7FFFFF != 0)
    r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


@jit
def dequantize(prec, q, s, out):
    """out (R, C) = the weights q (R, C) stand for (scales s (R,) for INT8), by the
    conversions the products use."""
    R, C = q.shape
    for j in range(R):
        for i in range(C):
            if prec == Precision.INT8:
                out[j, i] = int8_value(q[j, i]) * s[j]
            elif prec == Precision.BF16:
                out[j, i] = bf16_value(q[j, i])
            else:
                out[j, i] = q[j, i]


# ------------------------------------------------------------------ dots and products

@jit
def _dot(w, x):
    """sum_i w[i] * x[i], float weights."""
    acc = x.dtype.type(0)
    for i in range(x.shape[0]):
        acc += w[i] * x[i]
    return acc


@jit
def _dot_int8(q, x):
    """sum_i q[i] * x[i], q int8 (the row's scale is applied by the caller)."""
    acc = x.dtype.type(0)
    for i in range(x.shape[0]):
        acc += int8_value(q[i]) * x[i]
    return acc


@jit
def _dot_bf16(b, x):
    """sum_i bf16(b[i]) * x[i]."""
    acc = x.dtype.type(0)
    for i in range(x.shape[0]):
        acc += bf16_value(b[i]) * x[i]
    return acc


@jit
def _row_dot(prec, W, S, j, x):
    """Row j of W (its precision ``prec``) dotted with x (C,)."""
    if prec == Precision.INT8:
        return _dot_int8(W[j], x) * S[j]
    if prec == Precision.BF16:
        return _dot_bf16(W[j], x)
    return _dot(W[j], x)


@jit
def _rows(prec, W, S, X, Y, r0, r1):
    """Y[:, r0:r1] = X (N, C) @ W[r0:r1]^T.  One stream: one fused dot per row.  Several:
    row j widened once into a scratch row (float32, or W's float dtype), then dotted
    with every stream's input."""
    N = X.shape[0]
    if N == 1:
        x = X[0]
        y = Y[0]
        for j in range(r0, r1):
            y[j] = _row_dot(prec, W, S, j, x)
        return
    C = W.shape[1]
    row = np.empty(C, X.dtype)                                             # (C,)
    for j in range(r0, r1):
        w = W[j]
        if prec == Precision.INT8:
            for i in range(C):
                row[i] = int8_value(w[i])
        elif prec == Precision.BF16:
            for i in range(C):
                row[i] = bf16_value(w[i])
        else:
            for i in range(C):
                row[i] = w[i]
        for n in range(N):
            if prec == Precision.INT8:
                Y[n, j] = _dot(row, X[n]) * S[j]
            else:
                Y[n, j] = _dot(row, X[n])


@pjit
def _rows_threads(prec, nth, W, S, X, Y):
    """:func:`_rows` with the R rows split into ``nth`` ranges, one per thread."""
    R = W.shape[0]
    for t in prange(nth):
        _rows(prec, W, S, X, Y, R * t // nth, R * (t + 1) // nth)


@jit
def rows_product(prec, nth, W, S, X, Y):
    """Y (N, R) = X (N, C) @ W (R, C)^T, W of precision ``prec`` (scales S (R,) for
    INT8); its rows shared by ``nth`` threads when W is large enough.  Never call with
    ``nth`` > 1 from inside a parallel region."""
    R, C = W.shape
    if nth > 1 and R * C >= PARALLEL_MIN:
        _rows_threads(prec, min(nth, R), W, S, X, Y)
    else:
        _rows(prec, W, S, X, Y, 0, R)


__all__ = ["PARALLEL_MIN", "bf16_value", "dequantize", "int8_value",
           "quantize_bf16", "quantize_int8", "rows_product"]
