"""The generation loop: one jitted call runs many steps of the model for N streams and
draws each next character (or takes it from a forced sequence), with no Python per step.

Dimension letters: N streams, L layers, H hidden, G gates, V vocab, S steps of one call.

Weights, packed once by :func:`charrnn.sampling.pack_weights` (row-major, every row
contiguous)::

    table0  (V, G*H)     layer 0's input projection of every symbol, b_ih_l0 included
                         (one-hot: W_ih_l0^T + b; embedding: emb @ W_ih_l0^T + b)
    w_ih    (L, G*H, H)  input weights of layers 1..L-1 (slot 0 unused)
    b_ih    (L, G*H)     their biases (slot 0 unused)
    w_hh    (L, G*H, H)  recurrent weights;  b_hh (L, G*H)
    peep    (L, 3, H)    LSTM peepholes (zeros and ignored without them)
    head_w  (V, H), head_b (V,)
    q_ih, s_ih, q_hh, s_hh, q_head, s_head
            the same matrices in reduced precision for ``--weights int8|bf16``
            (charrnn.kernels.quant: int8 or bfloat16 bits, float32 row scales);
            w_ih, w_hh and head_w are then zero-stride stand-ins for the shapes

State ``h``, ``c`` (L, N, H) (``c`` is a dummy (1, N, H) for GRU/RNN) and the next
input ``cur`` (N,) are updated in place, so consecutive calls continue one another
exactly: generating 1000 characters in one call or in chunks of 1, 7 or 256 gives the
same characters (the random generators are carried in ``rng`` too).

One step, for every stream: feed ``cur`` through the layers (per layer one product of
the N inputs with W_ih and one of the N states with W_hh, then one fused gate update),
the head gives logits (V,); the next symbol is ``forced.ids[:, t]`` while ``t < n``,
else drawn from the logits (temperature, top-k, top-p, or the argmax with ``greedy``);
``out_lp`` gets its log-probability under the model itself (temperature 1, no
truncation), so the mean of ``out_lp`` is minus the loss of the text; a forced step
scores ``forced.targets[:, t]`` (the same array as ``ids`` except when ``eval`` scores
a batch whose targets are not its next inputs).  Forced steps skip the head unless
``forced.score`` (warming the state on a prime needs no logits).

Matrix products (``CellOptions.product``, by :func:`charrnn.kernels.matmul.product`):
``Product.ROWS`` uses row-by-row dots (a dot of every weight row with every stream's
input while that row is in L1; deterministic: a stream's numbers do not depend on N or
on threads); ``Product.PACKED`` uses the packed-weight kernel with weights packed once
per sampler (``pw_*``), for several streams (which :func:`_generate_streams` splits
between threads, each stream's numbers again independent of N and of threads) and for
one stream of a wide model on one thread; ``Product.THREADS`` shares each product's
rows between ``CellOptions.threads`` threads (one stream of a wide model).  Reduced
weights (``CellOptions.precision`` INT8 or BF16) always take row dots, one thread or
several (:func:`charrnn.kernels.quant.rows_product`).  The gate equations are :mod:`charrnn.kernels.gates`', the
same code the training kernels run.

Random numbers: every stream has its own xoshiro256** generator (4 uint64 words, seeded
by :func:`charrnn.sampling.seed_streams` from the seed and the stream's index), so the
text of a seed is the same on every machine, run and thread count, and stream i of a
batch draws the same numbers as stream i of any other batch size.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange

from .gates import (argmax_row, gru_h_row, gru_n_after_row, gru_n_before_row, gru_reset_row,
                    gru_rz_row, log_softmax_at, log_sum_exp_shifted, lstm_row, rnn_row)
from .jit import jit, pjit
from .matmul import product
from .modes import Cell, Precision, Product
from .quant import rows_product


class CellOptions(NamedTuple):
    """The model's options as the kernel reads them, and the product mode."""

    cell: Cell
    gru_before: bool      # GRU reset "before"
    relu: bool            # RNN nonlinearity
    use_peep: bool        # LSTM peepholes
    residual: bool
    product: Product      # charrnn.kernels.matmul.product
    precision: Precision  # how the matrices are stored (Weights.q)
    threads: int          # threads sharing a product's rows (THREADS, reduced)


