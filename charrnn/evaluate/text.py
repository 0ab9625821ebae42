"""Text INPUT: reading it (:func:`iter_text`), encoding it (:class:`Encoder`) and
scoring it as one text (:func:`evaluate_files`, :func:`evaluate_text`).  The package
docstring has the conventions."""
from __future__ import annotations

import os
import sys

import numpy as np

from ..errors import InputError
from .score import WINDOW, PieceScorer, Score, StreamScorer

READ_BYTES = 1 << 20    # bytes read at a time


# ---------------------------------------------------------------------- encoding

class Encoder:
    """Text -> ids with this package's policy for characters outside the vocabulary
    (counted into the Score; scored as the unknown symbol when the vocabulary has one,
    else left out), after the vocabulary's normalisation (:meth:`Vocab.normalize`); the
    ids come from the vocabulary's one table (:meth:`Vocab.lookup`)."""

    def __init__(self, vocab):
        self.vocab = vocab
        self.unk_id = vocab.unk_id

    def encode(self, text: str, score: Score) -> np.ndarray:
        """Ids (n',) int64; counts unknown characters into ``score``."""
        from ..store.vocab import codepoints

        cps = codepoints(self.vocab.normalize(text))        # (n,)
        ids = self.vocab.lookup(cps)                        # (n,), -1 outside
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
    :func:`charrnn.store.text.decode_stream` (the rule prepare reads text with: a bad byte is
    an InputError with its offset when ``errors`` is "strict", a leading byte order mark
    is dropped, a NUL byte near the start is refused as binary).  ``eager`` returns
    whatever a pipe has ready (``read1``) instead of waiting for ``read_bytes``, so a
    slow writer's lines are answered as they come; its reads start at 4 KiB and double
    up to ``read_bytes``, so a fast writer's first lines are answered at once too."""
    from ..store.text import codec_name, decode_stream

    codec_name(encoding)                   # an unknown encoding before anything is read
    for name in names:
        f, shown, close = _open_input(name)
        try:
            blocks = _eager_blocks(f, read_bytes) if eager else \
                iter(lambda: f.read(read_bytes), b"")
            for _raw, text in decode_stream(blocks, shown, encoding, errors):
                if text:
                    yield text
        finally:
            if close:
                f.close()


def _eager_blocks(f, read_bytes: int):
    """What ``f`` has ready, in reads of 4 KiB growing to ``read_bytes``."""
    reader = getattr(f, "read1", f.read)
    size = min(4096, read_bytes)
    while True:
        block = reader(size)
        if not block:
            return
        yield block
        size = min(2 * size, read_bytes)


def warn_unknown(score: Score, vocab, warn) -> None:
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
    from ..sampling import default_context

    need_vocab(model)
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
    warn_unknown(score, model.vocab, warn)
    return score


def evaluate_text(model, text: str, window: int = WINDOW, streams: int = 1) -> Score:
    """Score one in-memory text (same conventions as the files)."""
    sc = _scorer(model, window, streams)
    sc.feed(Encoder(model.vocab).encode(text, sc.score))
    return sc.finish()


def need_vocab(model) -> None:
    if model.vocab is None:
        raise InputError("the checkpoint has no vocabulary, so it cannot read text")


__all__ = ["Encoder", "iter_text", "evaluate_files", "evaluate_text", "READ_BYTES"]
