"""Matrix products with pre-packed weights: our own register-tiled micro-kernel.

Why: the per-step recurrent product of a layer is small, (B, H) x (H, G*H) with B ~ 50,
and its right-hand side is the same weight matrix at every step.  A general BLAS call
repacks that whole matrix into its own panel layout on every call (OpenBLAS, AVX-512,
one core: (50, 256) x (256, 1024) at 135 GFLOP/s, where a large product reaches 238).
Here the weights are packed ONCE per pass (:func:`packed`) and every call streams the
packed panels through a micro-kernel that keeps its whole output tile in vector
registers: the same product measured 245 GFLOP/s on one core, which is this core's peak
(2 FMA pipes x 16 float32 lanes x 2 flops at ~3.9 GHz), for 25 rows as for 50.

Layout.  A (K, N) right-hand side ``w`` is packed into ``wp`` (P, K, NR), P = ceil(N/NR):
panel p holds columns p*NR .. p*NR+NR-1, row k of the panel contiguous, zero past N.
NR is two vector registers of the host (float32: 32 columns with AVX-512, 16 with AVX2).

Micro-kernel.  C[i:i+m, panel] = bias + A[i:i+m, :] @ panel for a tile of m <= MR rows
of A (MR = 12 with 32 vector registers, 6 with 16), as one loop over k that broadcasts
A[r, k] and does 2*m fused multiply-adds into 2*m register accumulators (which start at
the bias, or at zero).  It is a numba ``intrinsic`` (numba's own loops cannot pin an
accumulator tile in registers), so it compiles, inlines and caches like any other
kernel.  Its code, the vector width and the choice of k loop (AVX2 inline assembly,
LLVM IR, or no micro-kernel at all: plain loops) are in :mod:`charrnn.kernels.cpu`.
M rows are cut into tiles of near-equal height.

Where it is used: every product of the recurrent layers except the weight gradients
(charrnn.kernels.steps: recurrent products, input projections and input gradients, one
step's rows at a time), the sampler's products, and the head's two products
(:func:`charrnn.kernels.matmul.matmul` with rows shared between threads).  The weight gradients, sums over all T*B rows, stay with
numpy's BLAS.

Numbers.  Every element of C is one chain of fused multiply-adds over k = 0..K-1 in
order, starting from the bias or zero, whichever tile, row range or thread computes it;
so a product gives the same bits with one thread or several.

Dimension letters: M rows of A (the batch), K the reduction, N columns of C.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .cpu import MR, NV, PORTABLE, VECTOR_BITS, micro
from .jit import jit, pjit


def panel_width(dtype) -> int:
    """NR, the columns of one packed panel, for ``dtype``."""
    return NV * VECTOR_BITS // (8 * np.dtype(dtype).itemsize)


def packed_shape(K: int, N: int, dtype) -> tuple[int, int, int]:
    """Shape (P, K, NR) of the packed form of a (K, N) matrix."""
    nr = panel_width(dtype)
    return ((N + nr - 1) // nr, K, nr)


# one micro-kernel per tile height 1..12 (those above MR are never called)
_k1, _k2, _k3, _k4, _k5, _k6, _k7, _k8, _k9, _k10, _k11, _k12 = (
    micro(r) for r in range(1, 13))


@jit
def _tile(rows, c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K):
    """The micro-kernel for a tile of ``rows`` (1..MR) rows.  ``MR`` is a compile-time
    constant, so with MR = 6 the branches of 7..12 rows, never taken, are not compiled
    into _tile or into the kernels that inline a copy of it."""
    if MR >= 12 and rows == 12:
        _k12(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif MR >= 11 and rows == 11:
        _k11(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif MR >= 10 and rows == 10:
        _k10(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif MR >= 9 and rows == 9:
        _k9(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif MR >= 8 and rows == 8:
        _k8(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif MR >= 7 and rows == 7:
        _k7(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif rows == 6:
        _k6(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif rows == 5:
        _k5(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif rows == 4:
        _k4(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif rows == 3:
        _k3(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    elif rows == 2:
        _k2(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)
    else:
        _k1(c, a_addr, rs, cs, w_addr, b_addr, c_addr, ldc, K)


@jit
def _pack(w, wp):
    """wp (P, K, NR) <- w (K, N), any strides; columns past N are zero.  Copied in tiles
    of 16 rows by NR columns, so that both a row-major w and a transposed view (W^T of a
    row-major W) are read in runs of contiguous elements."""
    K, N = w.shape
    P, _, nr = wp.shape
    for p in range(P):
        j0 = p * nr
        n = min(nr, N - j0)
        for k0 in range(0, K, 16):
            k1 = min(K, k0 + 16)
            for j in range(n):
                for k in range(k0, k1):
                    wp[p, k, j] = w[k, j0 + j]
            for k in range(k0, k1):
                for j in range(n, nr):
                    wp[p, k, j] = 0


#: elements of w per thread of a row-major pack (smaller: one thread)
PACK_SPLIT = 1 << 16


@pjit
def _pack_rows(nth, w, wp):
    """wp (P, K, NR) <- w (K, P*NR) with contiguous rows, ``nth`` threads taking ranges
    of panels.  (numpy's copy of the same (K, P, NR) view moves 64 bytes per inner loop:
    LSTM 2x256's W_hh, 1 MB, 440-620 us from memory, here 110-240 with two threads.)"""
    P, K, nr = wp.shape
    for i in prange(nth):
        for p in range(P * i // nth, P * (i + 1) // nth):
            src = w[:, p * nr:(p + 1) * nr]
            dst = wp[p]
            for k in range(K):
                for j in range(nr):
                    dst[k, j] = src[k, j]


@jit
def _panel_tiles(a, wp, p, bias, c):
    """C[:, p*NR : p*NR+NR] = bias + A @ panel p (no bias when ``bias`` is empty), in
    tiles of at most MR rows of near-equal height (M = 25: 9, 8, 8, not 12, 12, 1: a
    one-row tile waits on its two FMA chains).  The last panel, when narrower than NR,
    is computed into a scratch tile (and its zero-padded bias) and copied."""
    M, K = a.shape
    N = c.shape[1]
    nr = wp.shape[2]
    s = a.itemsize
    j0 = p * nr
    n = min(nr, N - j0)
    rs, cs = a.strides[0] // s, a.strides[1] // s
    ab = a.ctypes.data
    wb = wp[p].ctypes.data
    tiles = (M + MR - 1) // MR
    if n == nr:
        ldc = c.strides[0] // s
        bb = bias.ctypes.data + j0 * s if bias.shape[0] > 0 else 0
        cb = c.ctypes.data + j0 * s
        i = 0
        for q in range(tiles):
            rows = M * (q + 1) // tiles - i
            _tile(rows, c, ab + i * rs * s, rs, cs, wb, bb, cb + i * ldc * s, ldc, K)
            i += rows
        return
    scratch = np.zeros((MR + 1, nr), c.dtype)       # MR rows of output, then the bias
    bb = 0
    if bias.shape[0] > 0:
        for j in range(n):          # a loop, not a slice assignment: see sample.copy_streams
            scratch[MR, j] = bias[j0 + j]
        bb = scratch[MR].ctypes.data
    i = 0
    for q in range(tiles):
        rows = M * (q + 1) // tiles - i
        _tile(rows, c, ab + i * rs * s, rs, cs, wb, bb, scratch.ctypes.data, nr, K)
        for r in range(rows):
            for j in range(n):
                c[i + r, j0 + j] = scratch[r, j]
        i += rows


@jit
def _panel_loops(a, wp, p, bias, c):
    """:func:`_panel_tiles` without the micro-kernel (``CHARRNN_CPU_PATH=numpy``): plain
    loops, each element of C one chain of multiply-adds over k = 0..K-1 from the bias
    or zero, as in the tiles (LLVM vectorises the loop over the panel's columns)."""
    M, K = a.shape
    N = c.shape[1]
    nr = wp.shape[2]
    j0 = p * nr
    n = min(nr, N - j0)
    w = wp[p]
    for i in range(M):
        row = c[i, j0:j0 + n]
        if bias.shape[0] > 0:
            for j in range(n):
                row[j] = bias[j0 + j]
        else:
            for j in range(n):
                row[j] = 0
        for k in range(K):
            x = a[i, k]
            wk = w[k]
            for j in range(n):
                row[j] += x * wk[j]


#: the product of one panel: the micro-kernel's tiles, or plain loops (charrnn.kernels.cpu)
_panel = _panel_loops if PORTABLE else _panel_tiles


@jit
def _mm_serial(a, wp, c):
    """c (M, N) = a (M, K) @ w, w packed in wp (P, K, NR); one thread, no bias.  Called
    once per step by the time loops: the "no bias" is an empty view of ``c``, not a new
    array."""
    if c.shape[0] > 0:
        _mm_bias(a, wp, c[0, :0], c)


@jit
def _mm_bias(a, wp, bias, c):
    """c (M, N) = bias + a (M, K) @ w, w packed in wp; one thread; bias (N,) or empty."""
    if a.shape[1] == 0:
        for i in range(c.shape[0]):
            for j in range(c.shape[1]):
                c[i, j] = bias[j] if bias.shape[0] > 0 else 0
        return
    for p in range(wp.shape[0]):
        _panel(a, wp, p, bias, c)


#: rows of A per block of the row-parallel product: a block (and its output rows) stays
#: in cache while the packed panels stream past it
ROW_BLOCK = 192


@pjit
def _mm_rows(nth, a, wp, bias, c):
    """c = bias + a @ w for a tall a (M >> B): ``nth`` threads each take a range of rows,
    in blocks of ROW_BLOCK rows."""
    M = a.shape[0]
    for i in prange(nth):
        r1 = M * (i + 1) // nth
        for r in range(M * i // nth, r1, ROW_BLOCK):
            e = min(r1, r + ROW_BLOCK)
            _mm_bias(a[r:e], wp, bias, c[r:e])


# ------------------------------------------------------------------ public, validating

def packed(w: np.ndarray, out: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """The packed form (P, K, NR) of the (K, N) matrix ``w`` (any strides), written into
    ``out`` when given (it must have :func:`packed_shape`); up to ``threads`` threads
    share the panels of a large row-major ``w``."""
    if w.ndim != 2 or w.dtype not in (np.float32, np.float64):
        raise ValueError(f"packed: need a 2-D float32 or float64 matrix, got {w.dtype} "
                         f"{w.shape}")
    shape = packed_shape(*w.shape, w.dtype)
    if out is None:
        out = np.empty(shape, w.dtype)
    elif out.shape != shape or out.dtype != w.dtype:
        raise ValueError(f"packed: out must be {w.dtype} {shape}, got {out.dtype} {out.shape}")
    P, K, nr = shape
    if w.shape[1] == P * nr:                          # no padding
        if w.strides[1] == w.itemsize and w.strides[0] > 0:
            # contiguous rows: every panel row is one run of NR elements
            _pack_rows(max(1, min(int(threads), P, w.size // PACK_SPLIT)), w, out)
            return out
        # a transposed view (W^T of a row-major W): one strided copy of a (K, P, NR)
        # view (numpy's copy loops measured 2-4x faster than _pack on 256 x 1024;
        # numba's threads no faster than numpy's copy on this layout)
        view = w.view()
        try:
            view.shape = (K, P, nr)                  # never copies (raises instead)
        except AttributeError:
            pass
        else:
            np.copyto(out, view.transpose(1, 0, 2))
            return out
    _pack(w, out)
    return out


__all__ = ["MR", "NV", "ROW_BLOCK", "VECTOR_BITS", "packed", "packed_shape", "panel_width"]
