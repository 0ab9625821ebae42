"""Scoring text with a model: loss (nats/char), bits per character, perplexity.

Everything runs through the batched forward pass (:meth:`Model.log_probs` over (B, T)
windows, the state carried from one window to the next), never the per-step sampling
kernel.

Conventions:

* Text INPUT is read by the rule prepare reads text with
  (:func:`charrnn.store.data.decode_stream`: ``encoding``/``errors``, a leading byte order
  mark dropped, NUL bytes near the start refused as binary) and normalised as the
  model's vocabulary says (:meth:`charrnn.store.vocab.Vocab.normalize`: lower-cased when the
  data was prepared with --lowercase) before it is encoded; ``--lines`` prints each line
  as it was read.
* A text is read as the continuation of a newline (or, if the vocabulary has none, of
  its first symbol; see :func:`charrnn.sampling.default_context`): that context symbol
  is fed first and EVERY character of the text is scored, so ``chars`` is the number of
  characters scored.  Several INPUT files are one text, concatenated (like ``cat``).
* Long texts are read and scored in pieces with the state carried across them, so
  scoring in windows of any size gives the one-pass result (up to float rounding).
* Characters outside the vocabulary are counted (``unknown``); with an unknown symbol
  in the vocabulary they are scored as it, otherwise they are left out of the text (the
  model reads the text without them) and a warning says how many.
* ``--lines``: each line (without its line terminator) is scored on its own, after the
  context symbol from a fresh state, or with ``carry`` as a part of the whole text
  (state carried; the newlines are read but not scored).  Lines are scored in batches
  (padded) for speed, and a line longer than :data:`LONG_LINE` characters is read and
  scored in pieces, its text spooled to a temporary file, so memory stays bounded
  even for a 1 GB line without a newline.
* ``--streams N`` (:class:`PieceScorer`): the text in pieces of :data:`PIECE`
  characters, N of them side by side as the rows of one batch, each from a fresh state
  that first reads the :data:`WARMUP` characters before it; close to the one pass, not
  equal to it, and several times faster on more than one core.
* ``--data DIR --split S``: the prepared split's token ids, laid out by
  :func:`charrnn.store.data.iter_eval_batches` as in training's validation (its n - 1
  predictions; the first token is context).
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

from .errors import DataError, InputError

WINDOW = 256            # T of one forward call on a single stream
READ_BYTES = 1 << 20    # bytes read at a time
LINE_BATCH = 64         # lines scored together in --lines mode
CALL_STEPS = LINE_BATCH * WINDOW  # rows x steps of one batched forward call, at most
LONG_LINE = 8192        # lines longer than this are scored alone, in pieces
PENDING_CHARS = 1 << 17  # complete lines held (then sorted by length, batched, written)
SPOOL_CHARS = 1 << 22   # a line's text beyond this many characters goes to a temp file
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


# ---------------------------------------------------------------------- encoding

class Encoder:
    """Text -> ids with this module's policy for characters outside the vocabulary, after
    the vocabulary's normalisation (:meth:`Vocab.normalize`)."""

    def __init__(self, vocab):
        self.vocab = vocab
        self.unk_id = vocab.unk_id
        top = max(max(ord(c) for c in vocab.chars), 0)
        table = np.full(top + 1, -1, np.int64)              # (max code point + 1,)
        for i, ch in enumerate(vocab.chars):
            table[ord(ch)] = i
        self.table = table

    def encode(self, text: str, score: Score) -> np.ndarray:
        """Ids (n',) int64; counts unknown characters into ``score``."""
        from .store.vocab import codepoints

        cps = codepoints(self.vocab.normalize(text))        # (n,)
        inside = cps < len(self.table)
        ids = np.full(cps.shape, -1, np.int64)              # (n,)
        ids[inside] = self.table[cps[inside]]
        bad = ids < 0
        if bad.any():
            score.unknown += int(bad.sum())
            if len(score.unknown_chars) < 5:
                score.unknown_chars |= {chr(c) for c in np.unique(cps[bad])[:5]}
            if self.unk_id is not None:
                ids[bad] = self.unk_id
            else:
                ids = ids[~bad]
        return ids


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
    from .sampling import default_context

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


