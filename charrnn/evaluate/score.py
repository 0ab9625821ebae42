"""Scores and the scorers of one text: :class:`Score` (nats, bpc, perplexity),
:class:`StreamScorer` (one stream, the state carried: the exact pass),
:func:`score_rows` (independent sequences as the rows of one batch) and
:class:`PieceScorer` (``--streams N``).  The package docstring has the conventions."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

WINDOW = 256            # T of one forward call on a single stream
LINE_BATCH = 64         # lines scored together in --lines mode
CALL_STEPS = LINE_BATCH * WINDOW  # rows x steps of one batched forward call, at most
PIECE = 8192            # characters of one piece with --streams (see PieceScorer)
WARMUP = 256            # characters a piece reads, unscored, before its own
LN2 = math.log(2.0)


@dataclass
class Score:
    """Sum of negative log-likelihoods (nats) over ``chars`` scored characters."""

    nll: float = 0.0
    chars: int = 0
    unknown: int = 0
    unknown_chars: set = field(default_factory=set)

    def add(self, other: "Score") -> None:
        self.nll += other.nll
        self.chars += other.chars
        self.unknown += other.unknown
        self.unknown_chars |= other.unknown_chars

    @property
    def loss(self) -> float:
        return self.nll / self.chars if self.chars else float("nan")

    @property
    def bpc(self) -> float:
        return self.loss / LN2

    @property
    def perplexity(self) -> float:
        loss = self.loss
        if math.isnan(loss):
            return float("nan")
        return math.exp(loss) if loss < 700 else float("inf")

    def to_json(self) -> dict:
        def num(x):
            return None if (math.isnan(x) or math.isinf(x)) else round(x, 6)
        return {"loss": num(self.loss), "bpc": num(self.bpc),
                "perplexity": num(self.perplexity), "chars": self.chars,
                "unknown": self.unknown}

    def line(self) -> str:
        """The plain output line, e.g.
        ``loss 1.2345 nats/char  bpc 1.7810  perplexity 3.44  chars 12345``
        (``  unknown N`` appended when characters were outside the vocabulary)."""
        s = (f"loss {self.loss:.4f} nats/char  bpc {self.bpc:.4f}  "
             f"perplexity {self.perplexity:.2f}  chars {self.chars}")
        if self.unknown:
            s += f"  unknown {self.unknown}"
        return s


def require_finite(score: Score) -> None:
    """InputError when the model's loss is not a finite number (overflowing weights)."""
    if not math.isfinite(score.nll):
        raise InputError(f"the model's loss on this text is not a finite number "
                         f"({score.nll / max(score.chars, 1)}): its weights overflow; "
                         "the checkpoint is unusable")


# ---------------------------------------------------------------------- scoring a stream

class StreamScorer:
    """Scores one continuing stream of ids fed in pieces, the state carried throughout.

    ``feed(ids)`` scores every id given the ones before it (the first from ``context``);
    the total is in ``score``."""

    def __init__(self, model, context: int, window: int = WINDOW):
        self.model = model
        self.window = int(window)
        self.state = None
        self.last = int(context)
        self.score = Score()

    def feed(self, ids: np.ndarray, scored: int | None = None) -> float:
        """Reads ids (n,) and scores the first ``scored`` of them (default all); returns
        their summed nll (nats)."""
        n = len(ids)
        k = n if scored is None else int(scored)
        if n == 0:
            return 0.0
        seq = np.empty(n + 1, np.int64)                     # (n+1,)
        seq[0] = self.last
        seq[1:] = ids
        total = 0.0
        T = self.window
        for lo in range(0, n, T):
            hi = min(n, lo + T)
            lp, self.state = self.model.log_probs(seq[None, lo:hi], seq[None, lo + 1:hi + 1],
                                                  self.state)          # (1, w)
            if hi <= k:
                total -= float(lp.sum())
            elif lo < k:
                total -= float(lp[0, :k - lo].sum())
        self.last = int(seq[-1])
        self.score.nll += total
        self.score.chars += k
        return total

    def finish(self) -> Score:
        """The total (every id was scored as it was fed)."""
        return self.score


def score_ids(model, ids, context: int | None = None, window: int = WINDOW) -> Score:
    """Score a whole id sequence (n,) as one stream after ``context``."""
    from ..sampling import default_context

    sc = StreamScorer(model, default_context(model) if context is None else context, window)
    sc.feed(np.asarray(ids, np.int64))
    return sc.score


