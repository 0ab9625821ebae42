"""Time loops: a chunk of steps of one layer in ONE kernel call, products included.

Each step is the recurrent product, made by the packed-weight kernel of
:mod:`charrnn.kernels.packed` from the weights the layer packed at the start of the pass,
and the fused step kernel of :mod:`charrnn.kernels.cells`, with no interpreter between
the steps.

Threads split the batch.  The recurrence of one sequence never reads another's, so
``*_rows`` runs the steps of rows b0..b1-1 alone, and ``*_steps`` with ``nth`` > 1 runs
``nth`` row ranges at once in numba's threads, each thread through all the steps of the
chunk with no barrier between steps.  Each thread streams all of W_hh every step
(from its core's cache), which the packed kernel does at full speed for M = B/nth rows.
The numbers do not depend on ``nth``: every product element is the same chain of fused
multiply-adds and the step kernels are per row.

Packed weights (:mod:`charrnn.kernels.packed`): ``wp_f`` is W_hh^T (H, G*H) packed, for
h_{t-1} W_hh^T; ``wp_b`` is W_hh (G*H, H) packed, for d(pre)_t W_hh; ``wp_ih`` and
``wp_ihb`` are W_ih^T and W_ih packed, for the input projection and the input gradient.
The GRU with reset "before" packs the r, z columns (``wp_f``) and the n columns
(``wp_n``) of W_hh^T apart, and uses row ranges of ``wp_b`` (a slice along K of a packed
matrix is the packed slice).

Input of a forward loop (``src``, a :class:`StepInput`): ``Inputs.DENSE``, dense x
(T, B, I): each step computes its rows of x_t W_ih^T + b_ih into xp[t] first;
``Inputs.ONEHOT``: each step gathers rows of the transposed copy of W_ih (``w_t``, with
``b_ih``) by token id (``idx`` (T, B)); ``Inputs.PROJECTED``: xp is ready.  A backward
loop whose ``dxo`` (an :class:`InputGrad`) is ``dense`` computes dx_t = d(pre)_t W_ih
for its rows after each step's gradients.

Dimension letters: B batch, H hidden, G gates; arrays are time-major (T, B, .).
Backward kernels take ``dh_in`` (B, H), the gradient reaching h_{t1-1} through the
recurrence from the chunk after, and leave the one for the chunk before in ``dh_mm``
(when the chunk does not start at step 0 of the sequence).  Their arrays may be views
that start at step ``toff`` of the sequence (the chunks of a layer that recomputes its
gates in backward, :mod:`charrnn.model.cells`); t is then relative to the view and step
t + toff of the sequence has no step before it when t + toff == 0.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange

from .cells import (_gather_rows, _gru_backward_step, _gru_forward_step, _lstm_backward_step,
                    _lstm_forward_step, _rnn_backward_step, _rnn_forward_step)
from .jit import jit, pjit
from .modes import GruStep, Inputs
from .packed import _mm_bias
from .packed import _mm_serial as _mm


class StepInput(NamedTuple):
    """Where a forward time loop's input projection comes from.  The arrays a mode does
    not read are stand-ins of the same types."""

    mode: Inputs          # PROJECTED, DENSE or ONEHOT
    x: np.ndarray         # (T, B, I) dense input
    wp_ih: np.ndarray     # W_ih^T packed (DENSE)
    b_ih: np.ndarray      # (G*H,)
    idx: np.ndarray       # (T, B) token ids (ONEHOT)
    w_t: np.ndarray       # (V, G*H) W_ih^T (ONEHOT)


class InputGrad(NamedTuple):
    """Whether a backward time loop makes dx_t = d(pre)_t W_ih for its rows, and where."""

    dense: bool
    dx: np.ndarray        # (T, B, I)
    wp_ihb: np.ndarray    # W_ih packed


@jit
def _project(src, t, r, xp):
    """xp[t] rows r of the input projection (module docstring, StepInput)."""
    if src.mode == Inputs.DENSE:
        _mm_bias(src.x[t][r], src.wp_ih, src.b_ih, xp[t][r])
    elif src.mode == Inputs.ONEHOT:
        _gather_rows(src.w_t, src.idx[t][r], src.b_ih, xp[t][r])

@jit
def _step_grads_out(t, toff, r, dxp, dhh, dxo, wp_b, dh_mm):
    """After the gate gradients of step t: dx_t = dxp_t W_ih for rows r (a dense input,
    ``dxo``) and, unless step t is the sequence's first, dh_mm = dhh_t W_hh (wp_b) for
    the step before.  Returns whether dh_mm was written.  (dxp and dhh, the gradients
    w.r.t. the input projection and the recurrent product, are one array but in the
    GRU.)"""
    if dxo.dense:
        _mm(dxp[t][r], dxo.wp_ihb, dxo.dx[t][r])                      # (b, I)
    if t + toff > 0:
        _mm(dhh[t][r], wp_b, dh_mm[r])                                 # (b, H)
        return True
    return False


# ---------------------------------------------------------------- LSTM


@jit
def _lstm_forward_rows(r0, r1, t0, t1, src, xp, wp_f, b_hh, peep,
                       use_peep, hs, cs, hh, tc):
    r = slice(r0, r1)
    for t in range(t0, t1):
        _project(src, t, r, xp)                                         # (b, 4H)
        _mm(hs[t][r], wp_f, hh[r])                                     # (b, 4H)
        _lstm_forward_step(xp[t][r], hh[r], b_hh, peep, use_peep, cs[t][r], hs[t + 1][r],
                           cs[t + 1][r], xp[t][r], tc[r])


@pjit
def _lstm_forward_steps(nth, t0, t1, src, xp, wp_f, b_hh, peep,
                        use_peep, hs, cs, hh, tc):
    B = hs.shape[1]
    for i in prange(nth):
        _lstm_forward_rows(B * i // nth, B * (i + 1) // nth, t0, t1, src, xp, wp_f, b_hh, peep,
                           use_peep, hs, cs, hh, tc)


@jit
def _lstm_backward_rows(r0, r1, t0, t1, toff, dxo, dy, dh_in, dh_mm, dc, dpre,
                        cs, tc, wp_b, peep, use_peep, dpeep):
    r = slice(r0, r1)
    dh = dh_in[r]
    for t in range(t1 - 1, t0 - 1, -1):
        _lstm_backward_step(dy[t][r], dh, dc[r], dpre[t][r], cs[t][r], cs[t + 1][r], tc[r],
                            peep, use_peep, dpeep[r])
        if _step_grads_out(t, toff, r, dpre, dpre, dxo, wp_b, dh_mm):
            dh = dh_mm[r]


@pjit
def _lstm_backward_steps(nth, t0, t1, toff, dxo, dy, dh_in, dh_mm, dc, dpre, cs,
                         tc, wp_b, peep, use_peep, dpeep):
    B = dc.shape[0]
    for i in prange(nth):
        _lstm_backward_rows(B * i // nth, B * (i + 1) // nth, t0, t1, toff, dxo,
                            dy, dh_in, dh_mm, dc, dpre, cs, tc, wp_b, peep, use_peep, dpeep)


# ---------------------------------------------------------------- GRU

@jit
def _gru_forward_rows(r0, r1, before, t0, t1, src, xp, wp_f, wp_n, b_hh, hs, gates, aux, hh,
                      hn):
    """after: hh (B, 3H), hn and wp_n unused; before: hh (B, 2H) for r, z and hn (B, H)
    for n."""
    r = slice(r0, r1)
    for t in range(t0, t1):
        _project(src, t, r, xp)                                         # (b, 3H)
        if not before:
            _mm(hs[t][r], wp_f, hh[r])                                 # (b, 3H)
            _gru_forward_step(GruStep.AFTER, xp[t][r], hh[r], b_hh, hs[t][r], hs[t + 1][r],
                              gates[t][r], aux[t][r])
        else:
            _mm(hs[t][r], wp_f, hh[r])                                 # (b, 2H)
            _gru_forward_step(GruStep.BEFORE_RZ, xp[t][r], hh[r], b_hh, hs[t][r], hs[t + 1][r],
                              gates[t][r], aux[t][r])
            _mm(aux[t][r], wp_n, hn[r])                                # (b, H)
            _gru_forward_step(GruStep.BEFORE_N, xp[t][r], hn[r], b_hh, hs[t][r], hs[t + 1][r],
                              gates[t][r], aux[t][r])


@pjit
def _gru_forward_steps(nth, before, t0, t1, src, xp, wp_f, wp_n,
                       b_hh, hs, gates, aux, hh, hn):
    B = hs.shape[1]
    for i in prange(nth):
        _gru_forward_rows(B * i // nth, B * (i + 1) // nth, before, t0, t1, src, xp, wp_f, wp_n,
                          b_hh, hs, gates, aux, hh, hn)


@jit
def _gru_backward_rows(r0, r1, before, t0, t1, toff, dxo, dy, dh_in, dh_mm,
                       dh_dir, gates, aux, hs, dxp, dhh, wp_b, drh):
    H = hs.shape[2]
    r = slice(r0, r1)
    dh = dh_in[r]
    for t in range(t1 - 1, t0 - 1, -1):
        if not before:
            _gru_backward_step(GruStep.AFTER, dy[t][r], dh, dh_dir[r], gates[t][r], aux[t][r],
                               hs[t][r],
                               dxp[t][r], dhh[t][r])
            if _step_grads_out(t, toff, r, dxp, dhh, dxo, wp_b, dh_mm):
                dh = dh_mm[r]
        else:
            _gru_backward_step(GruStep.BEFORE_RZ, dy[t][r], dh, dh_dir[r], gates[t][r], aux[t][r],
                               hs[t][r],
                               dxp[t][r], dhh[t][r])
            _mm(dhh[t][r, 2 * H:], wp_b[:, 2 * H:], drh[r])            # (b, H)
            _gru_backward_step(GruStep.BEFORE_N, dy[t][r], drh[r], dh_dir[r], gates[t][r],
                               aux[t][r],
                               hs[t][r], dxp[t][r], dhh[t][r])
            if dxo.dense:
                _mm(dxp[t][r], dxo.wp_ihb, dxo.dx[t][r])                       # (b, I)
            if t + toff > 0:
                _mm(dhh[t][r, :2 * H], wp_b[:, :2 * H], dh_mm[r])      # (b, H)
                dh = dh_mm[r]


@pjit
def _gru_backward_steps(nth, before, t0, t1, toff, dxo, dy, dh_in, dh_mm,
                        dh_dir, gates, aux, hs, dxp, dhh, wp_b, drh):
    B = hs.shape[1]
    for i in prange(nth):
        _gru_backward_rows(B * i // nth, B * (i + 1) // nth, before, t0, t1, toff, dxo, dy, dh_in,
                           dh_mm, dh_dir, gates, aux, hs, dxp, dhh, wp_b,
                           drh)


# ---------------------------------------------------------------- Elman RNN

@jit
def _rnn_forward_rows(r0, r1, relu, t0, t1, src, xp, wp_f, b_hh, hs,
                      hh):
    r = slice(r0, r1)
    for t in range(t0, t1):
        _project(src, t, r, xp)                                         # (b, H)
        _mm(hs[t][r], wp_f, hh[r])                                     # (b, H)
        _rnn_forward_step(relu, xp[t][r], hh[r], b_hh, hs[t + 1][r])


@pjit
def _rnn_forward_steps(nth, relu, t0, t1, src, xp, wp_f, b_hh, hs,
                       hh):
    B = hs.shape[1]
    for i in prange(nth):
        _rnn_forward_rows(B * i // nth, B * (i + 1) // nth, relu, t0, t1, src, xp, wp_f, b_hh, hs,
                          hh)


@jit
def _rnn_backward_rows(r0, r1, relu, t0, t1, toff, dxo, dy, dh_in, dh_mm, hs,
                       dpre, wp_b):
    r = slice(r0, r1)
    dh = dh_in[r]
    for t in range(t1 - 1, t0 - 1, -1):
        _rnn_backward_step(relu, dy[t][r], dh, hs[t + 1][r], dpre[t][r])
        if _step_grads_out(t, toff, r, dpre, dpre, dxo, wp_b, dh_mm):
            dh = dh_mm[r]


@pjit
def _rnn_backward_steps(nth, relu, t0, t1, toff, dxo, dy, dh_in, dh_mm, hs,
                        dpre, wp_b):
    B = hs.shape[1]
    for i in prange(nth):
        _rnn_backward_rows(B * i // nth, B * (i + 1) // nth, relu, t0, t1, toff, dxo, dy, dh_in,
                           dh_mm, hs, dpre, wp_b)


# ---------------------------------------------------------------- recomputed gates
# (charrnn.model.cells.Layer.recompute, ``--low-memory``): every h_{t-1} (and c_{t-1}) of a
# chunk is kept, so the steps of a block are independent rows; the forward step kernels
# run over ranges of those rows in numba's threads.  Their state outputs (h, c) go to
# scratch.

@pjit
def _lstm_gates_rows(nth, xp, hh, b_hh, peep, use_peep, c_prev, h, c, tc):
    """xp (R, 4H): projections in, gate activations out; hh (R, 4H) h_{t-1} W_hh^T."""
    R = xp.shape[0]
    for i in prange(nth):
        r0 = R * i // nth
        r1 = R * (i + 1) // nth
        _lstm_forward_step(xp[r0:r1], hh[r0:r1], b_hh, peep, use_peep, c_prev[r0:r1],
                           h[r0:r1], c[r0:r1], xp[r0:r1], tc[r0:r1])


@pjit
def _gru_gates_rows(nth, mode, xp, hh, b_hh, h_prev, h, gates, aux):
    """One call of the GRU forward step kernel (``mode`` as there) on R rows."""
    R = xp.shape[0]
    for i in prange(nth):
        r0 = R * i // nth
        r1 = R * (i + 1) // nth
        _gru_forward_step(mode, xp[r0:r1], hh[r0:r1], b_hh, h_prev[r0:r1], h[r0:r1],
                          gates[r0:r1], aux[r0:r1])