# ---------------------------------------------------------------------- inputs

def _open_input(name: str):
    """A binary file object for a path or '-' (stdin), and a display name."""
    if name == "-":
        return sys.stdin.buffer, "standard input", False
    try:
        if os.path.isdir(name):
            raise InputError(f"{name}: is a directory (give text files, or --data DIR)")
        return open(name, "rb"), name, True
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except OSError as e:
        raise InputError(f"{name}: cannot read ({e.strerror or e})") from None


def iter_text(names, read_bytes: int = READ_BYTES, eager: bool = False,
              encoding: str = "utf-8", errors: str = "strict"):
    """Decoded text of the inputs, piece by piece, each input read by
    :func:`charrnn.store.data.decode_stream` (the rule prepare reads text with: a bad byte is
    an InputError with its offset when ``errors`` is "strict", a leading byte order mark
    is dropped, a NUL byte near the start is refused as binary).  ``eager`` returns
    whatever a pipe has ready (``read1``) instead of waiting for ``read_bytes``, so a
    slow writer's lines are answered as they come."""
    from .store.data import codec_name, decode_stream

    codec_name(encoding)                   # an unknown encoding before anything is read
    for name in names:
        f, shown, close = _open_input(name)
        try:
            reader = getattr(f, "read1", f.read) if eager else f.read
            blocks = iter(lambda: reader(read_bytes), b"")
            for _raw, text in decode_stream(blocks, shown, encoding, errors):
                if text:
                    yield text
        finally:
            if close:
                f.close()


def _warn_unknown(score: Score, vocab, warn) -> None:
    if not score.unknown or warn is None:
        return
    shown = ", ".join(repr(c) for c in sorted(score.unknown_chars)[:5])
    if vocab.unk_id is not None:
        warn(f"{score.unknown} character(s) not in the model's vocabulary ({shown}) were "
             "scored as the unknown symbol")
    else:
        warn(f"{score.unknown} character(s) not in the model's vocabulary ({shown}) were "
             "left out of the score")


def _scorer(model, window: int, streams: int):
    from .sampling import default_context

    _need_vocab(model)
    if streams > 1:
        return PieceScorer(model, default_context(model), streams, window=window)
    return StreamScorer(model, default_context(model), window)


def evaluate_files(model, names, warn=None, window: int = WINDOW, streams: int = 1,
                   encoding: str = "utf-8", errors: str = "strict") -> Score:
    """Score the concatenation of the input files ('-' = stdin) as one text: in one
    stream, or with ``streams`` > 1 in pieces side by side (:class:`PieceScorer`)."""
    sc = _scorer(model, window, streams)
    enc = Encoder(model.vocab)
    for text in iter_text(names, encoding=encoding, errors=errors):
        sc.feed(enc.encode(text, sc.score))
    score = sc.finish()
    _warn_unknown(score, model.vocab, warn)
    return score


def evaluate_text(model, text: str, window: int = WINDOW, streams: int = 1) -> Score:
    """Score one in-memory text (same conventions as the files)."""
    sc = _scorer(model, window, streams)
    sc.feed(Encoder(model.vocab).encode(text, sc.score))
    return sc.finish()


class ScoringStopped(Exception):
    """:func:`score_tokens` was asked to stop part-way (a signal, a deadline)."""