def score_rows(model, rows, scored, window: int = WINDOW) -> np.ndarray:
    """Independent sequences as the rows of one batch, each from a fresh state: row b
    is a 1-D id array whose first id is read only, the others are predicted, and the
    last ``scored[b]`` predictions are summed.  Returns the (B,) nll sums (nats).

    Rows are left-aligned and padded at the end, and read in windows of at most
    ``window`` steps with the state carried, and fewer (down to 32) when B * window
    would pass :data:`CALL_STEPS`: the model's buffers grow with B * window, not with
    the longest row (one forward over a batch of 8000-character lines took 2.5 GB with
    an LSTM 2x256)."""
    B = len(rows)
    window = min(window, max(32, CALL_STEPS // B // 32 * 32))
    T = max(len(r) - 1 for r in rows)
    nll = np.zeros(B)                                                    # (B,)
    if T <= 0:
        return nll
    Tp = -(-T // 32) * 32                  # few distinct shapes: the model keeps buffers
    x = np.zeros((B, Tp), np.int64)                                      # (B, Tp)
    y = np.zeros((B, Tp), np.int64)                                      # (B, Tp)
    mask = np.zeros((B, Tp), bool)                                       # (B, Tp)
    for b, r in enumerate(rows):
        n = len(r) - 1
        x[b, :n] = r[:-1]
        y[b, :n] = r[1:]
        mask[b, n - scored[b]:n] = True
    state = None
    for lo in range(0, Tp, window):
        hi = min(Tp, lo + window)
        lp, state = model.log_probs(x[:, lo:hi], y[:, lo:hi], state)    # (B, w)
        nll -= np.where(mask[:, lo:hi], lp, 0.0).sum(axis=1)
    return nll


class PieceScorer:
    """``--streams N``: one stream of ids scored N pieces at a time, approximately.

    The text is cut into pieces of ``piece`` ids, scored as the rows of one batch
    (:func:`score_rows`), N rows per batch, so the N pieces' steps run side by side
    (the time loops split rows between threads; one stream has a single row).  Each
    piece starts from a fresh state and first reads the ``warmup`` + 1 ids before it,
    predicting ``warmup`` of them unscored; a piece that starts within that distance of
    the beginning reads everything before it after the context symbol, exactly as
    :class:`StreamScorer` does.  Every id is scored once.  Only the state a piece
    builds in its warm-up differs from the one pass; the pieces' scores do not depend
    on N or on how the ids are fed.  Memory: N pieces and one warm-up of ids, plus
    what one ``feed`` brings.  :meth:`finish` scores what is left."""

    def __init__(self, model, context: int, streams: int, piece: int = PIECE,
                 warmup: int = WARMUP, window: int = WINDOW):
        if streams < 1 or piece < 1 or warmup < 0:
            raise ValueError("streams and piece must be >= 1, warmup >= 0")
        self.model = model
        self.context = int(context)
        self.streams, self.piece, self.warmup = int(streams), int(piece), int(warmup)
        self.window = int(window)
        self.buf = np.empty(0, np.int64)       # ids from index `start` of the stream on
        self.start = 0
        self.done = 0                          # ids before this index are scored
        self.score = Score()

    def feed(self, ids: np.ndarray) -> None:
        self.buf = np.concatenate([self.buf, np.asarray(ids, np.int64)])
        batch = self.streams * self.piece
        while self.start + len(self.buf) - self.done >= batch:
            self._score(batch)

    def finish(self) -> Score:
        rest = self.start + len(self.buf) - self.done
        if rest:
            self._score(rest)
        return self.score

    def _score(self, n: int) -> None:
        rows, scored = [], []
        for s in range(self.done, self.done + n, self.piece):
            p = min(self.piece, self.done + n - s)
            w0 = max(0, s - self.warmup - 1)         # ids[s-1] is the first one's input
            seg = self.buf[w0 - self.start:s + p - self.start]              # (s+p-w0,)
            rows.append(np.concatenate([[self.context], seg]) if w0 == 0 else seg)
            scored.append(p)
        self.score.nll += float(score_rows(self.model, rows, scored, self.window).sum())
        self.score.chars += n
        self.done += n
        keep = max(self.start, self.done - self.warmup - 1)
        self.buf = self.buf[keep - self.start:]
        self.start = keep


__all__ = ["Score", "require_finite", "StreamScorer", "PieceScorer", "score_ids",
           "score_rows", "WINDOW", "LINE_BATCH", "CALL_STEPS", "PIECE", "WARMUP", "LN2"]
