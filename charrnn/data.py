"""Prepared data: text -> token files (``prepare``), reading them back (``Dataset``) and
the batches that truncated backpropagation through time trains on (``StreamBatches``).

A *data directory* written by :func:`prepare`::

    DATA_DIR/
      vocab.json   the vocabulary: {"version": 1, "chars": [...], "unk": null | "\\ufffd"}
                   (and "lowercase": true after --lowercase; see charrnn.vocab)
      train.bin    token ids of the training split, raw little-endian (uint8 when the
      val.bin      vocabulary has <= 256 symbols, else uint16, else uint32); read back
      test.bin     with np.memmap (an empty split is an empty file)
      meta.json    written last: its presence marks the directory complete

``meta.json``::

    {"format": "charrnn-data", "version": 1, "charrnn_version": "0.1.0",
     "created": "2024-...Z", "dtype": "uint8", "vocab_size": 65, "unk": null,
     "counts": {"chars": 1115394, "unknown": 0, "train": ..., "val": ..., "test": ...},
     "files": {"train.bin": {"bytes": ..., "sha256": ...}, ...},
     "options": {DataConfig as a dict}, "corpus": null | "NAME",
     "inputs": ["/abs/path", "-"], "sources": [{"path", "size", "sha256"}, ...],
     "seconds": 0.41}

Text is read by :func:`decode_stream`, the one rule by which charrnn reads text (eval
reads its INPUT with it too): decoded with ``--encoding`` / ``--errors``, one byte order
mark (U+FEFF) at the start of each file or stream dropped, a NUL byte in the first
:data:`SNIFF_BYTES` refused as binary (for encodings other than UTF-16/32), and line ends
kept as they are (a CRLF file gives "\\r\\n", two characters).  ``--lowercase`` then
folds case (:func:`charrnn.vocab.normalize_text`, recorded in the vocabulary).

Text is read in chunks of :data:`CHUNK_BYTES` in two passes (count characters and hash
the sources, then encode), so memory stays bounded whatever the corpus size.  The
splits are contiguous: ``train | val | test``, the test section at the very end and
validation just before it, so validation text is text the model never trained on.

Everything is built in a hidden sibling directory ``.NAME.tmp-PID`` (every file
fsynced, meta.json last) and then renamed into place; an interrupted prepare leaves
either the previous directory or none, never one with a meta.json and missing data.
"""
from __future__ import annotations

import codecs
import contextlib
import datetime as _dt
import fnmatch
import hashlib
import json
import os
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from . import __version__
from .config import DataConfig
from .errors import DataError, InputError, VocabError
from .fsutil import atomic_write_text, fsync_dir, sha256_file
from .vocab import Vocab, codepoints, normalize_text, token_dtype

DATA_FORMAT = "charrnn-data"
DATA_VERSION = 1
SPLITS = ("train", "val", "test")
DATA_FILES = ("vocab.json", "train.bin", "val.bin", "test.bin", "meta.json")
# Bytes of text read at a time. The per-chunk arrays cost ~25 bytes per character, so
# 256 KiB keeps them near 6 MB and in cache: a 300 MB corpus prepares in ~2 s of wall
# time with a peak RSS of ~48 MB (4 MiB chunks: ~4 s and ~160 MB).
CHUNK_BYTES = 256 << 10
# A NUL byte this close to the start of a file means it is not text (a single-byte or
# UTF-8 text never holds one; a binary file nearly always has one in its header).
SNIFF_BYTES = 256 << 10
BOM = "\ufeff"
# Codecs that take a leading byte order mark off themselves.
_BOM_CODECS = frozenset({"utf-8-sig", "utf-16", "utf-32"})
_NCODEPOINTS = 0x110000

# ============================================================================ sources


@dataclass
class _Source:
    """One input: ``name`` is what messages and meta.json show (the path as given, or
    ``-``); ``path`` is the file read (a spool file for stdin and pipes)."""

    name: str
    path: Path | None
    stream: bool = False          # stdin or a pipe: readable once, spooled first
    record_path: str | None = None

    def record(self) -> str:
        return self.record_path if self.record_path is not None else self.name


def _os_message(e: OSError) -> str:
    return (e.strerror or str(e)).lower()


