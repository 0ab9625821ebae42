"""The gate equations of each cell and the log-softmax, ONCE: jitted per-row helpers
that the training kernels (:mod:`charrnn.kernels.cells`, a block of batch rows per call)
and the generation loop (:mod:`charrnn.kernels.sample`, one stream at a time) both
inline.

Dimension letters: H hidden, G gates, V vocab.  Every helper works on ONE row: 1-D
arrays, ``a`` (G*H,) the recurrent product h_{t-1} W_hh^T on entry and the
pre-activations on exit (scratch), ``x`` (G*H,) the input projection x_t W_ih^T + b_ih,
``b_hh`` (G*H,), ``g`` (G*H,) the gate activations out.  Outputs may be the inputs they
replace (the sampler updates h and c in place): every element is read before it is
written.  The nonlinearities run through activations.sigmoid_into/tanh_into on
contiguous slices (one simple loop each, which LLVM vectorises).
"""
from __future__ import annotations

import numpy as np

from .activations import exp_into, sigmoid_into, tanh_into
from .jit import jit

# ---------------------------------------------------------------- LSTM (gates i, f, g, o)


@jit
def lstm_row(a, x, b_hh, peep, use_peep, c_prev, c, g, tc, h):
    """c = f * c_prev + i * g~ and h = o * tanh(c), with peepholes ``peep`` (3, H) when
    ``use_peep``; ``tc`` (H,) receives tanh(c).  ``g`` may be ``x`` itself, ``c`` may
    be ``c_prev``, and ``tc`` may be ``g[:H]`` (i is not read after c)."""
    H = c.shape[0]
    for j in range(4 * H):
        a[j] += x[j] + b_hh[j]
    if use_peep:
        for j in range(H):
            a[j] += peep[0, j] * c_prev[j]
            a[H + j] += peep[1, j] * c_prev[j]
    sigmoid_into(a[:2 * H], g[:2 * H])
    tanh_into(a[2 * H:3 * H], g[2 * H:3 * H])
    for j in range(H):
        c[j] = g[H + j] * c_prev[j] + g[j] * g[2 * H + j]
    if use_peep:
        for j in range(H):
            a[3 * H + j] += peep[2, j] * c[j]
    sigmoid_into(a[3 * H:], g[3 * H:])
    tanh_into(c, tc)
    for j in range(H):
        h[j] = g[3 * H + j] * tc[j]


# ---------------------------------------------------------------- GRU (gates r, z, n)
# reset "after" (PyTorch): gru_rz_row, gru_n_after_row, gru_h_row;
# reset "before" (Cho 2014): gru_rz_row, gru_reset_row, (the product (r * h) W_hn^T),
# gru_n_before_row, gru_h_row.


@jit
def gru_rz_row(a, x, b_hh, g):
    """r, z = sigmoid(x + a + b_hh) over the first 2H of a (3H,) or (2H,) row."""
    H2 = 2 * (g.shape[0] // 3)
    for j in range(H2):
        a[j] += x[j] + b_hh[j]
    sigmoid_into(a[:H2], g[:H2])


@jit
def gru_reset_row(g, h_prev, rh):
    """rh = r * h_prev, the input of the "before" product W_hn (r * h)."""
    for j in range(rh.shape[0]):
        rh[j] = g[j] * h_prev[j]


@jit
def gru_n_after_row(a, x, b_hh, g, aux):
    """n = tanh(x_n + r * (W_hn h + b_hn)), a[2H:] = W_hn h on entry; aux (H,) keeps
    W_hn h + b_hn for backward."""
    H = aux.shape[0]
    for j in range(H):
        an = a[2 * H + j] + b_hh[2 * H + j]
        aux[j] = an
        a[2 * H + j] = x[2 * H + j] + g[j] * an
    tanh_into(a[2 * H:3 * H], g[2 * H:])


@jit
def gru_n_before_row(hn, x, b_hh, g):
    """n = tanh(x_n + W_hn (r * h) + b_hn), hn (H,) = W_hn (r * h) on entry."""
    H = hn.shape[0]
    for j in range(H):
        hn[j] += x[2 * H + j] + b_hh[2 * H + j]
    tanh_into(hn, g[2 * H:])


@jit
def gru_h_row(g, h_prev, h):
    """h = (1 - z) * n + z * h_prev (h may be h_prev)."""
    one = g.dtype.type(1)
    H = h.shape[0]
    for j in range(H):
        z = g[H + j]
        h[j] = (one - z) * g[2 * H + j] + z * h_prev[j]


# ---------------------------------------------------------------- Elman RNN


@jit
def rnn_row(relu, a, x, b_hh, h):
    """h = relu or tanh of x + a + b_hh."""
    zero = a.dtype.type(0)
    H = h.shape[0]
    for j in range(H):
        a[j] += x[j] + b_hh[j]
    if relu:
        for j in range(H):
            h[j] = a[j] if a[j] > zero else zero
    else:
        tanh_into(a, h)


# ---------------------------------------------------------------- log-softmax


@jit
def argmax_row(z):
    """The first index of the largest element of z (V,)."""
    best = 0
    m = z[0]
    for v in range(1, z.shape[0]):
        if z[v] > m:
            m = z[v]
            best = v
    return best


@jit
def log_sum_exp_shifted(z, m):
    """log(sum_v exp(z[v] - m)) in float64 (m: the largest z, for range)."""
    tot = 0.0
    for v in range(z.shape[0]):
        tot += np.exp(np.float64(z[v]) - m)
    return np.log(tot)


@jit
def nll_row(z, tgt, e):
    """-log softmax(z)[tgt] (float64) of one row of logits z (V,); e (V,) receives
    exp(z - max z) (it may be z itself).  Returns (nll, s), s the sum of e (float64)."""
    m = z[argmax_row(z)]
    picked = z[tgt] - m
    s = exp_into(z, m, e)
    return np.log(s) - picked, s


@jit
def log_softmax_at(z, i, m, lse):
    """log softmax(z)[i] in float64, given m = max z and lse = log_sum_exp_shifted(z, m)."""
    return (np.float64(z[i]) - m) - lse


__all__ = ["argmax_row", "gru_h_row", "gru_n_after_row", "gru_n_before_row", "gru_reset_row",
           "gru_rz_row", "log_softmax_at", "log_sum_exp_shifted", "lstm_row", "nll_row",
           "rnn_row"]
