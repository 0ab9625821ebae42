"""Fused per-time-step kernels of the recurrent cells, plus the gather/scatter and
softmax cross-entropy kernels of the model's input and head.

Dimension letters: B batch, T time, H hidden, V vocab, E embedding, G gates, N = T*B.

Every step kernel does the element-wise work of ONE time step for a block of batch rows
(a loop over them): the recurrent product comes before it, from the time loops of
:mod:`charrnn.kernels.steps`, which also split the batch between threads.  Options
(peepholes, GRU reset mode, ReLU) are runtime arguments, so each kernel compiles once per
dtype (float32, float64).

Conventions of the step kernels:

* ``xp`` (B, G*H): input projection ``x W_ih^T + b_ih`` of this step, computed for all T
  steps at once beforehand; ``hh`` (B, G*H): the recurrent product ``h_{t-1} W_hh^T``;
  ``b_hh`` (G*H,) is added inside the kernel (the GRU needs it apart from ``b_ih``).
* Backward kernels take ``dy`` (B, H), the gradient reaching ``h_t`` from above (the next
  layer or the head), and ``dh_mm`` (B, H), the gradient reaching ``h_t`` through the
  recurrent product of step t+1 (``d(pre)_{t+1} W_hh``); they write the gradients of the
  pre-activations ``dxp`` (w.r.t. ``xp``) and, where it differs, ``dhh`` (w.r.t. ``hh``).
* ``hh`` is scratch: the forward kernels overwrite it with pre-activations.
* ``one`` is never a literal: ``a.dtype.type(1)`` keeps float32 arithmetic in float32.
* A layer's recurrent weights and options travel as one :class:`LstmCell`,
  :class:`GruCell` or :class:`RnnCell` (the step kernels read the bias and the options,
  the time loops of :mod:`charrnn.kernels.steps` the packed weights too).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange

from .activations import tanh_into
from .gates import (gru_h_row, gru_n_after_row, gru_n_before_row, gru_reset_row,
                    gru_rz_row, lstm_row, nll_row, rnn_row)
from .jit import jit, pjit
from .modes import GruStep


class LstmCell(NamedTuple):
    """An LSTM layer's recurrent weights and options, as the kernels read them."""

    wp_f: np.ndarray      # W_hh^T (H, 4H) packed: h_{t-1} W_hh^T (forward loops)
    wp_b: np.ndarray      # W_hh (4H, H) packed: d(pre)_t W_hh (backward loops)
    b_hh: np.ndarray      # (4H,)
    peep: np.ndarray      # (3, H) p_i, p_f, p_o; a (3, 1) stand-in without peepholes
    use_peep: bool


class LstmCarry(NamedTuple):
    """What the LSTM backward step carries from one step to the one before (B rows)."""

    dc: np.ndarray        # (B, H) dL/dc_t in, dL/dc_{t-1} out
    dpeep: np.ndarray     # (B, 3H) peephole gradients, accumulated per row


class GruCell(NamedTuple):
    """A GRU layer's recurrent weights and options, as the kernels read them."""

    before: bool          # reset "before" (Cho 2014), else "after" (PyTorch)
    wp_f: np.ndarray      # W_hh^T packed: (H, 3H) after; its r, z columns (H, 2H) before
    wp_n: np.ndarray      # W_hn^T (H, H) packed (before; after: a stand-in)
    wp_b: np.ndarray      # W_hh (3H, H) packed: d(pre)_t W_hh (backward loops)
    b_hh: np.ndarray      # (3H,)


class GruOut(NamedTuple):
    """What a GRU forward step writes (B rows of one step)."""

    h: np.ndarray         # (B, H) h_t
    gates: np.ndarray     # (B, 3H) r, z, n after activation
    aux: np.ndarray       # (B, H) W_hn h_{t-1} + b_hn (after), or r * h_{t-1} (before)


class GruDpre(NamedTuple):
    """The pre-activation gradients a GRU backward step writes (B rows of one step)."""

    dxp: np.ndarray       # (B, 3H) w.r.t. the input projection xp
    dhh: np.ndarray       # (B, 3H) w.r.t. the recurrent product hh


class RnnCell(NamedTuple):
    """An Elman RNN layer's recurrent weights and options, as the kernels read them."""

    relu: bool            # relu, else tanh
    wp_f: np.ndarray      # W_hh^T (H, H) packed (forward loops)
    wp_b: np.ndarray      # W_hh (H, H) packed (backward loops)
    b_hh: np.ndarray      # (H,)

# ---------------------------------------------------------------- LSTM (gates i, f, g, o)
# The forward gate equations are charrnn.kernels.gates' (shared with the sampler); the
# nonlinearities run through activations.sigmoid_into/tanh_into on contiguous row
# slices: one simple loop each, which LLVM vectorises (a single loop body holding all
# five activations and ten arrays stays scalar: 20x slower).  ``hh`` is scratch: it
# receives the pre-activations.