def _walk(root: Path, glob: str | None, skip_real: set[str]) -> list[Path]:
    """Files under ``root`` in sorted order (depth first, names sorted at each level),
    following symbolic links but refusing loops; hidden entries (``.name``) and data
    directories that prepare wrote are skipped."""
    found: list[Path] = []

    def visit(d: Path, rel: str, ancestors: frozenset) -> None:
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise InputError(f"{d}: {_os_message(e)}") from None
        for e in entries:
            if e.name.startswith("."):
                continue
            p = d / e.name
            r = f"{rel}/{e.name}" if rel else e.name
            try:
                is_dir = e.is_dir()
                is_file = not is_dir and e.is_file()
            except OSError as err:
                raise InputError(f"{p}: {_os_message(err)}") from None
            if is_dir:
                real = os.path.realpath(p)
                if real in ancestors:
                    raise InputError(f"{p}: symbolic link loop (it leads back to {real})")
                if real in skip_real or _is_data_dir(p):
                    continue
                visit(p, r, ancestors | {real})
            elif is_file:
                if glob is None or _glob_match(glob, e.name, r):
                    found.append(p)
            elif e.is_symlink():
                try:
                    os.stat(p)
                except OSError as err:
                    if err.errno == 40:    # ELOOP
                        raise InputError(f"{p}: symbolic link loop") from None
                    raise InputError(f"{p}: broken symbolic link") from None
            # sockets, fifos and devices inside folders are skipped

    visit(root, "", frozenset({os.path.realpath(root)}))
    return found


def _is_data_dir(d: Path) -> bool:
    """A folder that prepare wrote (never read as text when walking an input folder)."""
    meta = d / "meta.json"
    if not meta.is_file():
        return False
    try:
        with open(meta, encoding="utf-8") as f:
            return f.read(200).find(f'"format": "{DATA_FORMAT}"') >= 0
    except (OSError, UnicodeDecodeError):
        return False


def _glob_match(pattern: str, name: str, rel: str) -> bool:
    """``*.py`` matches file names; a pattern with ``/`` matches the path below the folder."""
    if "/" in pattern:
        return fnmatch.fnmatchcase(rel, pattern)
    return fnmatch.fnmatchcase(name, pattern)


def _resolve(inputs, glob: str | None = None, skip: list[Path] = ()) -> list[_Source]:
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    skip_real = {os.path.realpath(p) for p in skip}
    out: list[_Source] = []
    stdin_seen = False
    for raw in inputs:
        raw = os.fspath(raw)
        if raw == "-":
            if stdin_seen:
                raise InputError("-: standard input can be given only once")
            stdin_seen = True
            out.append(_Source("-", None, stream=True))
            continue
        p = Path(raw)
        try:
            st = p.stat()
        except FileNotFoundError:
            if p.is_symlink():
                raise InputError(f"{raw}: broken symbolic link") from None
            raise InputError(f"{raw}: no such file or directory") from None
        except OSError as e:
            if e.errno == 40:
                raise InputError(f"{raw}: symbolic link loop") from None
            raise InputError(f"{raw}: {_os_message(e)}") from None
        if stat.S_ISDIR(st.st_mode):
            files = _walk(p, glob, skip_real)
            if not files:
                what = f"no files matching {glob!r}" if glob else "no files"
                raise InputError(f"{raw}: {what}")
            out.extend(_Source(str(f), f, record_path=os.path.abspath(f)) for f in files)
        elif stat.S_ISREG(st.st_mode):
            out.append(_Source(raw, p, record_path=os.path.abspath(p)))
        else:   # a pipe (<(cmd)), a character device: read once, like stdin
            out.append(_Source(raw, p, stream=True))
    return out


def resolve_inputs(inputs, glob: str | None = None) -> list[str]:
    """The files that ``inputs`` name, in the order prepare reads them: files as given,
    folders walked recursively (sorted, hidden entries skipped, ``glob`` filtering file
    names), ``-`` for stdin.  Raises InputError for a missing path, a symlink loop, an
    unreadable folder, or a folder without matching files."""
    return [s.name for s in _resolve(inputs, glob)]


def _file_digest(path: Path, name: str) -> tuple[int, str]:
    try:
        return sha256_file(path)
    except OSError as e:
        raise InputError(f"{name}: {_os_message(e)}") from None


