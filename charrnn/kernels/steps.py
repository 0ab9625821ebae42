"""Time loops: a chunk of steps of one layer in ONE kernel call, products included.

Each step is the recurrent product (through numpy's own BLAS ``gemm``, passed in as
``gemm``: see :mod:`charrnn.kernels.blas`) and the fused step kernel of
:mod:`charrnn.kernels.cells`, exactly the two calls the Python loop of
:mod:`charrnn.cells` makes per step, in the same order on the same buffers, so both paths
give the same numbers.  Here there is no interpreter between the steps and no GIL (the
kernels are ``nogil``), which lets the layer pipeline run layers in parallel threads.

Dimension letters: B batch, H hidden, G gates; arrays are time-major (T, B, .).
Backward kernels take ``dh_in`` (B, H), the gradient reaching h_{t1-1} through the
recurrence from the chunk after, and leave the one for the chunk before in ``dh_mm``
(when t0 > 0).
"""
from __future__ import annotations

from ._jit import jit
from .cells import (_gru_backward_step, _gru_forward_step, _lstm_backward_step,
                    _lstm_forward_step, _rnn_backward_step, _rnn_forward_step)

ROW_MAJOR, NO_TRANS = 101, 111


@jit
def _mm(gemm, a, b, c):
    """c = a @ b for row-major 2-D arrays whose rows are contiguous (any row stride)."""
    M, K = a.shape
    N = b.shape[1]
    one = c.dtype.type(1)
    zero = c.dtype.type(0)
    gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, M, N, K, one, a.ctypes.data, a.strides[0] // a.itemsize,
         b.ctypes.data, b.strides[0] // b.itemsize, zero, c.ctypes.data,
         c.strides[0] // c.itemsize)


# ---------------------------------------------------------------- LSTM

@jit
def _lstm_forward_steps(gemm, t0, t1, xp, w_hh_t, b_hh, peep, use_peep, hs, cs, hh, tc):
    for t in range(t0, t1):
        _mm(gemm, hs[t], w_hh_t, hh)                                   # (B, 4H)
        _lstm_forward_step(xp[t], hh, b_hh, peep, use_peep, cs[t], hs[t + 1], cs[t + 1],
                           xp[t], tc)


@jit
def _lstm_backward_steps(gemm, t0, t1, dy, dh_in, dh_mm, dc, dpre, cs, tc, w_hh, peep,
                         use_peep, dpeep):
    dh = dh_in
    for t in range(t1 - 1, t0 - 1, -1):
        _lstm_backward_step(dy[t], dh, dc, dpre[t], cs[t], cs[t + 1], tc, peep, use_peep,
                            dpre[t], dpeep)
        if t > 0:
            _mm(gemm, dpre[t], w_hh, dh_mm)                            # (B, H)
            dh = dh_mm


# ---------------------------------------------------------------- GRU

@jit
def _gru_forward_steps(gemm, before, t0, t1, xp, w_hh_t, b_hh, hs, gates, aux, hh, hn):
    """after: hh (B, 3H), hn unused; before: hh (B, 2H) for r, z and hn (B, H) for n."""
    H = hs.shape[2]
    for t in range(t0, t1):
        if not before:
            _mm(gemm, hs[t], w_hh_t, hh)                               # (B, 3H)
            _gru_forward_step(0, xp[t], hh, b_hh, hs[t], hs[t + 1], gates[t], aux[t])
        else:
            _mm(gemm, hs[t], w_hh_t[:, :2 * H], hh)                    # (B, 2H)
            _gru_forward_step(1, xp[t], hh, b_hh, hs[t], hs[t + 1], gates[t], aux[t])
            _mm(gemm, aux[t], w_hh_t[:, 2 * H:], hn)                   # (B, H)
            _gru_forward_step(2, xp[t], hn, b_hh, hs[t], hs[t + 1], gates[t], aux[t])


@jit
def _gru_backward_steps(gemm, before, t0, t1, dy, dh_in, dh_mm, dh_dir, gates, aux, hs,
                        dxp, dhh, w_hh, drh):
    H = hs.shape[2]
    dh = dh_in
    for t in range(t1 - 1, t0 - 1, -1):
        if not before:
            _gru_backward_step(0, dy[t], dh, dh_dir, gates[t], aux[t], hs[t], dxp[t], dhh[t])
            if t > 0:
                _mm(gemm, dhh[t], w_hh, dh_mm)                         # (B, H)
                dh = dh_mm
        else:
            _gru_backward_step(1, dy[t], dh, dh_dir, gates[t], aux[t], hs[t], dxp[t], dhh[t])
            _mm(gemm, dhh[t][:, 2 * H:], w_hh[2 * H:], drh)            # (B, H)
            _gru_backward_step(2, dy[t], drh, dh_dir, gates[t], aux[t], hs[t], dxp[t], dhh[t])
            if t > 0:
                _mm(gemm, dhh[t][:, :2 * H], w_hh[:2 * H], dh_mm)      # (B, H)
                dh = dh_mm


# ---------------------------------------------------------------- Elman RNN

@jit
def _rnn_forward_steps(gemm, relu, t0, t1, xp, w_hh_t, b_hh, hs, hh):
    for t in range(t0, t1):
        _mm(gemm, hs[t], w_hh_t, hh)                                   # (B, H)
        _rnn_forward_step(relu, xp[t], hh, b_hh, hs[t + 1])


@jit
def _rnn_backward_steps(gemm, relu, t0, t1, dy, dh_in, dh_mm, hs, dpre, w_hh):
    dh = dh_in
    for t in range(t1 - 1, t0 - 1, -1):
        _rnn_backward_step(relu, dy[t], dh, hs[t + 1], dpre[t])
        if t > 0:
            _mm(gemm, dpre[t], w_hh, dh_mm)                            # (B, H)
            dh = dh_mm