@jit
def _lstm_forward_step(cell, xp, hh, c_prev, h, c, gates, tc):
    """``gates`` may be ``xp`` itself (the layer stores the activations over the
    projection it no longer needs); ``tc`` (B, H) receives tanh(c_t), scratch."""
    for b in prange(c.shape[0]):
        lstm_row(hh[b], xp[b], cell.b_hh, cell.peep, cell.use_peep, c_prev[b], c[b],
                 gates[b], tc[b], h[b])


@jit
def _lstm_backward_step(cell, dy, dh_mm, gd, c_prev, c, tc, carry):
    """``gd`` (B, 4H) holds the gate activations i, f, g, o in and their pre-activation
    gradients out; ``carry`` (:class:`LstmCarry`) dL/dc and the peephole gradients.

    tanh(c_t) is recomputed into the scratch ``tc`` (B, H) instead of being kept from
    the forward pass.  Each row is a few simple loops over (B, H) slices, each updating
    its gate slice in place through one array, which LLVM vectorises (one loop over all
    the arrays stayed scalar: it could not rule out their overlap; measured 16 -> 8 us
    per step at B=25, H=256)."""
    B, H = dy.shape
    peep, dc, dpeep = cell.peep, carry.dc, carry.dpeep
    for b in prange(B):
        tanh_into(c[b], tc[b])
        a = gd[b]
        _lstm_bwd_out(dy[b], dh_mm[b], tc[b], a[3 * H:], dc[b])
        if cell.use_peep:
            _lstm_bwd_peep_out(a[3 * H:], peep[2], c[b], dc[b], dpeep[b, 2 * H:])
        _lstm_bwd_ifg(a, c_prev[b], dc[b])
        if cell.use_peep:
            _lstm_bwd_peep_if(a, peep[0], peep[1], c_prev[b], dc[b], dpeep[b])


@jit
def _lstm_bwd_out(dy, dhm, tc, go, dc):
    """go: o in, d(o pre) out; dc: dL/dc_t from step t+1 in, plus the path through h_t."""
    one = dy.dtype.type(1)
    for j in range(dy.shape[0]):
        dh = dy[j] + dhm[j]
        o = go[j]
        t = tc[j]
        go[j] = dh * t * o * (one - o)
        dc[j] += dh * o * (one - t * t)


@jit
def _lstm_bwd_peep_out(do, p_o, c, dc, dp_o):
    for j in range(do.shape[0]):
        dc[j] += do[j] * p_o[j]
        dp_o[j] += do[j] * c[j]


@jit
def _lstm_bwd_ifg(a, cp, dc):
    """a (4H): i, f, g in, their pre-activation gradients out; dc: dL/dc_t in,
    dL/dc_{t-1} out (without peepholes)."""
    one = a.dtype.type(1)
    H = cp.shape[0]
    for j in range(H):
        i = a[j]
        f = a[H + j]
        g = a[2 * H + j]
        dct = dc[j]
        a[j] = dct * g * i * (one - i)
        a[H + j] = dct * cp[j] * f * (one - f)
        a[2 * H + j] = dct * i * (one - g * g)
        dc[j] = dct * f


@jit
def _lstm_bwd_peep_if(a, p_i, p_f, cp, dc, dp):
    H = cp.shape[0]
    for j in range(H):
        dc[j] += a[j] * p_i[j] + a[H + j] * p_f[j]
        dp[j] += a[j] * cp[j]
        dp[H + j] += a[H + j] * cp[j]


# ---------------------------------------------------------------- GRU (gates r, z, n)
# GruStep.AFTER: reset "after" (PyTorch), one kernel per step, hh = h_{t-1} W_hh^T
#         (B, 3H), aux = W_hn h_{t-1} + b_hn.
# GruStep.BEFORE_RZ: reset "before" (Cho 2014), first half: hh = h_{t-1} W_hrz^T (B, 2H)
#         -> r, z and aux = r * h_{t-1} (the input of the second product).
# GruStep.BEFORE_N: reset "before", second half: hh = aux W_hn^T (B, H) -> n and h_t.


@jit
def _gru_forward_step(mode, xp, hh, b_hh, h_prev, out):
    """``out`` (:class:`GruOut`): h_t, the gates and aux of the step."""
    h, gates, aux = out
    for b in prange(h.shape[0]):
        if mode == GruStep.BEFORE_N:
            gru_n_before_row(hh[b], xp[b], b_hh, gates[b])
        else:
            gru_rz_row(hh[b], xp[b], b_hh, gates[b])
            if mode == GruStep.BEFORE_RZ:
                gru_reset_row(gates[b], h_prev[b], aux[b])
                continue
            gru_n_after_row(hh[b], xp[b], b_hh, gates[b], aux[b])
        gru_h_row(gates[b], h_prev[b], h[b])