def fingerprint_sources(inputs, corpus: str | None = None,
                        glob: str | None = None) -> list[dict] | None:
    """``[{"path", "size", "sha256"}, ...]`` for the files ``inputs`` (or the registry
    ``corpus``) name, exactly as :func:`prepare` records them in ``meta["sources"]``
    (streamed; nothing is held in memory).  ``None`` when it cannot be known again:
    stdin or a pipe among the inputs, or a registry corpus not downloaded."""
    if corpus is not None:
        from . import corpora
        files = corpora.corpus_files(corpus, download=False)
        if files is None:
            return None
        sources = [_Source(str(f), Path(f), record_path=os.path.abspath(f)) for f in files]
    else:
        sources = _resolve(inputs, glob)
    records = []
    for s in sources:
        if s.stream:
            return None
        size, digest = _file_digest(s.path, s.name)
        records.append({"path": s.record(), "size": size, "sha256": digest})
    return records


# ============================================================================ reading text


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


def _source_text(src: _Source, cfg: DataConfig) -> Iterator[tuple[bytes, str]]:
    """One source read in chunks of :data:`CHUNK_BYTES`: (raw bytes, text as prepare
    counts it), decoded by :func:`decode_stream` and normalised as ``cfg`` says."""
    try:
        f = open(src.path, "rb")
    except OSError as e:
        raise InputError(f"{src.name}: {_os_message(e)}") from None

    def blocks() -> Iterator[bytes]:
        while True:
            try:
                raw = f.read(CHUNK_BYTES)
            except OSError as e:
                raise InputError(f"{src.name}: {_os_message(e)}") from None
            if not raw:
                return
            yield raw

    with f:
        for raw, text in decode_stream(blocks(), src.name, cfg.encoding, cfg.errors):
            yield raw, normalize_text(text, cfg.lowercase)


def _spool(src: _Source, directory: Path, index: int) -> None:
    """Copy a stream (stdin, a pipe) to a file, since prepare reads its input twice."""
    path = directory / f".stream-{index}"
    if src.name == "-":
        stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin
        close = False
    else:
        try:
            stream = open(src.path, "rb")
        except OSError as e:
            raise InputError(f"{src.name}: {_os_message(e)}") from None
        close = True
    try:
        with open(path, "wb") as out:
            while True:
                block = stream.read(1 << 20)
                if not block:
                    break
                if isinstance(block, str):
                    block = block.encode("utf-8")
                out.write(block)
    finally:
        if close:
            stream.close()
    src.path = path


# ============================================================================ prepare


def _out_dir_state(out: Path, shown: Path) -> str:
    """'new', 'ours' (empty, or only files prepare writes), or 'foreign'."""
    if not (out.exists() or out.is_symlink()):
        return "new"
    if not out.is_dir():
        raise InputError(f"{shown}: exists and is not a directory")
    names = [n for n in os.listdir(out) if not (n.startswith(".") and ".tmp-" in n)]
    if not names:
        return "ours"
    if not set(names) <= set(DATA_FILES):
        return "foreign"
    meta = out / "meta.json"
    if meta.exists():
        try:
            with open(meta, encoding="utf-8") as f:
                if json.load(f).get("format") != DATA_FORMAT:
                    return "foreign"
        except (OSError, ValueError, AttributeError):
            return "foreign"
    return "ours"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale(out: Path) -> None:
    """Remove build/old directories that a killed prepare left next to ``out``."""
    with contextlib.suppress(OSError):
        for p in out.parent.glob(f".{_glob_escape(out.name)}.*-*"):
            kind, _, pid = p.name.rpartition("-")
            if not (kind.endswith(".tmp") or kind.endswith(".old")) or not pid.isdigit():
                continue
            if int(pid) != os.getpid() and not _pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _split_sizes(n: int, cfg: DataConfig, what: str) -> tuple[int, int, int]:
    if n == 0:
        raise InputError(f"empty corpus: {what} has no characters")
    n_test = int(n * cfg.test_frac)
    n_val = int(n * cfg.val_frac)
    if cfg.test_frac > 0 and n_test == 0:
        raise InputError(f"test split would be empty: {n} characters x --test-frac "
                         f"{cfg.test_frac} is less than one character; raise --test-frac, "
                         "use --test-frac 0, or use more text")
    if cfg.val_frac > 0 and n_val == 0:
        raise InputError(f"val split would be empty: {n} characters x --val-frac "
                         f"{cfg.val_frac} is less than one character; raise --val-frac, "
                         "use --val-frac 0 for no validation, or use more text")
    n_train = n - n_val - n_test
    if n_train <= 0:
        raise InputError(f"train split would be empty: {n} characters; lower --val-frac "
                         "or --test-frac, or use more text")
    return n_train, n_val, n_test


