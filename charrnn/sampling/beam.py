"""Beam search (``charrnn sample --beam N``): the N beams run as one batch of streams
through :func:`charrnn.kernels.beam.beam_kernel` (the step and gate code sampling uses);
the rules are :func:`beam_search`'s."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, InputError
from . import CHUNK, Sampler, _prime_pieces

#: the most beams (--beam): the search holds (N, V) logits and (L, N, H) states
BEAM_MAX = 64


@dataclass
class BeamResult:
    """One beam of :func:`beam_search`: its text (no prime, no stop string), the total
    log-probability ``logprob`` (nats) of its ``length`` generated symbols (the stop
    string included when ``stopped``) and the ranking ``score`` (logprob over the length
    penalty)."""

    rank: int
    prime: str
    text: str
    logprob: float
    length: int
    score: float
    stopped: bool = False

    def to_json(self) -> dict:
        bpc = -self.logprob / self.length / np.log(2) if self.length else 0.0
        return {"beam": self.rank, "prime": self.prime, "text": self.text,
                "chars": self.length, "logprob": round(float(self.logprob), 6),
                "bpc": round(float(bpc), 6), "score": round(float(self.score), 6),
                "stopped": self.stopped}


def stop_automaton(stop: str | None, itos) -> np.ndarray:
    """(K+1, V) int64: row j, column v is how much of ``stop`` (K characters) the text
    ends with after symbol v follows a text ending with its first j (KMP).  (1, V) zeros,
    K = 0, when there is no stop string or it has a character no symbol can produce."""
    V = len(itos)
    stoi = {c: i for i, c in enumerate(itos)}
    if not stop or any(c not in stoi for c in stop):
        return np.zeros((1, V), np.int64)
    K = len(stop)
    dfa = np.zeros((K + 1, V), np.int64)                                      # (K+1, V)
    dfa[0, stoi[stop[0]]] = 1
    x = 0
    for j in range(1, K):
        dfa[j] = dfa[x]
        dfa[j, stoi[stop[j]]] = j + 1
        x = dfa[x, stoi[stop[j]]]
    return dfa


def beam_search(model, length: int, beams: int = 4, prime: str = "", stop: str | None = None,
                length_penalty: float = 0.0, chunk: int = CHUNK, blas: bool | None = None,
                warn=None, weights: str = "float32") -> list[BeamResult]:
    """Beam search with ``beams`` beams for at most ``length`` symbols each: the beams,
    best first (:class:`BeamResult`; at most ``beams``).

    The prime is fed once and its state copied into every beam; the beams then run as
    one batch through :func:`charrnn.kernels.beam.beam_kernel`, ``chunk`` steps a call.
    Ranking: total log-probability divided by ((5 + n) / 6) ** length_penalty for n
    generated symbols (GNMT; 0 = the total log-probability).  With ``stop`` a beam that
    produces the stop string is finished (its text ends before it, its score counts it);
    the search ends when the best finished beam's score is at least what every live
    beam could still reach, or at ``length``, where the live beams are ranked with the
    finished ones.  ``beams`` = 1 gives the greedy text.  Memory: the kernel's (N, V)
    logits and (L, N, H) state copies, and 5 bytes of back-pointers a beam a step.
    ``weights`` "int8" or "bf16": the matrices in reduced precision (as sampling)."""
    from ..kernels import beam as KB
    from ..kernels import runtime
    from ..kernels import sample as KS

    if model.vocab is None:
        raise InputError("the checkpoint has no vocabulary, so its ids cannot be turned "
                         "into text")
    if not 1 <= int(beams) <= BEAM_MAX:
        raise ConfigError(f"beams must be in 1..{BEAM_MAX} (got {beams})")
    if length < 0:
        raise ConfigError(f"length must be >= 0 (got {length})")
    if not (np.isfinite(length_penalty) and length_penalty >= 0):
        raise ConfigError(f"length penalty must be >= 0 (got {length_penalty})")
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1 (got {chunk})")
    N = int(beams)
    s = Sampler(model, N, greedy=True, blas=blas, weights=weights)
    s.prime_pieces(_prime_pieces(model.vocab, prime, warn))
    if length == 0:
        return [BeamResult(0, prime, "", 0.0, 0, 0.0)]
    s._check_start()
    score = np.full(N, -np.inf)                                               # (N,)
    score[0] = 0.0                      # the N copies of the prime are one beam
    live = KB.Beams(score, np.zeros(N, np.int64))
    bo = KB.BeamOptions(stop_automaton(stop, model.vocab.itos), float(length_penalty),
                        int(length))
    pool = KB.Pool(np.zeros(N), np.zeros(N), np.zeros(N, np.int64), np.zeros(N, np.int64),
                   np.zeros(N, np.int64), np.zeros(1, np.int64))
    st = KS.Streams(s.h, s.c, s.cur, s.rng)
    # the beams are one batch on this thread, so a product's rows may be shared by all
    opts, wts = s.w.options(s.product, runtime.numba_threads()), s.w.weights()
    flags = np.zeros(1, np.int64)
    par, tok = [], []                   # back-pointers, (S, N) per call
    t = 0
    while not flags[0]:
        n = min(chunk, length - t)
        p = np.empty((n, N), np.int64)                                        # (S, N)
        k = np.empty((n, N), np.int64)                                        # (S, N)
        done = KB.beam_kernel(opts, wts, st, live, bo, pool, t, n, p, k, flags)
        par.append(p[:done].astype(np.int8))
        tok.append(k[:done].astype(np.int32))
        t += done
    par, tok = np.concatenate(par), np.concatenate(tok)                       # (T, N)

    def trace(step: int, i: int) -> list[int]:
        ids = []
        while step >= 0:
            ids.append(int(tok[step, i]))
            i = int(par[step, i])
            step -= 1
        return ids[::-1]

    itos = model.vocab.itos
    K = bo.dfa.shape[0] - 1
    found = []                          # (key, order, BeamResult fields)
    for j in range(int(pool.count[0])):
        ids = trace(int(pool.length[j]) - 2, int(pool.parent[j])) + [int(pool.token[j])]
        found.append((float(pool.key[j]), "".join(itos[i] for i in ids[:len(ids) - K]),
                      float(pool.score[j]), len(ids), True))
    if flags[0] == 1:                   # reached the length: the live beams count too
        lp = KB.penalty(float(length_penalty), t)
        for i in range(N):
            if np.isfinite(live.score[i]):
                found.append((float(live.score[i]) / lp,
                              "".join(itos[v] for v in trace(t - 1, i)),
                              float(live.score[i]), t, False))
    found.sort(key=lambda f: -f[0])     # stable: finished first, then by rank
    return [BeamResult(r, prime, text, lp_, n_, key, stopped)
            for r, (key, text, lp_, n_, stopped) in enumerate(found[:N])]


__all__ = ["BEAM_MAX", "BeamResult", "beam_search", "stop_automaton"]