def score_tokens(model, tokens, batch_size: int, seq_len: int, lut=None, comm=None,
                 should_stop=None, max_steps: int | None = None) -> Score:
    """Every next-character prediction of a prepared split, scored once: the one
    definition shared by training's validation and ``charrnn eval --split``.

    The n - 1 predictions are laid out by :func:`charrnn.store.data.iter_eval_batches`: B
    streams walked T steps at a time with the state carried, then the few trailing
    pairs as one more stream.  ``lut`` maps the data's ids to the model's.  With
    ``comm`` (MPI; a collective) each rank scores its share of the B streams (rank 0
    the trailing stream too) and the totals are summed, so every rank gets the same
    Score.  ``should_stop`` is asked between windows (ScoringStopped when it says
    yes).  ``max_steps`` scores only the first positions of the B streams (the same
    characters every time) and no trailing stream: a part of the split."""
    from .store.data import iter_eval_batches

    S = (len(tokens) - 1) // int(batch_size)                # positions of each B stream
    n_main = -(-S // int(seq_len)) if S > 0 else 0          # windows of the B streams
    score = Score()
    state = None
    for k, (x, y) in enumerate(iter_eval_batches(tokens, batch_size, seq_len)):
        tail = k >= n_main
        if k == n_main:
            state = None                                    # the trailing stream: fresh
            if max_steps is not None and n_main > 0:
                break
        t0 = k * int(seq_len)
        if max_steps is not None and not tail and t0 >= max_steps:
            break
        if should_stop is not None and should_stop():
            raise ScoringStopped
        if comm is not None:
            B = x.shape[0]
            lo, hi = ((0, 1) if comm.rank == 0 else (0, 0)) if tail else \
                (B * comm.rank // comm.size, B * (comm.rank + 1) // comm.size)
            x, y = x[lo:hi], y[lo:hi]
        if x.shape[0] == 0:
            continue
        if max_steps is not None and not tail and t0 + x.shape[1] > max_steps:
            x, y = x[:, :max_steps - t0], y[:, :max_steps - t0]
        if lut is not None:
            x, y = lut[x], lut[y]
        lp, state = model.log_probs(x, y, state)                         # (b, w)
        score.nll -= float(lp.sum())
        score.chars += lp.size
    if comm is not None:
        score.nll = comm.allreduce_sum(score.nll)
        score.chars = int(round(comm.allreduce_sum(float(score.chars))))
    return score


def evaluate_split(model, data_dir, split: str = "val", batch_size: int = 50,
                   seq_len: int = WINDOW) -> Score:
    """Score a prepared split exactly as training's validation does
    (:func:`score_tokens`: its n - 1 predictions)."""
    try:
        from .store.data import Dataset
    except ImportError:  # pragma: no cover - data.py ships with charrnn
        raise DataError("this charrnn cannot read prepared data directories") from None
    ds = Dataset(data_dir)
    lut = _data_lut(ds.vocab, model, data_dir)
    tokens = ds.split(split)
    if len(tokens) < 2:
        raise DataError(f"{data_dir}: the {split} split has {len(tokens)} characters; "
                        "nothing to score")
    return score_tokens(model, tokens, batch_size, seq_len, lut)


def _data_lut(dvocab, model, data_dir) -> np.ndarray | None:
    """Data ids -> model ids when the vocabularies differ (None when they are equal)."""
    mv = model.vocab
    if mv is None:
        if len(dvocab) != model.config.vocab_size:
            raise DataError(f"{data_dir}: its vocabulary has {len(dvocab)} symbols, the "
                            f"model {model.config.vocab_size}")
        return None
    if dvocab == mv:
        return None
    lut = np.empty(len(dvocab), np.int64)                               # (V_data,)
    missing = []
    for i, ch in enumerate(dvocab.itos):
        j = mv.stoi.get(ch) if not (dvocab.unk is not None and ch == dvocab.unk) else mv.unk_id
        if j is None:
            j = mv.unk_id
            if j is None:
                missing.append(ch)
                continue
        lut[i] = j
    if missing:
        shown = ", ".join(repr(c) for c in missing[:5])
        raise DataError(f"{data_dir}: its vocabulary has characters the model does not know "
                        f"({shown}); score text files instead")
    return lut


def _need_vocab(model) -> None:
    if model.vocab is None:
        raise InputError("the checkpoint has no vocabulary, so it cannot read text")


# ---------------------------------------------------------------------- lines

class _LineText:
    """The text of one line, in memory up to SPOOL_CHARS, then in a temp file."""

    def __init__(self):
        self.parts: list[str] = []
        self.size = 0
        self.file = None

    def add(self, s: str) -> None:
        if not s:
            return
        if self.file is None and self.size + len(s) > SPOOL_CHARS:
            self.file = tempfile.TemporaryFile("w+", encoding="utf-8", newline="")
            self.file.write("".join(self.parts))
            self.parts = []
        if self.file is not None:
            self.file.write(s)
        else:
            self.parts.append(s)
        self.size += len(s)

    def write_to(self, out) -> None:
        if self.file is None:
            out.write("".join(self.parts))
            return
        self.file.seek(0)
        while True:
            block = self.file.read(1 << 20)
            if not block:
                break
            out.write(block)
        self.file.close()


class _JSONEscaper:
    """A text sink that writes what it gets as the inside of a JSON string."""

    def __init__(self, out):
        self.out = out

    def write(self, s: str) -> None:
        import json

        self.out.write(json.dumps(s, ensure_ascii=False)[1:-1])


def _format_line(score: Score) -> str:
    bpc = score.bpc
    return "nan" if math.isnan(bpc) else f"{bpc:.4f}"


class _OpenLine:
    """A line being read piece by piece (long lines, and every line with --carry)."""

    def __init__(self, scorer: StreamScorer):
        self.scorer = scorer
        self.text = _LineText()
        self.score = Score()


class LineScorer:
    """--lines: scores each line and writes ``bpc<TAB>chars<TAB>line`` per line, in order.

    Feed decoded text with :meth:`feed` (pieces may end anywhere, even inside a line),
    then :meth:`finish`.  Complete short lines are scored together (B lines padded to
    one T, one forward call); a line that grows past LONG_LINE characters is scored
    alone in pieces, from a fresh state.  With ``carry`` every line is scored in pieces
    by one stream whose state runs through the whole input (newlines read, not scored).
    """

    def __init__(self, model, out, carry: bool = False, batch: int = LINE_BATCH,
                 window: int = WINDOW, as_json: bool = False):
        from .sampling import default_context

        _need_vocab(model)
        self.model = model
        self.out = out
        self.as_json = as_json
        self.carry = carry
        self.batch = int(batch)
        self.window = int(window)
        self.enc = Encoder(model.vocab)
        self.context = default_context(model)
        self.newline = model.vocab.stoi.get("\n")
        self.total = Score()
        self.pending: list[tuple[str, np.ndarray, Score]] = []
        self.pending_chars = 0
        self.partial: list[str] = []          # the current short line's text so far
        self.partial_len = 0
        self.open: _OpenLine | None = None     # the current line when read in pieces
        self.stream = StreamScorer(model, self.context, window) if carry else None
        self.lines = 0

    # -- output -----------------------------------------------------------------
    def _emit(self, sc: Score, text) -> None:
        self.total.add(sc)
        self.lines += 1
        if self.as_json:
            import json

            head = json.dumps({**sc.to_json(), "line": ""}, ensure_ascii=False)
            self.out.write(head[:-2])                  # up to the opening quote of "line"
            if isinstance(text, _LineText):            # a long line: escaped block by block
                text.write_to(_JSONEscaper(self.out))
            else:
                self.out.write(json.dumps(text, ensure_ascii=False)[1:-1])
            self.out.write('"}\n')
            return
        self.out.write(f"{_format_line(sc)}\t{sc.chars}\t")
        if isinstance(text, _LineText):
            text.write_to(self.out)
        else:
            self.out.write(text)
        self.out.write("\n")

    def _flush_batch(self) -> None:
        """Score the pending complete lines and write them, in input order.

        Lines are sorted by length and cut into batches of at most ``batch`` lines, so
        that padding a batch to its longest line wastes little."""
        if not self.pending:
            return
        lens = np.array([len(ids) for _, ids, _ in self.pending])            # (n,)
        order = np.argsort(lens, kind="stable")
        for lo in range(0, len(order), self.batch):
            self._score_group([self.pending[i] for i in order[lo:lo + self.batch]])
        for text, _ids, sc in self.pending:
            self._emit(sc, text)
        self.pending = []
        self.pending_chars = 0

    def _score_group(self, group) -> None:
        """The lines of ``group`` as the rows of one batch (:func:`score_rows`), each
        read after the context symbol."""
        rows = [np.concatenate([[self.context], ids]) for _, ids, _ in group]
        nll = score_rows(self.model, rows, [len(ids) for _, ids, _ in group], self.window)
        for b, (_, ids, sc) in enumerate(group):
            sc.nll = float(nll[b])
            sc.chars = len(ids)

    # -- lines --------------------------------------------------------------------
    def _start_open(self) -> None:
        """The current line continues in pieces from here on."""
        self._flush_batch()
        scorer = self.stream if self.carry else StreamScorer(self.model, self.context,
                                                             self.window)
        self.open = _OpenLine(scorer)
        text = "".join(self.partial)
        self.partial, self.partial_len = [], 0
        self._open_piece(text)

    def _open_piece(self, text: str) -> None:
        if not text:
            return
        ol = self.open
        ids = self.enc.encode(text, ol.score)
        ol.score.nll += ol.scorer.feed(ids)
        ol.score.chars += len(ids)
        ol.text.add(text)

    def _end_line(self) -> None:
        """The current line is complete (its newline was seen, or the input ended)."""
        if self.open is None and not self.carry:
            text = "".join(self.partial)
            self.partial, self.partial_len = [], 0
            sc = Score()
            self.pending.append((text, self.enc.encode(text, sc), sc))
            self.pending_chars += len(text)
            if self.pending_chars > PENDING_CHARS:
                self._flush_batch()
            return
        if self.open is None:
            self._start_open()
        ol = self.open
        self.open = None
        if self.carry and self.newline is not None:
            ol.scorer.feed(np.array([self.newline], np.int64), scored=0)
        self._emit(ol.score, ol.text)

    def feed(self, text: str) -> None:
        """A piece of the input text."""
        parts = text.split("\n")
        for k, part in enumerate(parts):
            if self.open is not None:
                self._open_piece(part)
            elif part:
                self.partial.append(part)
                self.partial_len += len(part)
                if self.carry or self.partial_len > LONG_LINE:
                    self._start_open()
            if k < len(parts) - 1:
                self._end_line()

    def end_of_chunk(self) -> None:
        """Score and write what is complete (called after each read)."""
        self._flush_batch()
        self.out.flush()

    def finish(self) -> Score:
        if self.open is not None or self.partial:
            self._end_line()              # a last line without a newline
        self._flush_batch()
        self.out.flush()
        return self.total


def evaluate_lines(model, names, out, carry: bool = False, warn=None,
                   read_bytes: int = 1 << 16, as_json: bool = False,
                   encoding: str = "utf-8", errors: str = "strict") -> Score:
    """--lines over the inputs ('-' = stdin), streaming: each read is scored and written
    before the next (a slow pipe gets its lines back as they come)."""
    ls = LineScorer(model, out, carry=carry, as_json=as_json)
    for text in iter_text(names, read_bytes, eager=True, encoding=encoding, errors=errors):
        ls.feed(text)
        ls.end_of_chunk()
    total = ls.finish()
    _warn_unknown(total, model.vocab, warn)
    return total


__all__ = ["Score", "Encoder", "StreamScorer", "PieceScorer", "LineScorer", "score_ids",
           "score_rows", "evaluate_files", "evaluate_text", "evaluate_split",
           "evaluate_lines", "iter_text", "WINDOW", "PIECE", "WARMUP"]