def _counts_to_chars(counts: np.ndarray) -> dict[str, int]:
    nz = np.flatnonzero(counts)
    return {chr(int(c)): int(counts[c]) for c in nz}


def _lookup_table(vocab: Vocab) -> np.ndarray:
    table = np.full(_NCODEPOINTS, -1, np.int32)            # (0x110000,)
    for i, c in enumerate(vocab.chars):
        table[ord(c)] = i
    return table


class _SplitWriter:
    """Writes the token stream into train.bin | val.bin | test.bin at the boundaries,
    hashing each file as it goes."""

    def __init__(self, directory: Path, sizes: tuple[int, int, int], dtype: np.dtype):
        self.bounds = np.cumsum((0,) + sizes)             # (4,)
        self.dtype = dtype
        self.files = [open(directory / f"{s}.bin", "wb") for s in SPLITS]
        self.hashes = [hashlib.sha256() for _ in SPLITS]
        self.pos = 0

    def write(self, ids: np.ndarray) -> None:
        data = ids.astype(self.dtype.newbyteorder("<"), copy=False)
        start = self.pos
        end = start + len(data)
        for k in range(3):
            lo, hi = max(start, self.bounds[k]), min(end, self.bounds[k + 1])
            if lo < hi:
                buf = data[lo - start:hi - start].tobytes()
                self.files[k].write(buf)
                self.hashes[k].update(buf)
        self.pos = end

    def close(self) -> dict:
        info = {}
        for k, f in enumerate(self.files):
            f.flush()
            os.fsync(f.fileno())
            f.close()
            n = int(self.bounds[k + 1] - self.bounds[k])
            info[f"{SPLITS[k]}.bin"] = {"bytes": n * self.dtype.itemsize,
                                        "sha256": self.hashes[k].hexdigest()}
        return info

    def abort(self) -> None:
        for f in self.files:
            with contextlib.suppress(OSError):
                f.close()


def _progress(total: int, desc: str, show: bool):
    if not show:
        return None
    from . import console
    # shown only for an input that takes more than a second
    return console.progress(total=total, desc=desc, unit="B", delay=1.0, unit_scale=True,
                            unit_divisor=1024)


