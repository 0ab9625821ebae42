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

State ``h``, ``c`` (L, N, H) (``c`` is a dummy (1, N, H) for GRU/RNN) and the next
input ``cur`` (N,) are updated in place, so consecutive calls continue one another
exactly: generating 1000 characters in one call or in chunks of 1, 7 or 256 gives the
same characters (the random generators are carried in ``rng`` too).

One step, for every stream: feed ``cur`` through the layers (per layer one product of
the N inputs with W_ih and one of the N states with W_hh, then one fused gate update),
the head gives logits (V,); the next symbol is ``forced[:, t]`` while ``t < n_forced``,
else drawn from the logits (temperature, top-k, top-p, or the argmax with ``greedy``);
``out_lp`` gets its log-probability under the model itself (temperature 1, no
truncation), so the mean of ``out_lp`` is minus the loss of the text.  Forced steps
skip the head unless ``score_forced`` (warming the state on a prime needs no logits).

Matrix products (``blas``, the product mode): 0 uses the loops of :func:`_matmul_rows`
(a dot of every weight row with every stream's input while that row is in L1;
deterministic: a stream's numbers do not depend on N or on threads); 1 uses ``np.dot``
(BLAS gemv through scipy, for one stream of a wide model on two threads: 1.5x at H=512,
benchmarks/sample_speed.py); 2 (PACKED) uses the packed-weight kernel of
:mod:`charrnn.kernels.packed` with weights packed once per sampler (``pw_*``), for
several streams, which :func:`_generate_streams` splits between threads (each stream's
numbers again independent of N and of threads).  Without scipy, mode 1 falls back to
the loops.

Random numbers: every stream has its own xoshiro256** generator (4 uint64 words, seeded
by :func:`charrnn.sampling.seed_streams` from the seed and the stream's index), so the
text of a seed is the same on every machine, run and thread count, and stream i of a
batch draws the same numbers as stream i of any other batch size.
"""
from __future__ import annotations

import importlib.util

import numpy as np

from numba import prange

from .jit import jit, pjit
from .activations import sigmoid_into, tanh_into
from .packed import _mm_serial

#: numba's np.dot (product mode 1) calls BLAS through scipy, when it is installed.  A
#: sampler imports it (load_blas) only when it takes that mode, before it sets the
#: thread limits, so that they apply to scipy's BLAS too; not every `charrnn sample`
#: (measured: importing scipy.linalg took 0.28 s of a 1.3 s `sample -n 100`).
HAVE_BLAS = importlib.util.find_spec("scipy") is not None


def load_blas() -> None:
    """Import the BLAS that product mode 1 calls (see HAVE_BLAS)."""
    import scipy.linalg.cython_blas  # noqa: F401

LSTM, GRU, RNN = 0, 1, 2
CELL_CODES = {"lstm": LSTM, "gru": GRU, "rnn": RNN}

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
def _draw(z, temperature, top_k, top_p, greedy, s, w, order):
    """Draw a symbol from logits z (V,); returns (id, log-probability under the model).

    greedy: the first argmax (no random number used).  Otherwise the weights
    w = exp((z - max) / temperature) (float64), restricted to the top_k largest
    (0 = all; ties keep the lower ids) and then to the smallest prefix of those, in
    decreasing order, whose share of their total reaches top_p (1 = all); one uniform
    number picks from what is left in proportion to w.  ``w`` (V,) float64 and ``order``
    (V,) int64 are scratch.
    """
    V = z.shape[0]
    m = np.float64(z[0])
    best = 0
    for v in range(1, V):
        zv = np.float64(z[v])
        if zv > m:
            m = zv
            best = v
    tot1 = 0.0
    for v in range(V):
        tot1 += np.exp(np.float64(z[v]) - m)
    log_z = m + np.log(tot1)
    if greedy:
        return best, np.float64(z[best]) - log_z
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
        return pick, np.float64(z[pick]) - log_z
    u = _uniform(s) * total
    acc = 0.0
    pick = best
    for v in range(V):
        acc += w[v]
        if u < acc:
            pick = v
            break
    return pick, np.float64(z[pick]) - log_z


@jit
def _draw_repeat(z, M, temperature, top_k, top_p, greedy, s, out):
    """M draws from the same logits z (V,) with generator s; for tests of _draw."""
    V = z.shape[0]
    w = np.empty(V, np.float64)                     # (V,)
    order = np.empty(V, np.int64)                   # (V,)
    for i in range(M):
        out[i], _ = _draw(z, temperature, top_k, top_p, greedy, s, w, order)


# ---------------------------------------------------------------- matrix products


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


PACKED = 2     # product mode: the packed-weight kernel (charrnn.kernels.packed)

if HAVE_BLAS:
    @jit
    def _matmul(W, PW, X, Y, mode):
        """Y = X W^T (N, R): our loops (mode 0), BLAS (1), or the packed kernel with PW,
        W^T packed (2)."""
        if mode == PACKED:
            _mm_serial(X, PW, Y)
        elif mode:
            np.dot(X, W.T, Y)
        else:
            _matmul_rows(W, X, Y)
else:
    @jit
    def _matmul(W, PW, X, Y, mode):
        """Y = X W^T (N, R): our loops, or the packed kernel (numba's np.dot needs
        scipy)."""
        if mode == PACKED:
            _mm_serial(X, PW, Y)
        else:
            _matmul_rows(W, X, Y)


# ---------------------------------------------------------------- fused gates (one stream)


@jit
def _lstm_gates(a, xp, b_hh, pk, use_peep, h, c, g):
    """a (4H,) = h W_hh^T on entry (scratch); updates h, c (H,) in place; g (4H,) scratch."""
    H = h.shape[0]
    for j in range(4 * H):
        a[j] += xp[j] + b_hh[j]
    if use_peep:
        for j in range(H):
            a[j] += pk[0, j] * c[j]
            a[H + j] += pk[1, j] * c[j]
    sigmoid_into(a[:2 * H], g[:2 * H])
    tanh_into(a[2 * H:3 * H], g[2 * H:3 * H])
    for j in range(H):
        c[j] = g[H + j] * c[j] + g[j] * g[2 * H + j]
    if use_peep:
        for j in range(H):
            a[3 * H + j] += pk[2, j] * c[j]
    sigmoid_into(a[3 * H:], g[3 * H:])
    tanh_into(c, g[:H])
    for j in range(H):
        h[j] = g[3 * H + j] * g[j]


@jit
def _gru_rz(a, xp, b_hh, g):
    """r, z into g[:2H] from a[:2H] = h W_hrz^T."""
    H2 = g.shape[0] // 3 * 2
    for j in range(H2):
        a[j] += xp[j] + b_hh[j]
    sigmoid_into(a[:H2], g[:H2])


@jit
def _gru_after_n(a, xp, b_hh, h, g):
    """n = tanh(xp_n + r * (W_hn h + b_hn)) and h_t; a[2H:] = W_hn h on entry."""
    one = h.dtype.type(1)
    H = h.shape[0]
    for j in range(H):
        a[2 * H + j] = xp[2 * H + j] + g[j] * (a[2 * H + j] + b_hh[2 * H + j])
    tanh_into(a[2 * H:], g[2 * H:])
    for j in range(H):
        z = g[H + j]
        h[j] = (one - z) * g[2 * H + j] + z * h[j]


@jit
def _gru_before_n(hn, xp, b_hh, h, g):
    """n = tanh(xp_n + W_hn (r * h) + b_hn) and h_t; hn (H,) = W_hn (r * h) on entry."""
    one = h.dtype.type(1)
    H = h.shape[0]
    for j in range(H):
        hn[j] += xp[2 * H + j] + b_hh[2 * H + j]
    tanh_into(hn, g[2 * H:])
    for j in range(H):
        z = g[H + j]
        h[j] = (one - z) * g[2 * H + j] + z * h[j]


@jit
def _rnn_gates(a, xp, b_hh, relu, h):
    zero = h.dtype.type(0)
    H = h.shape[0]
    for j in range(H):
        a[j] += xp[j] + b_hh[j]
    if relu:
        for j in range(H):
            h[j] = a[j] if a[j] > zero else zero
    else:
        tanh_into(a, h)


# ---------------------------------------------------------------- the loop


@jit
def _generate_kernel(cell, gru_before, relu, use_peep, residual, blas,
                     table0, w_ih, b_ih, w_hh, b_hh, peep, head_w, head_b,
                     pw_ih, pw_hh, pw_hn, pw_head,
                     h, c, cur, forced, n_forced, score_forced, n_steps,
                     temperature, top_k, top_p, greedy, rng, out_ids, out_lp):
    L, GH, H = w_hh.shape
    N = cur.shape[0]
    V = head_w.shape[0]
    dt = w_hh.dtype
    X = np.empty((N, H), dt)            # (N, H) input of the current layer, then its output
    XP = np.empty((N, GH), dt)          # (N, G*H) input projection
    HH = np.empty((N, GH), dt)          # (N, G*H) recurrent product / pre-activations
    HRZ = np.empty((N, 2 * H), dt)      # (N, 2H) GRU "before": h_{t-1} W_hrz^T
    RH = np.empty((N, H), dt)           # (N, H) GRU "before": r * h_{t-1}
    HN = np.empty((N, H), dt)           # (N, H) GRU "before": (r * h) W_hn^T
    Gs = np.empty((N, GH), dt)          # (N, G*H) gate activations
    LOG = np.empty((N, V), dt)          # (N, V) logits
    w = np.empty(V, np.float64)         # (V,) draw scratch
    order = np.empty(V, np.int64)       # (V,) draw scratch
    for t in range(n_steps):
        for k in range(L):
            if k == 0:
                for n in range(N):
                    row = table0[cur[n]]
                    xpn = XP[n]
                    for j in range(GH):
                        xpn[j] = row[j]
            else:
                _matmul(w_ih[k], pw_ih[k], X, XP, blas)
                for n in range(N):
                    xpn = XP[n]
                    bk = b_ih[k]
                    for j in range(GH):
                        xpn[j] += bk[j]
            hk = h[k]
            if cell == GRU and gru_before:
                _matmul(w_hh[k][:2 * H], pw_hh[k], hk, HRZ, blas)
                for n in range(N):
                    _gru_rz(HRZ[n], XP[n], b_hh[k], Gs[n])
                    for j in range(H):
                        RH[n, j] = Gs[n, j] * hk[n, j]
                _matmul(w_hh[k][2 * H:], pw_hn[k], RH, HN, blas)
                for n in range(N):
                    _gru_before_n(HN[n], XP[n], b_hh[k], hk[n], Gs[n])
            else:
                _matmul(w_hh[k], pw_hh[k], hk, HH, blas)
                for n in range(N):
                    if cell == LSTM:
                        _lstm_gates(HH[n], XP[n], b_hh[k], peep[k], use_peep, hk[n],
                                    c[k, n], Gs[n])
                    elif cell == GRU:
                        _gru_rz(HH[n], XP[n], b_hh[k], Gs[n])
                        _gru_after_n(HH[n], XP[n], b_hh[k], hk[n], Gs[n])
                    else:
                        _rnn_gates(HH[n], XP[n], b_hh[k], relu, hk[n])
            for n in range(N):
                xn = X[n]
                hn = hk[n]
                if residual and k > 0:
                    for j in range(H):
                        xn[j] += hn[j]
                else:
                    for j in range(H):
                        xn[j] = hn[j]
        forced_step = t < n_forced
        if forced_step and not score_forced:
            for n in range(N):
                cur[n] = forced[n, t]
            continue
        _matmul(head_w, pw_head, X, LOG, blas)
        for n in range(N):
            zn = LOG[n]
            for v in range(V):
                zn[v] += head_b[v]
            if forced_step:
                nxt = forced[n, t]
                m = np.float64(zn[0])
                for v in range(1, V):
                    if np.float64(zn[v]) > m:
                        m = np.float64(zn[v])
                tot = 0.0
                for v in range(V):
                    tot += np.exp(np.float64(zn[v]) - m)
                lp = np.float64(zn[nxt]) - m - np.log(tot)
            else:
                nxt, lp = _draw(zn, temperature, top_k, top_p, greedy, rng[n], w, order)
            out_ids[n, t] = nxt
            out_lp[n, t] = lp
            cur[n] = nxt


@pjit
def _generate_streams(nth, cell, gru_before, relu, use_peep, residual, blas,
                      table0, w_ih, b_ih, w_hh, b_hh, peep, head_w, head_b,
                      pw_ih, pw_hh, pw_hn, pw_head,
                      h, c, cur, forced, n_forced, score_forced, n_steps,
                      temperature, top_k, top_p, greedy, rng, out_ids, out_lp):
    """:func:`_generate_kernel` with the streams split into ``nth`` groups that numba's
    threads run at the same time, each through all the steps: streams never read one
    another, and each carries its own generator, so the split changes nothing but the
    speed (each group's state is copied to a contiguous buffer and back)."""
    N = cur.shape[0]
    for g in prange(nth):
        n0 = N * g // nth
        n1 = N * (g + 1) // nth
        hg = np.ascontiguousarray(h[:, n0:n1])                        # (L, n, H)
        cg = np.ascontiguousarray(c[:, n0:n1])                        # (L or 1, n, H)
        _generate_kernel(cell, gru_before, relu, use_peep, residual, blas,
                         table0, w_ih, b_ih, w_hh, b_hh, peep, head_w, head_b,
                         pw_ih, pw_hh, pw_hn, pw_head,
                         hg, cg, cur[n0:n1], forced[n0:n1], n_forced, score_forced, n_steps,
                         temperature, top_k, top_p, greedy, rng[n0:n1], out_ids[n0:n1],
                         out_lp[n0:n1])
        h[:, n0:n1] = hg
        c[:, n0:n1] = cg
