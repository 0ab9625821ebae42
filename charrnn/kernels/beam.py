"""Beam search: one jitted call runs many steps of N beams as ONE batch of streams.

Dimension letters: N beams, V vocab, K length of the stop string, S steps of one call.

Each step (:func:`beam_kernel`): the N beams' inputs go through the layers together
(:func:`charrnn.kernels.sample.forward_step`, the same code and gate equations as
sampling), the head gives logits (N, V); for every live beam b and symbol v the
candidate's score is ``score[b] + log softmax(z_b)[v]`` (the shared log-softmax of
:mod:`charrnn.kernels.gates`, float64).  A candidate that completes the stop string is
finished and offered to the pool; the others compete for the N live slots: the N best
by score, ties to the lower ``b * V + v`` (exact, deterministic).  The new beams' h and
c are gathered from their parents' and their symbol becomes the next input.

Scores are total log-probabilities (nats); the pool ranks finished beams by
``score / lp(length)`` with the GNMT length penalty ``lp(n) = ((5 + n) / 6) ** alpha``
(alpha = 0: the total log-probability itself).  The search ends at ``length`` steps, or
as soon as the best finished beam's key is >= what any live beam could still reach
(its score over lp(length) for alpha > 0, over 1 for alpha = 0: scores only fall).

Memory: the logits (N, V), a copy of the state (L, N, H) and the back-pointers
``parents``/``tokens`` (S, N) of the call; nothing grows with V * N beyond the logits.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .gates import argmax_row, log_softmax_at, log_sum_exp_shifted
from .jit import jit
from .sample import copy_streams, forward_step, head_logits, new_scratch


class BeamOptions(NamedTuple):
    """What the search looks for: ``dfa`` (K+1, V) int64 the stop string's automaton
    (state = how much of the stop string the text ends with; K = 0: no stop string),
    the length penalty's ``alpha`` and the most symbols a beam gets, ``length``."""

    dfa: np.ndarray
    alpha: float
    length: int


class Beams(NamedTuple):
    """The live beams: ``score`` (N,) float64 total log-probability (-inf: an empty
    slot) and ``match`` (N,) int64 their stop-automaton states."""

    score: np.ndarray
    match: np.ndarray


class Pool(NamedTuple):
    """Finished beams, best first (at most N): ranking ``key`` (N,) float64, ``score``
    (N,) float64, ``length`` (N,) int64 symbols (stop string included), the live beam
    ``parent`` (N,) int64 they came from at step ``length - 1`` and their last
    ``token`` (N,) int64; ``count`` (1,) int64 how many are held."""

    key: np.ndarray
    score: np.ndarray
    length: np.ndarray
    parent: np.ndarray
    token: np.ndarray
    count: np.ndarray


@jit
def penalty(alpha, n):
    """GNMT's length normaliser ((5 + n) / 6) ** alpha (exactly 1 for alpha = 0)."""
    if alpha == 0.0:
        return 1.0
    return ((5.0 + n) / 6.0) ** alpha


@jit
def _offer(pool, key, score, length, parent, token):
    """Put a finished beam into the pool if it is among the N best keys (ties: the one
    offered first ranks first)."""
    N = pool.key.shape[0]
    n = pool.count[0]
    if n == N and not key > pool.key[N - 1]:
        return
    pos = n if n < N else N - 1
    while pos > 0 and key > pool.key[pos - 1]:
        pos -= 1
    last = n if n < N else N - 1
    for i in range(last, pos, -1):
        pool.key[i] = pool.key[i - 1]
        pool.score[i] = pool.score[i - 1]
        pool.length[i] = pool.length[i - 1]
        pool.parent[i] = pool.parent[i - 1]
        pool.token[i] = pool.token[i - 1]
    pool.key[pos] = key
    pool.score[pos] = score
    pool.length[pos] = length
    pool.parent[pos] = parent
    pool.token[pos] = token
    if n < N:
        pool.count[0] = n + 1


@jit
def _keep(cs, cf, kept, c, flat):
    """Insert candidate (score c, index flat) into the best-first lists cs, cf holding
    ``kept``; candidates arrive by increasing index, so an equal score ranks after.
    Returns the new count."""
    N = cs.shape[0]
    pos = kept if kept < N else N - 1
    while pos > 0 and c > cs[pos - 1]:
        pos -= 1
    last = kept if kept < N else N - 1
    for i in range(last, pos, -1):
        cs[i] = cs[i - 1]
        cf[i] = cf[i - 1]
    cs[pos] = c
    cf[pos] = flat
    return kept + 1 if kept < N else N


@jit
def beam_kernel(opts, wts, st, beams, bo, pool, t0, n_steps, parents, tokens, flags):
    """Steps t0 .. t0+n_steps-1 of the search (module docstring) on the beams' state
    ``st`` (:class:`charrnn.kernels.sample.Streams`, updated in place): ``parents[t, i]``
    (-1: an empty slot) and ``tokens[t, i]`` (S, N) int64 say where beam i of step t
    came from.  Returns the steps run; ``flags[0]`` becomes 1 when the search reached
    ``bo.length`` and 2 when it ended before (a finished beam no live one can beat)."""
    N = st.cur.shape[0]
    V = wts.head_w.shape[0]
    K = bo.dfa.shape[0] - 1
    sc = new_scratch(wts, N)
    cs = np.empty(N, np.float64)                # (N,) best live candidates' scores
    cf = np.empty(N, np.int64)                  # (N,) their b * V + v
    match = np.empty(N, np.int64)               # (N,)
    h_old = np.empty_like(st.h)                 # (L, N, H)
    c_old = np.empty_like(st.c)                 # (L or 1, N, H)
    for t in range(n_steps):
        g = t0 + t                              # symbols every live beam has now
        forward_step(opts, wts, st, sc)
        head_logits(opts, wts, sc)
        kept = 0
        for b in range(N):
            s = beams.score[b]
            if s == -np.inf:
                continue
            z = sc.LOG[b]
            m = np.float64(z[argmax_row(z)])
            lse = log_sum_exp_shifted(z, m)
            for v in range(V):
                c = s + log_softmax_at(z, v, m, lse)
                if K > 0 and bo.dfa[beams.match[b], v] == K:
                    _offer(pool, c / penalty(bo.alpha, g + 1), c, g + 1, b, v)
                elif kept < N or c > cs[N - 1]:
                    kept = _keep(cs, cf, kept, c, b * V + v)
        copy_streams(h_old, 0, st.h, 0, N)
        copy_streams(c_old, 0, st.c, 0, N)
        for i in range(N):
            if i < kept:
                p = cf[i] // V
                v = cf[i] % V
                beams.score[i] = cs[i]
                match[i] = bo.dfa[beams.match[p], v] if K > 0 else 0
            else:
                p = 0
                v = 0
                beams.score[i] = -np.inf
                match[i] = 0
            parents[t, i] = p if i < kept else -1
            tokens[t, i] = v
            st.cur[i] = v
            copy_streams(st.h, i, h_old, p, 1)
            copy_streams(st.c, i, c_old, p, 1)
        for i in range(N):
            beams.match[i] = match[i]
        if g + 1 >= bo.length:
            flags[0] = 1
            return t + 1
        if kept == 0:
            flags[0] = 2
            return t + 1
        if pool.count[0] > 0:
            bound = cs[0] / penalty(bo.alpha, bo.length if bo.alpha > 0 else g + 1)
            if pool.key[0] >= bound:
                flags[0] = 2
                return t + 1
    return n_steps


__all__ = ["BeamOptions", "Beams", "Pool", "beam_kernel", "penalty"]