class Weights(NamedTuple):
    """The weights in the kernel's layout (module docstring)."""

    table0: np.ndarray    # (V, G*H)
    w_ih: np.ndarray      # (L, G*H, H)
    b_ih: np.ndarray      # (L, G*H)
    w_hh: np.ndarray      # (L, G*H, H)
    b_hh: np.ndarray      # (L, G*H)
    peep: np.ndarray      # (L, 3, H)
    head_w: np.ndarray    # (V, H)
    head_b: np.ndarray    # (V,)
    pw_ih: np.ndarray     # (L, P, H, NR) W_ih^T packed (Product.PACKED), else stand-ins
    pw_hh: np.ndarray     # (L, P, H, NR) W_hh^T (GRU "before": r, z columns)
    pw_hn: np.ndarray     # (L, P, H, NR) GRU "before": W_hn^T
    pw_head: np.ndarray   # (P, H, NR) head.weight^T
    # the matrices in reduced precision (Precision.FLOAT: (L, 1, 1) stand-ins); a
    # tuple of their own would not pass into numba's parallel regions
    q_ih: np.ndarray      # (L, G*H, H) int8 or uint16 (bfloat16 bits)
    s_ih: np.ndarray      # (L, G*H) float32 row scales (int8; ones for bf16)
    q_hh: np.ndarray      # (L, G*H, H)
    s_hh: np.ndarray      # (L, G*H)
    q_head: np.ndarray    # (V, H)
    s_head: np.ndarray    # (V,)


class DrawOptions(NamedTuple):
    """How a symbol is drawn (:func:`_draw`)."""

    temperature: float
    top_k: int
    top_p: float
    greedy: bool


class Streams(NamedTuple):
    """The state of N streams, updated in place: h, c (L, N, H) (c (1, N, H) for
    GRU/RNN), the next inputs ``cur`` (N,) int64 and the generators ``rng`` (N, 4)."""

    h: np.ndarray
    c: np.ndarray
    cur: np.ndarray
    rng: np.ndarray


class Forced(NamedTuple):
    """Symbols fed instead of drawn: ``ids`` (N, >= n) for steps t < n; with ``score``
    the log-probabilities of ``targets`` (N, >= n) (usually ``ids`` itself) are computed
    too."""

    ids: np.ndarray
    n: int
    score: bool
    targets: np.ndarray


# ---------------------------------------------------------------- random numbers

@jit
def _rotl(x, k):
    return (x << np.uint64(k)) | (x >> np.uint64(64 - k))


@jit
def _next_u64(s):
    """xoshiro256** (Blackman & Vigna 2018): next 64-bit output; s (4,) uint64 in place."""
    result = _rotl(s[1] * np.uint64(5), 7) * np.uint64(9)
    t = s[1] << np.uint64(17)
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = _rotl(s[3], 45)
    return result


