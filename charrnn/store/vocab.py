"""Vocabulary: Unicode code points <-> symbol ids.

A vocabulary is the list of its characters in id order, plus optionally one *unknown*
symbol that every character outside the list maps to (made by ``prepare --min-count`` or
``--max-vocab``).  The unknown symbol is always the last id.  Ids are assigned in
code-point order, so the same set of characters always gives the same ids.

On disk (``vocab.json``, and the ``vocab`` metadata of a checkpoint)::

    {"version": 1, "chars": ["\\n", " ", "!", ...], "unk": "\\ufffd" | null,
     "lowercase": true}

A vocabulary also carries how text was normalised before it was counted, so that every
reader of text (``prepare``, ``eval``, ``sample --prime``) does the same to it
(:meth:`Vocab.normalize`): ``lowercase`` (``prepare --lowercase``).  The field is written
only when it is true: a file without it means false, so vocabularies of earlier versions
load, and one without lowercasing is the same file as before.

Encoding a text of n characters is a table lookup over its code points (no Python loop
per character).
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

from ..errors import VocabError

VOCAB_VERSION = 1
UNK_DEFAULT = "\ufffd"       # the replacement character stands for "unknown"
_MAX_CODEPOINT = 0x10FFFF


def codepoints(text: str) -> np.ndarray:
    """The code points of ``text`` as a (n,) uint32 array (one vectorised conversion)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def token_dtype(size: int) -> np.dtype:
    """The smallest unsigned dtype holding ids 0..size-1."""
    if size <= 256:
        return np.dtype(np.uint8)
    if size <= 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def normalize_text(text: str, lowercase: bool) -> str:
    """The one normalisation of text before it is counted or encoded (prepare, eval and
    sample all call this): ``lowercase`` folds case with :meth:`str.lower`.  Nothing else
    is changed: line ends stay as they are (CRLF is two characters)."""
    return text.lower() if lowercase else text


def _show(chars: Iterable[str], limit: int = 5) -> str:
    chars = list(chars)
    shown = ", ".join(repr(c) for c in chars[:limit])
    if len(chars) > limit:
        shown += f" (and {len(chars) - limit} more)"
    return shown


