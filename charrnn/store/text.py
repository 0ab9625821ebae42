"""Reading text: the one rule by which charrnn decodes its input (prepare reads every
source with it, eval its INPUT).

Text is decoded with ``--encoding`` / ``--errors``, one byte order mark (U+FEFF) at the
start of each file or stream dropped, a NUL byte in the first :data:`SNIFF_BYTES`
refused as binary (for encodings other than UTF-16/32), and line ends kept as they are
(a CRLF file gives "\\r\\n", two characters).  ``--lowercase`` then folds case
(:func:`charrnn.store.vocab.normalize_text`, recorded in the vocabulary).
"""
from __future__ import annotations

import codecs
import contextlib
from typing import Iterable, Iterator

from ..config import DataConfig
from ..errors import InputError
from .fsutil import os_message
from .vocab import normalize_text

# Bytes of text read at a time. The per-chunk arrays cost ~25 bytes per character, so
# 256 KiB keeps them near 6 MB and in cache (larger chunks were slower and used more
# memory: docs/performance.md).
CHUNK_BYTES = 256 << 10
# A NUL byte this close to the start of a file means it is not text (a single-byte or
# UTF-8 text never holds one; a binary file nearly always has one in its header).
SNIFF_BYTES = 256 << 10
BOM = "\ufeff"
# Codecs that take a leading byte order mark off themselves.
_BOM_CODECS = frozenset({"utf-8-sig", "utf-16", "utf-32"})


def codec_name(encoding: str) -> str:
    """The canonical name of a text encoding; InputError when Python does not know it
    or it is not a text encoding (rot13, base64, ...)."""
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise InputError(f"unknown encoding {encoding!r}") from None
    if not getattr(info, "_is_text_encoding", True):
        raise InputError(f"{encoding!r} is not a text encoding")
    return info.name


def decode_stream(chunks: Iterable[bytes], name: str, encoding: str = "utf-8",
                  errors: str = "strict") -> Iterator[tuple[bytes, str]]:
    """Decode one file or stream given as successive byte chunks: yields ``(raw, text)``
    for every chunk (``text`` may be empty while a character is incomplete), and
    ``(b"", tail)`` at the end if the decoder held something back.

    This is the one rule by which prepare and eval read text, whatever the chunking:

    * ``encoding`` / ``errors`` ("strict": InputError ``NAME: invalid ENCODING at byte
      N``; "replace": U+FFFD for each undecodable sequence);
    * one byte order mark (U+FEFF) at the start is not text and is dropped, for every
      encoding (codecs such as utf-8-sig and utf-16 drop it themselves);
    * a NUL byte in the first :data:`SNIFF_BYTES` bytes is InputError ``NAME: looks like
      a binary file (NUL byte at offset N)`` (not checked for UTF-16/32, where NUL
      bytes are part of ordinary text);
    * nothing else changes: line ends are kept as they are (CRLF stays "\\r\\n")."""
    codec = codec_name(encoding)
    decoder = codecs.getincrementaldecoder(codec)(errors=errors)
    sniff = 0 if codec.startswith(("utf-16", "utf-32")) else SNIFF_BYTES
    strip_bom = codec not in _BOM_CODECS
    offset = 0
    for raw in chunks:
        if not raw:
            continue
        if offset < sniff:
            nul = raw.find(b"\0", 0, sniff - offset)
            if nul >= 0:
                raise InputError(f"{name}: looks like a binary file "
                                 f"(NUL byte at offset {offset + nul})")
        text = _decode(decoder, raw, offset, False, name, encoding)
        offset += len(raw)
        if strip_bom and text:
            strip_bom = False
            if text[0] == BOM:
                text = text[1:]
        yield raw, text
    tail = _decode(decoder, b"", offset, True, name, encoding)
    if strip_bom and tail[:1] == BOM:
        tail = tail[1:]
    if tail:
        yield b"", tail


def _decode(decoder, raw: bytes, offset: int, final: bool, name: str, encoding: str) -> str:
    pending = 0           # bytes of an incomplete character the decoder holds
    with contextlib.suppress(Exception):
        state = decoder.getstate()
        if isinstance(state[0], (bytes, bytearray)):
            pending = len(state[0])
    try:
        return decoder.decode(raw, final)
    except UnicodeDecodeError as e:
        where = offset - pending + e.start
        raise InputError(f"{name}: invalid {encoding} at byte {where}") from None
    except UnicodeError as e:        # e.g. utf-16 without a byte order mark, punycode
        raise InputError(f"{name}: cannot be decoded as {encoding} ({e})") from None


def source_text(src, cfg: DataConfig) -> Iterator[tuple[bytes, str]]:
    """One source (a :class:`charrnn.store.sources.Source`: ``name`` and ``path``) read
    in chunks of :data:`CHUNK_BYTES`: (raw bytes, text as prepare counts it), decoded by
    :func:`decode_stream` and normalised as ``cfg`` says."""
    try:
        f = open(src.path, "rb")
    except OSError as e:
        raise InputError(f"{src.name}: {os_message(e)}") from None

    def blocks() -> Iterator[bytes]:
        while True:
            try:
                raw = f.read(CHUNK_BYTES)
            except OSError as e:
                raise InputError(f"{src.name}: {os_message(e)}") from None
            if not raw:
                return
            yield raw

    with f:
        for raw, text in decode_stream(blocks(), src.name, cfg.encoding, cfg.errors):
            yield raw, normalize_text(text, cfg.lowercase)


__all__ = ["codec_name", "decode_stream", "source_text", "CHUNK_BYTES", "SNIFF_BYTES", "BOM"]