@jit
def _gru_backward_step(mode, dy, dh_mm, dh_dir, gates, aux, h_prev, dpre):
    """dh_dir (B, H) carries the gradient reaching h_{t-1} outside the recurrent product;
    ``dpre`` (:class:`GruDpre`) receives the pre-activation gradients.

    GruStep.AFTER: everything for step t.  GruStep.BEFORE_RZ (part A): dn, dz from dh_t;
    then the caller computes d(r*h) = dn_pre W_hn into ``dh_mm`` and calls
    GruStep.BEFORE_N (part B) for dr and the r*h path into h_{t-1} (dy is not read
    there).
    """
    one = dh_mm.dtype.type(1)
    B, H = dh_mm.shape
    dxp, dhh = dpre
    for b in prange(B):
        for j in range(H):
            r = gates[b, j]
            z = gates[b, H + j]
            hp = h_prev[b, j]
            if mode == GruStep.BEFORE_N:
                drh = dh_mm[b, j]
                dr_pre = drh * hp * r * (one - r)
                dxp[b, j] = dr_pre
                dhh[b, j] = dr_pre
                dh_dir[b, j] += drh * r
                continue
            n = gates[b, 2 * H + j]
            dh = dy[b, j] + dh_mm[b, j] + dh_dir[b, j]
            dn_pre = dh * (one - z) * (one - n * n)
            dz_pre = dh * (hp - n) * z * (one - z)
            dxp[b, H + j] = dz_pre
            dhh[b, H + j] = dz_pre
            dxp[b, 2 * H + j] = dn_pre
            dh_dir[b, j] = dh * z
            if mode == GruStep.BEFORE_RZ:
                dhh[b, 2 * H + j] = dn_pre
                continue
            dr_pre = dn_pre * aux[b, j] * r * (one - r)
            dxp[b, j] = dr_pre
            dhh[b, j] = dr_pre
            dhh[b, 2 * H + j] = dn_pre * r


# ---------------------------------------------------------------- Elman RNN


@jit
def _rnn_forward_step(relu, xp, hh, b_hh, h):
    for b in prange(h.shape[0]):
        rnn_row(relu, hh[b], xp[b], b_hh, h[b])


@jit
def _rnn_backward_step(relu, dy, dh_mm, h, dpre):
    zero = dy.dtype.type(0)
    one = dy.dtype.type(1)
    B, H = dy.shape
    for b in prange(B):
        for j in range(H):
            dh = dy[b, j] + dh_mm[b, j]
            v = h[b, j]
            if relu:
                dpre[b, j] = dh if v > zero else zero
            else:
                dpre[b, j] = dh * (one - v * v)


# ---------------------------------------------------------------- input and head


@jit
def _gather_rows(table, idx, bias, out):
    N, C = out.shape
    for n in prange(N):
        row = idx[n]
        for j in range(C):
            out[n, j] = table[row, j] + bias[j]


@pjit
def _scatter_add_rows(nth, idx, src, out):
    """out[idx[n]] += src[n] for every row n.  ``nth`` threads take contiguous column
    ranges (no two write the same element), each adding its rows in order n = 0, 1, ...,
    so the sums are the same for any ``nth``.  (Blocks of 64 columns dealt round-robin
    measured 2-5x slower: LSTM 2x128, one-hot W_ih, N = 2500: 0.70 ms, now 0.16 ms.)"""
    N, C = src.shape
    for i in prange(nth):
        lo = C * i // nth
        hi = C * (i + 1) // nth
        for n in range(N):
            o = out[idx[n], lo:hi]
            s = src[n, lo:hi]
            for j in range(hi - lo):
                o[j] += s[j]


#: fewest columns per thread of :func:`_scatter_add_rows` (narrower: one thread is faster)
SCATTER_COLUMNS = 1024


def scatter_threads(C: int, threads: int) -> int:
    """Threads for a scatter of C columns."""
    return max(1, min(threads, C // SCATTER_COLUMNS))


@pjit
def _softmax_xent(logits, targets, scale, want_grad, dlogits, nll):
    """nll[n] = logsumexp(logits[n]) - logits[n, targets[n]] (float64);
    if want_grad: dlogits[n] = scale * (softmax(logits[n]) - onehot(targets[n])).
    dlogits may be logits itself (each row is read before it is written)."""
    N, V = logits.shape
    for n in prange(N):
        tgt = targets[n]
        nll[n], s = nll_row(logits[n], tgt, dlogits[n])   # dlogits: scratch without want_grad
        if want_grad:
            inv = dlogits.dtype.type(scale / s)
            for v in range(V):
                dlogits[n, v] = dlogits[n, v] * inv
            dlogits[n, tgt] -= scale
