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

Arguments: a loop runs the steps of a :class:`Span`; the layer's recurrent weights and
options are one cell tuple of :mod:`charrnn.kernels.cells` (:class:`LstmCell`, ...);
the forward's kept activations one ``*Saved``, the backward's gradients one ``*Grads``,
the per-step scratch one ``*Scratch``.  Dimension letters: B batch, T time, H hidden,
I layer input, G gates; arrays are time-major (T, B, .).

Backward loops take ``dh_in`` (B, H), the gradient reaching h_{t1-1} through the
recurrence from the chunk after, and leave the one for the chunk before in ``dh_mm``
(when the chunk does not start at step 0 of the sequence).  Their arrays may be views
that start at step ``toff`` of the sequence (the chunks of a layer that recomputes its
gates in backward, :mod:`charrnn.model.cells`); t is then relative to the view and step
t + toff of the sequence has no step before it when t + toff == 0.  They write the
pre-activation gradients over the gate activations in ``saved.xp`` (the GRU: and into
``grads.dhh``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange

from .cells import (GruDpre, GruOut, LstmCarry, _gather_rows, _gru_backward_step,
                    _gru_forward_step, _lstm_backward_step, _lstm_forward_step,
                    _rnn_backward_step, _rnn_forward_step)
from .jit import jit, pjit
from .modes import GruStep, Inputs
from .packed import _mm_bias
from .packed import _mm_serial as _mm


class Span(NamedTuple):
    """Steps t0..t1-1 of a time loop; its arrays start at step ``toff`` of the sequence
    (read by the backward loops only)."""

    t0: int
    t1: int
    toff: int


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


class LstmSaved(NamedTuple):
    """What the LSTM forward loop keeps for backward."""

    xp: np.ndarray        # (T, B, 4H) projection in, gates i, f, g, o out (d(pre) in backward)
    hs: np.ndarray        # (T+1, B, H) h_0 .. h_T
    cs: np.ndarray        # (T+1, B, H) c_0 .. c_T


class LstmGrads(NamedTuple):
    """The gradients of the LSTM backward loop."""

    dy: np.ndarray        # (T, B, H) reaching h_t from above (next layer or head)
    dh_in: np.ndarray     # (B, H) reaching h_{t1-1} from the chunk after
    dh_mm: np.ndarray     # (B, H) d(pre)_t W_hh, for the step before
    dc: np.ndarray        # (B, H) dL/dc, carried backwards
    dpeep: np.ndarray     # (B, 3H) peephole gradients, accumulated per row


class LstmScratch(NamedTuple):
    hh: np.ndarray        # (B, 4H) h_{t-1} W_hh^T, then the pre-activations
    tc: np.ndarray        # (B, H) tanh(c_t)


class GruSaved(NamedTuple):
    """What the GRU forward loop keeps for backward."""

    xp: np.ndarray        # (T, B, 3H) projection in (d(pre) w.r.t. it in backward)
    hs: np.ndarray        # (T+1, B, H) h_0 .. h_T
    gates: np.ndarray     # (T, B, 3H) r, z, n
    aux: np.ndarray       # (T, B, H) W_hn h_{t-1} + b_hn (after), r * h_{t-1} (before)


class GruGrads(NamedTuple):
    """The gradients of the GRU backward loop."""

    dy: np.ndarray        # (T, B, H) reaching h_t from above
    dh_in: np.ndarray     # (B, H) reaching h_{t1-1} from the chunk after
    dh_mm: np.ndarray     # (B, H) d(pre)_t W_hh, for the step before
    dh_dir: np.ndarray    # (B, H) reaching h_{t-1} outside the recurrent product
    dhh: np.ndarray       # (T, B, 3H) d(recurrent product)


class GruScratch(NamedTuple):
    """Per-step scratch; reset "after" reads ``hh`` only (the others: stand-ins)."""

    hh: np.ndarray        # (B, 3H) h_{t-1} W_hh^T (after); (B, 2H) h_{t-1} W_hrz^T (before)
    hn: np.ndarray        # (B, H) (r * h_{t-1}) W_hn^T (before)
    drh: np.ndarray       # (B, H) dL/d(r * h_{t-1}) (before)


class RnnSaved(NamedTuple):
    """What the Elman RNN forward loop keeps for backward."""

    xp: np.ndarray        # (T, B, H) projection in (d(pre) in backward)
    hs: np.ndarray        # (T+1, B, H) h_0 .. h_T


class RnnGrads(NamedTuple):
    """The gradients of the Elman RNN backward loop."""

    dy: np.ndarray        # (T, B, H) reaching h_t from above
    dh_in: np.ndarray     # (B, H) reaching h_{t1-1} from the chunk after
    dh_mm: np.ndarray     # (B, H) d(pre)_t W_hh, for the step before


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
def _lstm_forward_rows(r0, r1, span, src, cell, saved, scratch):
    r = slice(r0, r1)
    xp, hs, cs = saved
    hh, tc = scratch
    for t in range(span.t0, span.t1):
        _project(src, t, r, xp)                                         # (b, 4H)
        _mm(hs[t][r], cell.wp_f, hh[r])                                # (b, 4H)
        _lstm_forward_step(cell, xp[t][r], hh[r], cs[t][r], hs[t + 1][r], cs[t + 1][r],
                           xp[t][r], tc[r])


@pjit
def _lstm_forward_steps(nth, span, src, cell, saved, scratch):
    B = saved.hs.shape[1]
    for i in prange(nth):
        _lstm_forward_rows(B * i // nth, B * (i + 1) // nth, span, src, cell, saved, scratch)


@jit
def _lstm_backward_rows(r0, r1, span, dxo, cell, saved, grads, scratch):
    r = slice(r0, r1)
    dpre, cs = saved.xp, saved.cs                   # gates in, their gradients out
    carry = LstmCarry(grads.dc[r], grads.dpeep[r])
    dh = grads.dh_in[r]
    for t in range(span.t1 - 1, span.t0 - 1, -1):
        _lstm_backward_step(cell, grads.dy[t][r], dh, dpre[t][r], cs[t][r], cs[t + 1][r],
                            scratch.tc[r], carry)
        if _step_grads_out(t, span.toff, r, dpre, dpre, dxo, cell.wp_b, grads.dh_mm):
            dh = grads.dh_mm[r]


@pjit
def _lstm_backward_steps(nth, span, dxo, cell, saved, grads, scratch):
    B = saved.hs.shape[1]
    for i in prange(nth):
        _lstm_backward_rows(B * i // nth, B * (i + 1) // nth, span, dxo, cell, saved, grads,
                            scratch)


# ---------------------------------------------------------------- GRU

@jit
def _gru_forward_rows(r0, r1, span, src, cell, saved, scratch):
    """after: scratch.hh (B, 3H); before: scratch.hh (B, 2H) for r, z and scratch.hn
    (B, H) for n."""
    r = slice(r0, r1)
    xp, hs, gates, aux = saved
    hh, hn = scratch.hh, scratch.hn
    for t in range(span.t0, span.t1):
        _project(src, t, r, xp)                                         # (b, 3H)
        out = GruOut(hs[t + 1][r], gates[t][r], aux[t][r])
        if not cell.before:
            _mm(hs[t][r], cell.wp_f, hh[r])                            # (b, 3H)
            _gru_forward_step(GruStep.AFTER, xp[t][r], hh[r], cell.b_hh, hs[t][r], out)
        else:
            _mm(hs[t][r], cell.wp_f, hh[r])                            # (b, 2H)
            _gru_forward_step(GruStep.BEFORE_RZ, xp[t][r], hh[r], cell.b_hh, hs[t][r], out)
            _mm(aux[t][r], cell.wp_n, hn[r])                           # (b, H)
            _gru_forward_step(GruStep.BEFORE_N, xp[t][r], hn[r], cell.b_hh, hs[t][r], out)


@pjit
def _gru_forward_steps(nth, span, src, cell, saved, scratch):
    B = saved.hs.shape[1]
    for i in prange(nth):
        _gru_forward_rows(B * i // nth, B * (i + 1) // nth, span, src, cell, saved, scratch)


@jit
def _gru_backward_rows(r0, r1, span, dxo, cell, saved, grads, scratch):
    dxp, hs, gates, aux = saved                     # dxp: over the projection
    dy, dh_dir, dhh, dh_mm, wp_b = grads.dy, grads.dh_dir, grads.dhh, grads.dh_mm, cell.wp_b
    drh = scratch.drh
    H = hs.shape[2]
    r = slice(r0, r1)
    dh = grads.dh_in[r]
    for t in range(span.t1 - 1, span.t0 - 1, -1):
        dpre = GruDpre(dxp[t][r], dhh[t][r])
        if not cell.before:
            _gru_backward_step(GruStep.AFTER, dy[t][r], dh, dh_dir[r], gates[t][r], aux[t][r],
                               hs[t][r], dpre)
            if _step_grads_out(t, span.toff, r, dxp, dhh, dxo, wp_b, dh_mm):
                dh = dh_mm[r]
        else:
            _gru_backward_step(GruStep.BEFORE_RZ, dy[t][r], dh, dh_dir[r], gates[t][r],
                               aux[t][r], hs[t][r], dpre)
            _mm(dhh[t][r, 2 * H:], wp_b[:, 2 * H:], drh[r])            # (b, H)
            _gru_backward_step(GruStep.BEFORE_N, dy[t][r], drh[r], dh_dir[r], gates[t][r],
                               aux[t][r], hs[t][r], dpre)
            if dxo.dense:
                _mm(dxp[t][r], dxo.wp_ihb, dxo.dx[t][r])                       # (b, I)
            if t + span.toff > 0:
                _mm(dhh[t][r, :2 * H], wp_b[:, :2 * H], dh_mm[r])      # (b, H)
                dh = dh_mm[r]


@pjit
def _gru_backward_steps(nth, span, dxo, cell, saved, grads, scratch):
    B = saved.hs.shape[1]
    for i in prange(nth):
        _gru_backward_rows(B * i // nth, B * (i + 1) // nth, span, dxo, cell, saved, grads,
                           scratch)


# ---------------------------------------------------------------- Elman RNN

@jit
def _rnn_forward_rows(r0, r1, span, src, cell, saved, hh):
    """hh (B, H): scratch, h_{t-1} W_hh^T."""
    r = slice(r0, r1)
    xp, hs = saved
    for t in range(span.t0, span.t1):
        _project(src, t, r, xp)                                         # (b, H)
        _mm(hs[t][r], cell.wp_f, hh[r])                                # (b, H)
        _rnn_forward_step(cell.relu, xp[t][r], hh[r], cell.b_hh, hs[t + 1][r])


@pjit
def _rnn_forward_steps(nth, span, src, cell, saved, hh):
    B = saved.hs.shape[1]
    for i in prange(nth):
        _rnn_forward_rows(B * i // nth, B * (i + 1) // nth, span, src, cell, saved, hh)


@jit
def _rnn_backward_rows(r0, r1, span, dxo, cell, saved, grads):
    r = slice(r0, r1)
    dpre, hs = saved                                # dpre: over the projection
    dh = grads.dh_in[r]
    for t in range(span.t1 - 1, span.t0 - 1, -1):
        _rnn_backward_step(cell.relu, grads.dy[t][r], dh, hs[t + 1][r], dpre[t][r])
        if _step_grads_out(t, span.toff, r, dpre, dpre, dxo, cell.wp_b, grads.dh_mm):
            dh = grads.dh_mm[r]


@pjit
def _rnn_backward_steps(nth, span, dxo, cell, saved, grads):
    B = saved.hs.shape[1]
    for i in prange(nth):
        _rnn_backward_rows(B * i // nth, B * (i + 1) // nth, span, dxo, cell, saved, grads)


# ---------------------------------------------------------------- recomputed gates
# (charrnn.model.cells.Layer.recompute, ``--low-memory``): every h_{t-1} (and c_{t-1}) of a
# chunk is kept, so the steps of a block are independent rows; the forward step kernels
# run over ranges of those rows in numba's threads.  Their state outputs (h, c) go to
# scratch.

@pjit
def _lstm_gates_rows(nth, cell, xp, hh, c_prev, h, c, tc):
    """xp (R, 4H): projections in, gate activations out; hh (R, 4H) h_{t-1} W_hh^T."""
    R = xp.shape[0]
    for i in prange(nth):
        r0 = R * i // nth
        r1 = R * (i + 1) // nth
        _lstm_forward_step(cell, xp[r0:r1], hh[r0:r1], c_prev[r0:r1], h[r0:r1], c[r0:r1],
                           xp[r0:r1], tc[r0:r1])


@pjit
def _gru_gates_rows(nth, mode, b_hh, xp, hh, h_prev, out):
    """One call of the GRU forward step kernel (``mode`` as there) on R rows; ``out`` a
    :class:`~charrnn.kernels.cells.GruOut` of R rows."""
    R = xp.shape[0]
    for i in prange(nth):
        r0 = R * i // nth
        r1 = R * (i + 1) // nth
        _gru_forward_step(mode, xp[r0:r1], hh[r0:r1], b_hh, h_prev[r0:r1],
                          GruOut(out.h[r0:r1], out.gates[r0:r1], out.aux[r0:r1]))