def _install(tmp: Path, out: Path, state: str) -> None:
    """Put the finished build directory ``tmp`` at ``out``."""
    parent = out.parent
    if state == "new":
        os.rename(tmp, out)
    elif state == "ours" and not out.is_symlink():
        old = parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(tmp, out)
        fsync_dir(parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        # A folder with other files (--force) or a symlink: never delete what prepare did
        # not write.  meta.json goes first and comes back last, so the directory never
        # looks complete while its files are being replaced.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out / "meta.json")
        fsync_dir(out)
        for name in DATA_FILES:                  # meta.json is the last of them
            if name == "meta.json":
                fsync_dir(out)
            os.replace(tmp / name, out / name)
        fsync_dir(out)
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(parent)


def prepare(inputs, out_dir, cfg: DataConfig | None = None, *, corpus: str | None = None,
            force: bool = False, vocab: Vocab | None = None, grow_vocab: bool = False,
            show_progress: bool = True) -> dict:
    """Turn text into a data directory (see the module docstring for its format).

    ``inputs``: file paths, folders (recursive, ``cfg.glob`` filter, sorted) and ``-``
    for stdin; or ``corpus``: a registry name instead.  ``vocab``: encode with this fixed
    vocabulary instead of building one (characters outside it map to its unknown symbol,
    or raise VocabError when it has none; with ``grow_vocab`` they are appended after its
    characters instead, every existing id unchanged: :meth:`Vocab.extend`).  ``force``:
    write into a directory that holds other files (they are left alone).  Returns the
    summary dict (data_dir, corpus, files, bytes, chars, vocab_size, unk, unknown, dtype,
    train, val, test, seconds; ``added``: characters appended by ``grow_vocab``)."""
    t0 = time.perf_counter()
    cfg = cfg if cfg is not None else DataConfig()
    cfg.validate()
    codec_name(cfg.encoding)
    out = Path(out_dir)
    inputs = [os.fspath(i) for i in ([inputs] if isinstance(inputs, (str, os.PathLike))
                                     else (inputs or []))]

    # 1. What to read (every "missing path" error comes before anything is written).
    if corpus is not None:
        if inputs:
            raise InputError("give input files or a corpus name, not both")
        from . import corpora
        files = corpora.corpus_files(corpus, download=True, show_progress=show_progress)
        sources = [_Source(str(f), Path(f), record_path=os.path.abspath(f)) for f in files]
        record_inputs = [os.path.abspath(f) for f in files]
    else:
        if not inputs:
            raise InputError("no input: give files, folders, '-' for stdin, or a corpus name")
        sources = _resolve(inputs, cfg.glob, skip=[out])
        record_inputs = [i if i == "-" else os.path.abspath(i) for i in inputs]

    # 2. Where to write (messages show the path as given; the work uses it absolute).
    shown_out = out
    out = Path(os.path.abspath(out))
    if out.parent == out:
        raise InputError(f"{shown_out}: cannot write a data directory at the root")
    state = _out_dir_state(out, shown_out)
    if state == "foreign" and not force:
        shown = ", ".join(sorted(n for n in os.listdir(out) if n not in DATA_FILES)[:3])
        raise InputError(f"{shown_out}: exists and holds other files ({shown}); use --force "
                         "to write the data files into it anyway, or choose another -o")
    parent = out.parent
    created: list[Path] = []
    p = parent
    while not p.exists():
        created.append(p)
        p = p.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    writer: _SplitWriter | None = None
    try:
        for i, s in enumerate(sources):
            if s.stream:
                _spool(s, tmp, i)
        total_bytes = sum(os.path.getsize(s.path) for s in sources)

        # 3. Pass 1: count characters, hash and size every source.
        counts = np.zeros(_NCODEPOINTS, np.int64)          # (0x110000,)
        records = []
        bar = _progress(total_bytes, "counting", show_progress)
        for s in sources:
            h = hashlib.sha256()
            size = 0
            for raw, text in _source_text(s, cfg):
                h.update(raw)
                size += len(raw)
                if text:
                    cps = codepoints(text)                 # (n,)
                    binc = np.bincount(cps)                # (max code point + 1,)
                    counts[:len(binc)] += binc
                if bar is not None and raw:
                    bar.update(len(raw))
            records.append({"path": s.record(), "size": size, "sha256": h.hexdigest()})
        if bar is not None:
            bar.close()
        n = int(counts.sum())
        what = sources[0].name if len(sources) == 1 else f"the {len(sources)} input files"
        if corpus is not None:
            what = f"corpus {corpus!r}"
        sizes = _split_sizes(n, cfg, what)

        # 4. The vocabulary.
        seen = _counts_to_chars(counts)
        added: list[str] = []
        if vocab is None:
            vocab = Vocab.from_counts(seen, min_count=cfg.min_count, max_vocab=cfg.max_vocab,
                                      lowercase=cfg.lowercase)
        else:
            if vocab.lowercase != cfg.lowercase:    # it reads text as this data was made
                vocab = Vocab(vocab.chars, vocab.unk, lowercase=cfg.lowercase)
            missing = vocab.missing(seen) if vocab.unk is None else []
            if missing and grow_vocab:
                added = missing
                vocab = vocab.extend(missing)
            elif missing:
                shown = ", ".join(repr(c) for c in missing[:5])
                more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
                raise VocabError(f"the input has characters not in the given vocabulary: "
                                 f"{shown}{more}")
        dtype = token_dtype(len(vocab))
        table = _lookup_table(vocab)
        unk_id = vocab.unk_id

        # 5. Pass 2: encode into the split files.
        writer = _SplitWriter(tmp, sizes, dtype)
        unknown = 0
        bar = _progress(total_bytes, "encoding", show_progress)
        for s, rec in zip(sources, records):
            h = hashlib.sha256()
            for raw, text in _source_text(s, cfg):
                h.update(raw)
                if text:
                    ids = table[codepoints(text)]          # (n,) int32
                    bad = ids < 0
                    nbad = int(bad.sum())
                    if nbad:
                        unknown += nbad
                        ids[bad] = unk_id
                    writer.write(ids)
                if bar is not None and raw:
                    bar.update(len(raw))
            if h.hexdigest() != rec["sha256"]:
                raise InputError(f"{s.name}: changed while prepare was reading it; "
                                 "run prepare again")
        if bar is not None:
            bar.close()
        if writer.pos != n:
            raise InputError("the input changed while prepare was reading it; "
                             "run prepare again")
        files = writer.close()
        writer = None
        for s in sources:
            if s.stream:
                os.unlink(s.path)

        # 6. vocab.json, then meta.json (the completeness marker) last.
        atomic_write_text(tmp / "vocab.json", json.dumps(vocab.to_dict(), ensure_ascii=False)
                          + "\n")
        seconds = time.perf_counter() - t0
        meta = {
            "format": DATA_FORMAT, "version": DATA_VERSION, "charrnn_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "dtype": dtype.name, "vocab_size": len(vocab), "unk": vocab.unk,
            "counts": {"chars": n, "unknown": unknown, "train": sizes[0], "val": sizes[1],
                       "test": sizes[2]},
            "files": files, "options": cfg.to_dict(), "corpus": corpus,
            "inputs": record_inputs, "sources": records, "seconds": round(seconds, 3),
        }
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1, ensure_ascii=False)
                          + "\n")
        fsync_dir(tmp)

        # 7. Into place.
        _install(tmp, out, state)
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        for d in created:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return {
        "data_dir": str(shown_out), "corpus": corpus, "files": len(records),
        "bytes": sum(r["size"] for r in records), "chars": n, "vocab_size": len(vocab),
        "unk": vocab.unk, "unknown": unknown, "dtype": dtype.name,
        "train": sizes[0], "val": sizes[1], "test": sizes[2],
        "seconds": round(time.perf_counter() - t0, 3), "added": added,
    }