@jit
def _uniform(s):
    """A float64 uniform in [0, 1) with 53 random bits."""
    return np.float64(_next_u64(s) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


# ---------------------------------------------------------------- drawing one symbol


@jit
def _draw(z, draw, s, w, order):
    """Draw a symbol from logits z (V,); returns (id, log-probability under the model).

    ``draw`` (:class:`DrawOptions`): temperature, top_k, top_p, greedy.
    greedy: the first argmax (no random number used).  Otherwise the weights
    w = exp((z - max) / temperature) (float64), restricted to the top_k largest
    (0 = all; ties keep the lower ids) and then to the smallest prefix of those, in
    decreasing order, whose share of their total reaches top_p (1 = all); one uniform
    number picks from what is left in proportion to w.  ``w`` (V,) float64 and ``order``
    (V,) int64 are scratch.
    """
    temperature, top_k, top_p, greedy = draw
    V = z.shape[0]
    best = argmax_row(z)
    m = np.float64(z[best])
    lse = log_sum_exp_shifted(z, m)
    if greedy:
        return best, log_softmax_at(z, best, m, lse)
    inv_t = 1.0 / temperature
    total = 0.0
    for v in range(V):
        e = np.exp((np.float64(z[v]) - m) * inv_t)
        w[v] = e
        total += e
    K = V
    if top_k > 0 and top_k < V:
        K = top_k
    if K < V or top_p < 1.0:
        # order: ids by decreasing weight, ties by increasing id (stable sort)
        srt = np.argsort(-w, kind="mergesort")
        for v in range(V):
            order[v] = srt[v]
        kept = 0.0
        for r in range(K):
            kept += w[order[r]]
        if top_p < 1.0:
            need = top_p * kept
            acc = 0.0
            n = 0
            while n < K:
                acc += w[order[n]]
                n += 1
                if acc >= need:
                    break
            K = n
            kept = acc
        u = _uniform(s) * kept
        acc = 0.0
        pick = order[K - 1]
        for r in range(K):
            acc += w[order[r]]
            if u < acc:
                pick = order[r]
                break
        return pick, log_softmax_at(z, pick, m, lse)
    u = _uniform(s) * total
    acc = 0.0
    pick = best
    for v in range(V):
        acc += w[v]
        if u < acc:
            pick = v
            break
    return pick, log_softmax_at(z, pick, m, lse)


@jit
def _draw_repeat(z, M, draw, s, out):
    """M draws from the same logits z (V,) with generator s; for tests of _draw."""
    V = z.shape[0]
    w = np.empty(V, np.float64)                     # (V,)
    order = np.empty(V, np.int64)                   # (V,)
    for i in range(M):
        out[i], _ = _draw(z, draw, s, w, order)


# ---------------------------------------------------------------- the loop


@jit
def _mv(opts, W, PW, Q, S, X, Y):
    """Y (N, R) = X (N, C) @ W (R, C)^T with the product mode and precision of ``opts``:
    float weights W (PW: W^T packed) or reduced ones Q (R, C) with row scales S (R,)."""
    if opts.precision != Precision.FLOAT:
        rows_product(opts.precision, opts.threads, Q, S, X, Y)
    elif opts.product == Product.THREADS:
        rows_product(opts.precision, opts.threads, W, S, X, Y)
    else:
        product(opts.product, W, PW, X, Y)


@jit
def _layer_step(opts, wts, k, hk, ck, XP, HH, HRZ, RH, HN, Gs):
    """One step of layer k for every stream: XP (N, G*H) holds the input projection;
    the state hk (N, H) (and ck, LSTM) is updated in place."""
    H = hk.shape[1]
    N = hk.shape[0]
    b_hh = wts.b_hh[k]
    q, s = wts.q_hh[k], wts.s_hh[k]
    if opts.cell == Cell.GRU and opts.gru_before:
        _mv(opts, wts.w_hh[k][:2 * H], wts.pw_hh[k], q[:2 * H], s[:2 * H], hk, HRZ)
        for n in range(N):
            gru_rz_row(HRZ[n], XP[n], b_hh, Gs[n])
            gru_reset_row(Gs[n], hk[n], RH[n])
        _mv(opts, wts.w_hh[k][2 * H:], wts.pw_hn[k], q[2 * H:], s[2 * H:], RH, HN)
        for n in range(N):
            gru_n_before_row(HN[n], XP[n], b_hh, Gs[n])
            gru_h_row(Gs[n], hk[n], hk[n])
        return
    _mv(opts, wts.w_hh[k], wts.pw_hh[k], q, s, hk, HH)
    for n in range(N):
        if opts.cell == Cell.LSTM:
            lstm_row(HH[n], XP[n], b_hh, wts.peep[k], opts.use_peep, ck[n], ck[n], Gs[n],
                     Gs[n][:H], hk[n])
        elif opts.cell == Cell.GRU:
            gru_rz_row(HH[n], XP[n], b_hh, Gs[n])
            gru_n_after_row(HH[n], XP[n], b_hh, Gs[n], RH[n])
            gru_h_row(Gs[n], hk[n], hk[n])
        else:
            rnn_row(opts.relu, HH[n], XP[n], b_hh, hk[n])


class Scratch(NamedTuple):
    """Buffers of one step for N streams (:func:`new_scratch`)."""

    X: np.ndarray         # (N, H) input of the current layer, then its output
    XP: np.ndarray        # (N, G*H) input projection
    HH: np.ndarray        # (N, G*H) recurrent product / pre-activations
    HRZ: np.ndarray       # (N, 2H) GRU "before": h_{t-1} W_hrz^T
    RH: np.ndarray        # (N, H) GRU "before": r * h_{t-1}; scratch
    HN: np.ndarray        # (N, H) GRU "before": (r * h) W_hn^T
    Gs: np.ndarray        # (N, G*H) gate activations
    LOG: np.ndarray       # (N, V) logits


@jit
def new_scratch(wts, N):
    """The :class:`Scratch` buffers of N streams of the model ``wts``."""
    L, GH, H = wts.w_hh.shape
    V = wts.head_w.shape[0]
    dt = wts.w_hh.dtype
    return Scratch(np.empty((N, H), dt), np.empty((N, GH), dt), np.empty((N, GH), dt),
                   np.empty((N, 2 * H), dt), np.empty((N, H), dt), np.empty((N, H), dt),
                   np.empty((N, GH), dt), np.empty((N, V), dt))


@jit
def forward_step(opts, wts, st, sc):
    """Feed ``st.cur`` (N,) through the layers: the state ``st.h``, ``st.c`` is updated
    in place and ``sc.X`` (N, H) gets the top layer's output (the one gate
    implementation, :mod:`charrnn.kernels.gates`, through :func:`_layer_step`)."""
    L, GH, H = wts.w_hh.shape
    N = st.cur.shape[0]
    X, XP = sc.X, sc.XP
    for k in range(L):
        if k == 0:
            for n in range(N):
                row = wts.table0[st.cur[n]]
                xpn = XP[n]
                for j in range(GH):
                    xpn[j] = row[j]
        else:
            _mv(opts, wts.w_ih[k], wts.pw_ih[k], wts.q_ih[k], wts.s_ih[k], X, XP)
            for n in range(N):
                xpn = XP[n]
                bk = wts.b_ih[k]
                for j in range(GH):
                    xpn[j] += bk[j]
        hk = st.h[k]
        _layer_step(opts, wts, k, hk, st.c[min(k, st.c.shape[0] - 1)], XP, sc.HH, sc.HRZ,
                    sc.RH, sc.HN, sc.Gs)
        for n in range(N):
            xn = X[n]
            hn = hk[n]
            if opts.residual and k > 0:
                for j in range(H):
                    xn[j] += hn[j]
            else:
                for j in range(H):
                    xn[j] = hn[j]


@jit
def head_logits(opts, wts, sc):
    """``sc.LOG`` (N, V) = the head applied to ``sc.X`` (N, H)."""
    _mv(opts, wts.head_w, wts.pw_head, wts.q_head, wts.s_head, sc.X, sc.LOG)
    V = wts.head_w.shape[0]
    for n in range(sc.LOG.shape[0]):
        zn = sc.LOG[n]
        for v in range(V):
            zn[v] += wts.head_b[v]


@jit
def _generate_kernel(opts, wts, draw, st, forced, n_steps, out_ids, out_lp):
    """``n_steps`` steps of every stream of ``st`` (module docstring): ids (N, S) and
    their log-probabilities (N, S) float64 into ``out_ids``, ``out_lp``."""
    N = st.cur.shape[0]
    V = wts.head_w.shape[0]
    sc = new_scratch(wts, N)
    w = np.empty(V, np.float64)         # (V,) draw scratch
    order = np.empty(V, np.int64)       # (V,) draw scratch
    for t in range(n_steps):
        forward_step(opts, wts, st, sc)
        forced_step = t < forced.n
        if forced_step and not forced.score:
            for n in range(N):
                st.cur[n] = forced.ids[n, t]
            continue
        head_logits(opts, wts, sc)
        for n in range(N):
            zn = sc.LOG[n]
            if forced_step:
                nxt = forced.ids[n, t]
                m = np.float64(zn[argmax_row(zn)])
                lp = log_softmax_at(zn, forced.targets[n, t], m, log_sum_exp_shifted(zn, m))
            else:
                nxt, lp = _draw(zn, draw, st.rng[n], w, order)
            out_ids[n, t] = nxt
            out_lp[n, t] = lp
            st.cur[n] = nxt


@jit
def copy_streams(dst, d, src, s, n):
    """``dst[:, d:d+n] = src[:, s:s+n]`` for (L, N, H) stream states, in plain loops: a
    slice assignment makes numba compile a shape check whose error message is built by
    string formatting, which adds seconds to the compilation of every kernel using one."""
    for k in range(dst.shape[0]):
        for i in range(n):
            for j in range(dst.shape[2]):
                dst[k, d + i, j] = src[k, s + i, j]


@jit
def _generate_group(g, nth, opts, wts, draw, st, forced, n_steps, out_ids, out_lp):
    """Group g of ``nth`` of :func:`_generate_streams`: its streams' state copied to
    contiguous buffers, :func:`_generate_kernel`, and the state copied back.  (A
    function of its own: built inside the ``prange`` body, the group's tuples of views
    were not what each iteration sliced.)"""
    N = st.cur.shape[0]
    n0 = N * g // nth
    n1 = N * (g + 1) // nth
    hg = np.empty((st.h.shape[0], n1 - n0, st.h.shape[2]), st.h.dtype)    # (L, n, H)
    cg = np.empty((st.c.shape[0], n1 - n0, st.c.shape[2]), st.c.dtype)    # (L or 1, n, H)
    copy_streams(hg, 0, st.h, n0, n1 - n0)
    copy_streams(cg, 0, st.c, n0, n1 - n0)
    sub = Streams(hg, cg, st.cur[n0:n1], st.rng[n0:n1])
    fg = Forced(forced.ids[n0:n1], forced.n, forced.score, forced.targets[n0:n1])
    _generate_kernel(opts, wts, draw, sub, fg, n_steps, out_ids[n0:n1], out_lp[n0:n1])
    copy_streams(st.h, n0, hg, 0, n1 - n0)
    copy_streams(st.c, n0, cg, 0, n1 - n0)


@pjit
def _generate_streams(nth, opts, wts, draw, st, forced, n_steps, out_ids, out_lp):
    """:func:`_generate_kernel` with the streams split into ``nth`` groups that numba's
    threads run at the same time, each through all the steps: streams never read one
    another, and each carries its own generator, so the split changes nothing but the
    speed (each group's state is copied to a contiguous buffer and back)."""
    for g in prange(nth):
        # int64 here and in the parallel body (which types g as unsigned): one compile
        _generate_group(np.int64(g), nth, opts, wts, draw, st, forced, n_steps, out_ids, out_lp)
