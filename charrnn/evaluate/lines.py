"""``--lines``: every line of the input scored on its own (or, with ``carry``, as a part
of the whole text), written as it is scored.  The package docstring has the conventions."""
from __future__ import annotations

import math
import tempfile

import numpy as np

from .score import LINE_BATCH, WINDOW, Score, StreamScorer, score_rows
from .text import Encoder, need_vocab, warn_unknown, iter_text

LONG_LINE = 8192        # lines longer than this are scored alone, in pieces
PENDING_CHARS = 1 << 17  # complete lines held (then sorted by length, batched, written)
SPOOL_CHARS = 1 << 22   # a line's text beyond this many characters goes to a temp file


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
        from ..sampling import default_context

        need_vocab(model)
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
    warn_unknown(total, model.vocab, warn)
    return total


__all__ = ["LineScorer", "evaluate_lines", "LONG_LINE", "PENDING_CHARS", "SPOOL_CHARS"]
