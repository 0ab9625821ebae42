"""Text generation: prime a model's state, then draw characters in jitted chunks.

The work happens in :func:`charrnn.kernels.sample._generate_kernel` (one call runs a
whole chunk of steps for every stream); this module packs the weights for it, keeps
the state between calls, and turns ids into text, with ``--stop`` handling and
streaming on top (:func:`generate_text`).

Conventions (the ``charrnn sample`` command documents them too):

* Without a prime the context is one newline (a sample starts like a fresh line),
  or, when the vocabulary has no newline, its first symbol; neither is echoed.
* Stream i of ``num_samples`` draws from its own generator, seeded from ``(seed, i)``:
  the same seed gives the same text (for the same ``num_samples``; sample 0 of a
  batch usually equals the single sample, but BLAS rounding may differ with N).
* ``stop``: a sample ends just before the first occurrence of the stop string in its
  generated text (the prime is not searched); the stop string itself is not output.
  Text is held back only while it could be the start of the stop string, so what is
  printed is always a prefix of what the unstopped run prints.
* Temperature 0 means greedy (the argmax), as in llama.cpp and the OpenAI API; top-k
  and top-p change nothing then (the argmax is always kept).
* Log-probabilities are the model's own (temperature 1, no top-k/top-p), in nats;
  ``mean_logprob`` is minus the model's loss on the generated text.
* Beam search (``--beam N``, deterministic) is :mod:`charrnn.sampling.beam`.
* ``weights`` "int8" or "bf16" (``--weights``) stores the recurrent and head matrices in
  reduced precision (:mod:`charrnn.kernels.quant`); :mod:`charrnn.sampling.reduced`
  scores text with them for ``eval --weights``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import SampleConfig
from ..errors import ConfigError, InputError
from ..model.sampler_weights import PackedWeights, pack_weights

CHUNK = 256          # characters per kernel call when streaming by chunks


# ---------------------------------------------------------------------- seeding

def _splitmix64(x: int) -> tuple[int, int]:
    """One step of splitmix64 on a Python int: (new state, output)."""
    m = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & m
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return x, z ^ (z >> 31)


def seed_streams(seed: int, n: int, first: int = 0) -> np.ndarray:
    """xoshiro256** states (n, 4) uint64 for streams first..first+n-1 of ``seed``."""
    out = np.empty((n, 4), np.uint64)                   # (N, 4)
    for i in range(n):
        x = (int(seed) ^ (((first + i) * 0xD1B54A32D192ED03) & ((1 << 64) - 1))) & ((1 << 64) - 1)
        words = []
        for _ in range(4):
            x, z = _splitmix64(x)
            words.append(z)
        if not any(words):          # the all-zero state is xoshiro's one fixed point
            words[0] = 1
        out[i] = words
    return out


# ---------------------------------------------------------------------- the sampler

class Sampler:
    """N streams of one model, with their state, next inputs and random generators.

    ``prime(ids)`` warms every stream on the same ids (or ``prime_streams`` on one row
    each); ``generate(n)`` draws n more symbols per stream: ((N, n) ids, (N, n) float64
    log-probabilities).  Calls continue one another exactly (chunking never changes
    the result)."""

    def __init__(self, model, num_streams: int = 1, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, greedy: bool = False, seed: int = 0,
                 blas: bool | None = None, first_stream: int = 0, weights: str = "float32",
                 product=None):
        if num_streams < 1:
            raise ConfigError(f"num_samples must be >= 1 (got {num_streams})")
        SampleConfig(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                     greedy=bool(greedy), seed=int(seed)).validate()
        from ..kernels import sample as KS
        from ..kernels.modes import Precision, Product

        if weights not in WEIGHTS:
            raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)} (got {weights!r})")
        self.weights = weights
        precision = Precision.of(weights)
        self._k = KS
        self.model = model
        self.N = int(num_streams)
        greedy, temperature = _greedy_at_zero(greedy, temperature)
        self.temperature = temperature
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.greedy = bool(greedy)
        from ..kernels import runtime
        runtime.configure_threads(runtime.threads())   # also limits BLAS loaded since
        # the product mode of the kernel (charrnn.kernels.sample._mv): the packed-weight
        # kernel (several streams in groups on numba's threads), row dots split between
        # the threads (one stream of a wide model; every reduced precision), else
        # row-by-row dots on one thread
        if precision != Precision.FLOAT:
            product = Product.THREADS
        elif product is None:
            product = (auto_product(model.config.hidden_size, self.N) if blas is None
                       else Product.PACKED if blas else Product.ROWS)
        self.product = Product(product)
        self.groups = 1
        if self.product != Product.ROWS:
            self.groups = max(1, min(runtime.numba_threads(), self.N // STREAMS_PER_THREAD))
        # threads of one product: never inside the groups' own parallel region; for
        # one stream, as many as are faster now (charrnn.sampling.tuning)
        self.threads = runtime.numba_threads() if self.groups == 1 else 1
        self.tuner = None
        if self.product == Product.THREADS and self.N == 1 and self.threads > 1:
            from .tuning import ThreadTuner
            self.tuner = ThreadTuner(self.threads)
        self.w = pack_weights(model)
        self.w.pack_products(self.product == Product.PACKED)
        self.w.reduce(precision)
        cfg = model.config
        L, H = cfg.num_layers, cfg.hidden_size
        self.h = np.zeros((L, self.N, H), model.dtype)                      # (L, N, H)
        self.c = np.zeros((L if cfg.cell == "lstm" else 1, self.N, H), model.dtype)  # (L, N, H)
        self.cur = np.full(self.N, default_context(model), np.int64)         # (N,)
        self.rng = seed_streams(seed, self.N, first_stream)                  # (N, 4)
        self._no_forced = np.zeros((self.N, 1), np.int64)                    # (N, 1)

    def _run(self, forced, n_forced: int, score_forced: bool, n_steps: int, targets=None):
        out_ids = np.zeros((self.N, max(n_steps, 1)), np.int64)             # (N, S)
        out_lp = np.zeros((self.N, max(n_steps, 1)), np.float64)            # (N, S)
        if n_steps > 0:
            self._check_start()
            targets = forced if targets is None else targets
            K = self._k

            def call(threads, forced, targets, t0, ids, lp):      # steps t0 .. of _run
                args = (self.w.options(self.product, threads), self.w.weights(),
                        K.DrawOptions(self.temperature, self.top_k, self.top_p, self.greedy),
                        K.Streams(self.h, self.c, self.cur, self.rng),
                        K.Forced(forced, max(0, int(n_forced) - t0), bool(score_forced),
                                 targets), ids.shape[1], ids, lp)
                if self.groups > 1:
                    K._generate_streams(self.groups, *args)
                else:
                    K._generate_kernel(*args)
            if self.tuner is not None:
                self.tuner.run(call, forced, targets, out_ids, out_lp)
            else:
                call(self.threads, forced, targets, 0, out_ids, out_lp)
        return out_ids[:, :n_steps], out_lp[:, :n_steps]

    @property
    def blas(self):
        """The product mode (its old name)."""
        return self.product

    def _check_start(self) -> None:
        """The ids the kernel reads first must index the weights, whatever a checkpoint
        claims (a bad id would read outside them)."""
        self._check_ids(self.cur)

    def prime_streams(self, ids) -> None:
        """Feed ids (N, P) (stream n gets row n); afterwards the next draw is from the
        distribution after the last primed symbol."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)                      # (N, P)
        if ids.ndim != 2 or ids.shape[0] != self.N:
            raise InputError(f"prime ids must have shape (N, P) with N = {self.N}")
        P = ids.shape[1]
        if P == 0:
            return
        self._check_ids(ids)
        self.cur[:] = ids[:, 0]
        if P > 1:
            self._run(np.ascontiguousarray(ids[:, 1:]), P - 1, False, P - 1)

    def prime(self, ids) -> None:
        """Feed the same ids (P,) to every stream: run once on a single stream (with that
        stream's matrix-product mode) and copy the state to all N."""
        self.prime_pieces([ids])

    def prime_pieces(self, pieces) -> None:
        """:meth:`prime` with the ids given as successive arrays, each fed in pieces of
        at most PRIME_PIECE: memory stays bounded however long the prime is."""
        if self.N > 1:
            one = Sampler(self.model, 1, weights=self.weights)
            one.prime_pieces(pieces)
            self.h[...] = one.h                                             # (L, N, H)
            self.c[...] = one.c
            self.cur[:] = one.cur[0]
            return
        started = False
        for ids in pieces:
            ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)            # (1, P)
            for a in range(0, ids.shape[1], PRIME_PIECE):
                piece = np.ascontiguousarray(ids[:, a:a + PRIME_PIECE])     # (1, p)
                if not started:
                    self.prime_streams(piece)
                    started = True
                else:                     # cur is fed first, then all of the piece
                    self._check_ids(piece)
                    self._run(piece, piece.shape[1], False, piece.shape[1])

    def generate(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self._run(self._no_forced, 0, False, int(n))

    def score_streams(self, seq) -> np.ndarray:
        """Teacher forcing through the same kernel: for seq (N, S) returns (N, S-1)
        log p(seq[:, t+1] | seq[:, :t+1]) (the state continues from the current one)."""
        seq = np.ascontiguousarray(seq, dtype=np.int64)                      # (N, S)
        if seq.ndim != 2 or seq.shape[0] != self.N or seq.shape[1] < 1:
            raise InputError(f"sequences must have shape (N, S) with N = {self.N}, S >= 1")
        self._check_ids(seq)
        self.cur[:] = seq[:, 0]
        S = seq.shape[1]
        _, lp = self._run(np.ascontiguousarray(seq[:, 1:]) if S > 1 else self._no_forced,
                          S - 1, True, S - 1)
        return lp

    def _check_ids(self, ids) -> None:
        V = self.model.config.vocab_size
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            raise InputError(f"symbol ids must be in [0, {V - 1}]")


#: fewest streams a thread of the generation loop gets
STREAMS_PER_THREAD = 4
#: prime ids fed per kernel call (a long --prime-file is read in pieces of this many)
PRIME_PIECE = 1 << 16


#: the choices of ``weights`` (``--weights``)
WEIGHTS = ("float32", "bf16", "int8")


def auto_product(H: int, N: int, threads: int | None = None):
    """The product mode (charrnn.kernels.modes.Product) for N float streams of a model H
    wide: the packed-weight kernel for several streams; for one, row dots, their rows
    split between the threads for a model wider than 256 on several threads (the same
    numbers as on one; LSTM 3x512 on an idle Zen 3: 1,596 chars/s against the packed
    kernel's 1,003), else on one thread."""
    from ..kernels.modes import Product

    if threads is None:
        from ..kernels import runtime
        threads = runtime.threads()
    if N > 1:
        return Product.PACKED
    return Product.THREADS if H > 256 and threads > 1 else Product.ROWS


def _greedy_at_zero(greedy, temperature) -> tuple[bool, float]:
    """Temperature 0 is greedy (the argmax; top-k and top-p cannot change it): the
    kernel gets greedy=True and a harmless temperature of 1 instead of dividing by 0."""
    if float(temperature) == 0.0:
        return True, 1.0
    return bool(greedy), float(temperature)


def default_context(model) -> int:
    """The id fed first when there is no prime: newline if known, else id 0."""
    vocab = getattr(model, "vocab", None)
    if vocab is not None and "\n" in vocab.stoi:
        return vocab.stoi["\n"]
    return 0


def draw_from_logits(logits, M: int, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0, greedy: bool = False, seed: int = 0) -> np.ndarray:
    """M draws (M,) int64 from one row of logits (V,) with the kernel's own draw code
    (for tests and for checking sampling settings)."""
    from ..kernels import sample as KS

    SampleConfig(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                 greedy=bool(greedy), seed=int(seed)).validate()
    greedy, temperature = _greedy_at_zero(greedy, temperature)
    z = np.ascontiguousarray(logits, dtype=np.float64)                       # (V,)
    out = np.empty(int(M), np.int64)                                         # (M,)
    KS._draw_repeat(z, int(M), KS.DrawOptions(temperature, int(top_k), float(top_p),
                                              bool(greedy)), seed_streams(seed, 1)[0], out)
    return out


# ---------------------------------------------------------------------- text

@dataclass
class SampleResult:
    """One finished sample."""

    index: int
    prime: str
    text: str                       # generated text (no prime, no stop string)
    logprobs: list = field(default_factory=list)
    stopped: bool = False

    @property
    def chars(self) -> int:
        return len(self.text)

    @property
    def mean_logprob(self) -> float | None:
        return float(np.mean(self.logprobs)) if self.logprobs else None

    def to_json(self) -> dict:
        mlp = self.mean_logprob
        if mlp is not None and not np.isfinite(mlp):
            mlp = None               # JSON has no NaN or Infinity
        return {"sample": self.index, "prime": self.prime, "text": self.text,
                "chars": self.chars,
                "mean_logprob": None if mlp is None else round(mlp, 6),
                "stopped": self.stopped}


class _StopScanner:
    """Finds a stop string across chunk boundaries; holds back a possible start of it."""

    def __init__(self, stop: str | None):
        self.stop = stop or None
        self.pending = ""            # text not yet released (could start the stop string)

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to release, whether the stop string was found)."""
        if self.stop is None:
            return text, False
        buf = self.pending + text
        pos = buf.find(self.stop)
        if pos >= 0:
            self.pending = ""
            return buf[:pos], True
        keep = 0
        for n in range(min(len(self.stop) - 1, len(buf)), 0, -1):
            if self.stop.startswith(buf[-n:]):
                keep = n
                break
        self.pending = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def encode_prime(vocab, prime: str, warn=None) -> np.ndarray:
    """Ids of the prime text, normalised first as the model's data was
    (:meth:`Vocab.normalize`: lower-cased after ``prepare --lowercase``): VocabError naming
    unknown characters, or, with an unknown symbol in the vocabulary, those mapped to it
    and a warning through ``warn``."""
    pieces = list(_prime_pieces(vocab, prime, warn))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)


def _prime_pieces(vocab, prime: str, warn=None):
    """The ids of ``prime`` (see :func:`encode_prime`), a piece of PRIME_PIECE characters
    at a time; one warning at the end for characters read as the unknown symbol."""
    n_unknown, missing = 0, set()
    for a in range(0, len(prime), PRIME_PIECE):
        text = vocab.normalize(prime[a:a + PRIME_PIECE])
        if vocab.unk is not None:
            n = vocab.count_unknown(text)
            if n:
                n_unknown += n
                missing.update(vocab.missing(text))
        yield vocab.encode(text, what="prime text").astype(np.int64)
    if n_unknown and warn is not None:
        shown = ", ".join(repr(c) for c in sorted(missing)[:5])
        warn(f"prime text has {n_unknown} character(s) not in the model's vocabulary "
             f"({shown}); they are read as the unknown symbol")


def generate_text(model, length: int, prime: str = "", num_samples: int = 1,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  greedy: bool = False, seed: int = 0, stop: str | None = None,
                  chunk: int = CHUNK, blas: bool | None = None, warn=None,
                  weights: str = "float32"):
    """Generate ``num_samples`` samples of ``length`` characters as one batch.

    Checks the arguments and primes the state at once (errors are raised here), then
    returns a generator of events, in order, so callers can stream:
    ``("text", i, piece)`` new text of sample i (prime excluded, stop handled) and
    ``("done", i, SampleResult)`` when sample i is complete.  Every chunk of ``chunk``
    characters is one kernel call for all samples."""
    if model.vocab is None:
        raise InputError("the checkpoint has no vocabulary, so its ids cannot be turned "
                         "into text")
    if length < 0:
        raise ConfigError(f"length must be >= 0 (got {length})")
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1 (got {chunk})")
    vocab = model.vocab
    s = Sampler(model, num_samples, temperature, top_k, top_p, greedy, seed, blas,
                weights=weights)
    s.prime_pieces(_prime_pieces(vocab, prime, warn))
    return _events(s, vocab, length, prime, stop, chunk)


def _events(s: Sampler, vocab, length: int, prime: str, stop, chunk: int):
    N = s.N
    scanners = [_StopScanner(stop) for _ in range(N)]
    texts = [[] for _ in range(N)]
    lps = [[] for _ in range(N)]
    active = np.ones(N, bool)
    made = 0
    itos = np.array(vocab.itos, dtype=object)
    while made < length and active.any():
        n = min(chunk, length - made)
        out_ids, out_lp = s.generate(n)                                      # (N, n) each
        made += n
        for i in np.flatnonzero(active):
            piece = "".join(itos[out_ids[i]])
            ok, hit = scanners[i].feed(piece)
            if hit:
                active[i] = False
            if ok:
                texts[i].append(ok)
                yield ("text", int(i), ok)
            # log-probabilities of the characters kept so far (released or pending)
            kept = sum(len(p) for p in texts[i]) + len(scanners[i].pending)
            lps[i].extend(out_lp[i].tolist())
            del lps[i][kept:]
            if not active[i]:
                yield ("done", int(i), SampleResult(int(i), prime, "".join(texts[i]),
                                                    lps[i], stopped=True))
    for i in np.flatnonzero(active):
        rest = scanners[i].flush()
        if rest:
            texts[i].append(rest)
            yield ("text", int(i), rest)
        yield ("done", int(i), SampleResult(int(i), prime, "".join(texts[i]), lps[i]))


def sample_text(model, length: int, **kw) -> list[SampleResult]:
    """All samples at once (no streaming): a list of SampleResult, by index."""
    done = {}
    for kind, i, val in generate_text(model, length, **kw):
        if kind == "done":
            done[i] = val
    return [done[i] for i in sorted(done)]


__all__ = ["Sampler", "PackedWeights", "pack_weights", "seed_streams", "draw_from_logits",
           "generate_text", "sample_text", "SampleResult", "encode_prime", "default_context",
           "CHUNK", "WEIGHTS"]