class Vocab:
    """Characters in id order and an optional unknown symbol (the last id); ``lowercase``:
    the text this vocabulary reads is folded to lower case first (:meth:`normalize`)."""

    def __init__(self, chars: Iterable[str], unk: str | None = None, lowercase: bool = False):
        chars = list(chars)
        if not isinstance(lowercase, bool):
            raise VocabError(f"the vocabulary's 'lowercase' must be true or false "
                             f"(got {lowercase!r})")
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise VocabError(f"vocabulary entries must be single characters (got {c!r})")
        if len(set(chars)) != len(chars):
            dup = [c for c, n in Counter(chars).items() if n > 1]
            raise VocabError(f"vocabulary has duplicate characters: {_show(dup)}")
        if unk is not None:
            if not isinstance(unk, str) or len(unk) != 1:
                raise VocabError(f"the unknown symbol must be one character (got {unk!r})")
            if unk in chars:
                raise VocabError(f"the unknown symbol {unk!r} is also a vocabulary character")
        self.chars: list[str] = chars
        self.unk: str | None = unk
        self.lowercase: bool = lowercase
        self.itos: list[str] = chars + ([unk] if unk is not None else [])
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.itos)}
        self._table: np.ndarray | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_counts(cls, counts: Counter, min_count: int = 1, max_vocab: int = 0,
                    unk: str = UNK_DEFAULT, lowercase: bool = False) -> "Vocab":
        """Keep characters seen at least ``min_count`` times, at most ``max_vocab`` of the
        most frequent (0 = all); the rest map to ``unk``, which exists only if something
        was dropped.  ``lowercase``: the counts are of lower-cased text (recorded)."""
        if not counts:
            raise VocabError("cannot build a vocabulary from empty text")
        kept = [c for c, n in counts.items() if n >= min_count]
        if max_vocab and len(kept) > max_vocab:
            kept.sort(key=lambda c: (-counts[c], c))
            kept = kept[:max_vocab]
        dropped = len(kept) < len(counts)
        if not kept:
            raise VocabError(f"no character occurs at least {min_count} times")
        if dropped:
            if unk in kept:
                kept.remove(unk)   # the symbol is reserved; its own occurrences map to it
            if not kept:
                raise VocabError("the vocabulary would hold only the unknown symbol")
        return cls(sorted(kept), unk if dropped else None, lowercase=lowercase)

    @classmethod
    def from_text(cls, text: str, **kw) -> "Vocab":
        return cls.from_counts(Counter(text), **kw)

    def to_dict(self) -> dict:
        d = {"version": VOCAB_VERSION, "chars": list(self.chars), "unk": self.unk}
        if self.lowercase:
            d["lowercase"] = True
        return d

    @classmethod
    def from_dict(cls, d) -> "Vocab":
        if not isinstance(d, dict):
            raise VocabError("a vocabulary must be a JSON object")
        version = d.get("version")
        if not isinstance(version, int):
            raise VocabError("vocabulary has no integer 'version'")
        if version > VOCAB_VERSION:
            raise VocabError(f"vocabulary version {version} is newer than this charrnn "
                             f"understands ({VOCAB_VERSION}); upgrade charrnn")
        chars = d.get("chars")
        if not isinstance(chars, list) or not chars:
            raise VocabError("vocabulary has no 'chars' list")
        unknown = set(d) - {"version", "chars", "unk", "lowercase"}
        if unknown:
            raise VocabError(f"vocabulary has unknown field(s): {', '.join(sorted(unknown))}")
        unk = d.get("unk")
        for c in chars + [unk]:
            if isinstance(c, str) and len(c) == 1 and 0xD800 <= ord(c) <= 0xDFFF:
                raise VocabError(f"vocabulary entry {c!r} is a lone surrogate (U+{ord(c):04X}), "
                                 "not a character: no text holds one")
        return cls(chars, unk, lowercase=d.get("lowercase", False))

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.itos)

    @property
    def size(self) -> int:
        return len(self.itos)

    @property
    def unk_id(self) -> int | None:
        return len(self.chars) if self.unk is not None else None

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(len(self))

    def __contains__(self, ch: str) -> bool:
        return ch in self.stoi

    def __eq__(self, other) -> bool:
        return (isinstance(other, Vocab) and self.itos == other.itos and self.unk == other.unk
                and self.lowercase == other.lowercase)

    def __repr__(self) -> str:
        low = ", lowercase=True" if self.lowercase else ""
        return f"Vocab(size={len(self)}, unk={self.unk!r}{low})"

    def normalize(self, text: str) -> str:
        """``text`` as prepare normalised the text this vocabulary was built from (folded
        to lower case when it was prepared with --lowercase); call it before
        :meth:`encode` on text from outside (files to score, a prime)."""
        return normalize_text(text, self.lowercase)

    def missing(self, text_or_chars) -> list[str]:
        """Characters of ``text_or_chars`` outside the vocabulary, in code-point order
        (the unknown symbol's own character counts as missing)."""
        return sorted(set(text_or_chars) - set(self.chars))

    # ------------------------------------------------------------------ encode/decode
    def _lookup(self) -> np.ndarray:
        if self._table is None:
            top = max(ord(c) for c in self.itos)
            # one slot past the largest code point holds -1: every code point outside the
            # table is clamped onto it, so a lookup is one clamp and one gather (no mask)
            table = np.full(top + 2, -1, np.int64)     # (max code point + 2,)
            for i, c in enumerate(self.chars):
                table[ord(c)] = i
            self._table = table
        return self._table

    def lookup(self, cps: np.ndarray) -> np.ndarray:
        """The one text-to-id mapping: ids (n,) int64 of the code points ``cps`` (n,), -1
        where the character is not in the vocabulary (the unknown symbol's own character
        included).  Training data, prime texts and scored texts are all encoded here."""
        table = self._lookup()
        cps = np.asarray(cps)
        last = len(table) - 1                               # the -1 slot
        if cps.dtype.kind == "u":
            return table[np.minimum(cps, last)]             # (n,)
        return table[np.clip(cps, -1, last)]                # (n,) index -1 is the -1 slot

    def encode(self, text: str, what: str = "text", dtype=None) -> np.ndarray:
        """Ids of ``text``.  Characters outside the vocabulary map to the unknown symbol
        when there is one, else raise VocabError naming some of them."""
        cps = codepoints(text)                              # (n,)
        ids = self.lookup(cps)                              # (n,)
        bad = ids < 0
        if bad.any():
            if self.unk is None:
                chars = sorted({chr(c) for c in np.unique(cps[bad])})
                raise VocabError(f"{what} has characters not in the model's vocabulary: "
                                 f"{_show(chars)}")
            ids[bad] = self.unk_id
        return ids.astype(dtype or self.dtype, copy=False)

    def count_unknown(self, text: str) -> int:
        """How many characters of ``text`` are outside the vocabulary."""
        return int((self.lookup(codepoints(text)) < 0).sum())

    def decode(self, ids) -> str:
        itos = self.itos
        return "".join(itos[int(i)] for i in np.asarray(ids).ravel())

    def extend(self, new_chars: Iterable[str]) -> "Vocab":
        """A vocabulary with ``new_chars`` appended after the existing characters (and
        before the unknown symbol): every existing character keeps its id, and the
        normalisation (``lowercase``) stays."""
        if self.unk is not None:
            raise VocabError("a vocabulary with an unknown symbol maps new characters to it; "
                             "it is not extended")
        add = [c for c in dict.fromkeys(new_chars) if c not in self.stoi]
        return Vocab(self.chars + sorted(add), self.unk, lowercase=self.lowercase)


__all__ = ["Vocab", "normalize_text", "codepoints", "token_dtype", "UNK_DEFAULT", "VOCAB_VERSION"]
