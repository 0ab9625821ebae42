"""The head and the loss of an evaluation in ONE kernel: log p(target) per position,
without an (N, V) logits array.

Dimension letters: N = T*B positions (time-major, n = t*B + b), H hidden, V vocab.

Each thread takes a range of blocks of ROW_BLOCK rows of the head input; for each block
it makes the block's logits, bias + y W^T, by the packed-weight kernel
(:mod:`charrnn.kernels.packed`, the same chain of fused multiply-adds per element as
:func:`charrnn.kernels.matmul.matmul`, so the same bits) into its own (ROW_BLOCK, V)
scratch, which stays in cache, and then each row's -log softmax at its target by
:func:`charrnn.kernels.gates.nll_row` (the loss's own helper).  Training still makes the
logits as one product and the loss from them (it needs their gradient).
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .gates import nll_row
from .jit import pjit
from .packed import ROW_BLOCK, _mm_bias


@pjit
def _head_log_probs(nth, y, wp, bias, targets, scratch, lp):
    """lp[n % B, n // B] = log softmax(bias + y[n] W^T)[targets[n]] (float64) for the N
    rows of y (N, H); wp is W^T packed, scratch (nth, ROW_BLOCK, V), lp (B, T)."""
    N = y.shape[0]
    B = lp.shape[0]
    blocks = (N + ROW_BLOCK - 1) // ROW_BLOCK
    for i in prange(nth):
        z = scratch[i]
        for k in range(blocks * i // nth, blocks * (i + 1) // nth):
            r0 = k * ROW_BLOCK
            r1 = min(N, r0 + ROW_BLOCK)
            _mm_bias(y[r0:r1], wp, bias, z[:r1 - r0])
            for n in range(r0, r1):
                nll, _ = nll_row(z[n - r0], targets[n], z[n - r0])
                lp[n % B, n // B] = -nll


def head_log_probs(y: np.ndarray, wp: np.ndarray, bias: np.ndarray, targets: np.ndarray,
                   lp: np.ndarray, threads: int, scratch: np.ndarray | None = None):
    """Fills ``lp`` (B, T) float64 from the head input ``y`` (N, H), W^T packed ``wp``,
    ``bias`` (V,) and ``targets`` (N,) int64 (time-major); returns the scratch (reuse it
    for the next call of the same V and thread count)."""
    V = bias.shape[0]
    blocks = (y.shape[0] + ROW_BLOCK - 1) // ROW_BLOCK
    nth = max(1, min(int(threads), blocks))
    if scratch is None or scratch.shape[0] < nth or scratch.shape[2] != V \
            or scratch.dtype != y.dtype:
        scratch = np.empty((nth, ROW_BLOCK, V), y.dtype)
    _head_log_probs(nth, y, wp, np.ascontiguousarray(bias), targets, scratch, lp)
    return scratch


__all__ = ["head_log_probs"]