# ============================================================================ reading back


class Dataset:
    """A prepared data directory, checked on opening (every failure is a DataError that
    names the file and says what to do)."""

    def __init__(self, data_dir):
        d = Path(data_dir)
        self.path = d
        if not d.exists():
            raise DataError(f"{d}: no such data directory; make one with "
                            f"'charrnn prepare TEXT -o {d}'")
        if not d.is_dir():
            raise DataError(f"{d}: not a data directory (it is a file); make one with "
                            f"'charrnn prepare TEXT -o DATA_DIR'")
        meta_path = d / "meta.json"
        if not meta_path.exists():
            raise DataError(f"{d}: not a complete data directory (no meta.json; "
                            "an interrupted prepare?); run 'charrnn prepare' again")
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{meta_path}: corrupt ({e}); run 'charrnn prepare' again") \
                from None
        if not isinstance(meta, dict) or meta.get("format") != DATA_FORMAT:
            raise DataError(f"{meta_path}: not a charrnn data directory's meta.json")
        version = meta.get("version")
        if not isinstance(version, int):
            raise DataError(f"{meta_path}: no integer 'version'")
        if version > DATA_VERSION:
            raise DataError(f"{meta_path}: data format version {version} is newer than this "
                            f"charrnn understands ({DATA_VERSION}); upgrade charrnn")
        vocab_path = d / "vocab.json"
        try:
            with open(vocab_path, encoding="utf-8") as f:
                self.vocab = Vocab.from_dict(json.load(f))
        except FileNotFoundError:
            raise DataError(f"{vocab_path}: missing; run 'charrnn prepare' again") from None
        except (ValueError, UnicodeDecodeError, VocabError) as e:
            raise DataError(f"{vocab_path}: corrupt ({e}); run 'charrnn prepare' again") \
                from None
        try:
            counts = {s: int(meta["counts"][s]) for s in SPLITS}
            self.dtype = np.dtype(meta["dtype"])
            vocab_size = int(meta["vocab_size"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{meta_path}: incomplete ({type(e).__name__}: {e}); "
                            "run 'charrnn prepare' again") from None
        if vocab_size != len(self.vocab) or self.dtype != self.vocab.dtype:
            raise DataError(f"{d}: vocab.json has {len(self.vocab)} symbols but meta.json "
                            f"says {vocab_size} ({meta['dtype']}); run 'charrnn prepare' again")
        for s in SPLITS:
            path = d / f"{s}.bin"
            want = counts[s] * self.dtype.itemsize
            try:
                have = path.stat().st_size
            except FileNotFoundError:
                raise DataError(f"{path}: missing; run 'charrnn prepare' again") from None
            if have != want:
                raise DataError(f"{path}: {have} bytes, but meta.json records {counts[s]} "
                                f"tokens of {self.dtype.name} ({want} bytes); the directory "
                                "is damaged, run 'charrnn prepare' again")
        self.meta: dict = meta
        self.counts: dict[str, int] = counts
        self._maps: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        c = self.counts
        return (f"Dataset({str(self.path)!r}, vocab={len(self.vocab)}, train={c['train']}, "
                f"val={c['val']}, test={c['test']})")

    def split(self, name: str) -> np.ndarray:
        """The token ids of split ``name`` as a read-only 1-D memmap (nothing is read
        until it is indexed); an empty split gives an empty array."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r} (one of {', '.join(SPLITS)})")
        if name not in self._maps:
            n = self.counts[name]
            if n == 0:
                arr = np.empty(0, self.dtype)                       # (0,)
            else:
                arr = np.memmap(self.path / f"{name}.bin", dtype=self.dtype.newbyteorder("<"),
                                mode="r", shape=(n,))               # (n,)
            self._maps[name] = arr
        return self._maps[name]

    def verify(self) -> None:
        """Read every token file once: sha256 as recorded, and every id < vocab size."""
        files = self.meta.get("files", {})
        for s in SPLITS:
            arr = self.split(s)
            h = hashlib.sha256()
            step = 1 << 22
            for lo in range(0, len(arr), step):
                block = np.asarray(arr[lo:lo + step])
                if block.size and int(block.max()) >= len(self.vocab):
                    raise DataError(f"{self.path / (s + '.bin')}: token id {int(block.max())} "
                                    f">= vocabulary size {len(self.vocab)}")
                h.update(block.tobytes())
            want = files.get(f"{s}.bin", {}).get("sha256")
            if want and h.hexdigest() != want:
                raise DataError(f"{self.path / (s + '.bin')}: sha256 differs from meta.json "
                                "(the file is damaged); run 'charrnn prepare' again")

    def sources_changed(self) -> list[str] | None:
        """What changed in the text this directory was prepared from: a list of lines
        ("changed: PATH", "missing: PATH", "new: PATH"), empty if nothing did, None when
        it cannot be checked (stdin, a corpus not in the cache)."""
        meta = self.meta
        try:
            now = fingerprint_sources(meta.get("inputs") or [], corpus=meta.get("corpus"),
                                      glob=(meta.get("options") or {}).get("glob"))
        except InputError as e:
            return [f"missing: {e}"]
        if now is None:
            return None
        old = {r["path"]: r for r in meta.get("sources", [])}
        new = {r["path"]: r for r in now}
        lines = [f"missing: {p}" for p in old if p not in new]
        lines += [f"new: {p}" for p in new if p not in old]
        lines += [f"changed: {p}" for p in new
                  if p in old and (old[p]["sha256"], old[p]["size"])
                  != (new[p]["sha256"], new[p]["size"])]
        return lines


# ============================================================================ batches


class StreamBatches:
    """Training batches for truncated BPTT over B parallel streams.

    Layout, for n tokens: S = (n - 1) // B; stream b is the contiguous slice
    ``tokens[b*S : (b+1)*S + 1]`` (S inputs and their S next-character targets).  Batch
    i holds positions ``i*T .. (i+1)*T - 1`` of every stream, so batch i+1 continues
    each stream exactly where batch i stopped and the recurrent state can be carried
    over; an epoch is ``S // T`` batches, after which the trainer resets the state and
    starts again at batch 0.  The last ``S % T`` positions of each stream and the
    ``(n - 1) % B`` trailing tokens are not trained on.  The position in the data is
    therefore just the batch index ``i`` (with the epoch), which a resumed run restores.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int):
        if getattr(tokens, "ndim", None) != 1:
            raise DataError("tokens must be a 1-D array of token ids")
        B, T = int(batch_size), int(seq_len)
        if B < 1 or T < 1:
            raise DataError(f"batch size and sequence length must be >= 1 (got {B}, {T})")
        n = len(tokens)
        if n < B * T + 1:
            raise DataError(f"training split has {n} characters; it needs at least "
                            f"B*T+1 = {B * T + 1} for --batch-size {B} --seq-len {T}; "
                            "use a smaller --batch-size or --seq-len, or more text")
        self.tokens = tokens
        self.batch_size = B
        self.seq_len = T
        self.stream_len = (n - 1) // B                                 # S
        self.batches_per_epoch = self.stream_len // T
        starts = np.arange(B, dtype=np.int64) * self.stream_len        # (B,)
        self._index = starts[:, None] + np.arange(T + 1, dtype=np.int64)  # (B, T+1)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def locate(self, iteration: int) -> tuple[int, int]:
        """(epoch, batch index) of the ``iteration``-th batch since the start (0-based)."""
        return divmod(int(iteration), self.batches_per_epoch)

    def batch(self, i: int, lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets of batch ``i`` for streams ``lo .. hi-1``: two (hi-lo, T)
        int64 arrays, targets the inputs shifted by one character."""
        if not 0 <= i < self.batches_per_epoch:
            raise IndexError(f"batch {i} out of range (0..{self.batches_per_epoch - 1})")
        hi = self.batch_size if hi is None else hi
        if not 0 <= lo < hi <= self.batch_size:
            raise IndexError(f"streams {lo}..{hi} out of range (0..{self.batch_size})")
        idx = self._index[lo:hi] + i * self.seq_len                    # (b, T+1)
        win = np.asarray(self.tokens[idx], dtype=np.int64)             # (b, T+1)
        return np.ascontiguousarray(win[:, :-1]), np.ascontiguousarray(win[:, 1:])

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(self.batches_per_epoch):
            yield self.batch(i)


def iter_eval_batches(tokens: np.ndarray, batch_size: int,
                      seq_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every next-character prediction of ``tokens`` exactly once, in a fixed order.

    The n - 1 (input, target) pairs are laid out like :class:`StreamBatches`:
    B streams of S = (n - 1) // B pairs, walked T at a time (the last window of the
    streams may be shorter, (B, T') with T' < T), carried state valid across these
    batches.  The (n - 1) - B*S trailing pairs then follow as ONE new stream, (1, T)
    windows and a last shorter one: when ``x.shape[0]`` changes, start from a fresh
    state.  Yields int64 (inputs, targets) pairs; nothing for n < 2."""
    B, T = int(batch_size), int(seq_len)
    if B < 1 or T < 1:
        raise DataError(f"batch size and sequence length must be >= 1 (got {B}, {T})")
    n = len(tokens)
    if n < 2:
        return
    S = (n - 1) // B
    if S > 0:
        starts = np.arange(B, dtype=np.int64) * S                       # (B,)
        for t0 in range(0, S, T):
            w = min(T, S - t0)
            idx = starts[:, None] + (t0 + np.arange(w + 1, dtype=np.int64))  # (B, w+1)
            win = np.asarray(tokens[idx], dtype=np.int64)                # (B, w+1)
            yield np.ascontiguousarray(win[:, :-1]), np.ascontiguousarray(win[:, 1:])
    base = B * S
    rest = (n - 1) - base
    for t0 in range(0, rest, T):
        w = min(T, rest - t0)
        win = np.asarray(tokens[base + t0:base + t0 + w + 1], dtype=np.int64)[None]  # (1, w+1)
        yield np.ascontiguousarray(win[:, :-1]), np.ascontiguousarray(win[:, 1:])


__all__ = ["prepare", "Dataset", "StreamBatches", "iter_eval_batches", "resolve_inputs",
           "fingerprint_sources", "decode_stream", "codec_name", "SNIFF_BYTES", "BOM", "DATA_FORMAT", "DATA_VERSION", "SPLITS", "DATA_FILES",
           "CHUNK_BYTES"]
