"""Prepared data: text -> token files (``prepare``), reading them back (``Dataset``) and
the batches that truncated backpropagation through time trains on (``StreamBatches``).

A *data directory* written by :func:`prepare`::

    DATA_DIR/
      vocab.json   the vocabulary: {"version": 1, "chars": [...], "unk": null | "\\ufffd"}
                   (and "lowercase": true after --lowercase; see charrnn.store.vocab)
      train.bin    token ids of the training split, raw little-endian (uint8 when the
      val.bin      vocabulary has <= 256 symbols, else uint16, else uint32); read back
      test.bin     with np.memmap (an empty split is an empty file)
      meta.json    written last: its presence marks the directory complete

``meta.json``::

    {"format": "charrnn-data", "version": 1, "charrnn_version": "0.1.0",
     "created": "2024-...Z", "dtype": "uint8", "vocab_size": 65, "unk": null,
     "counts": {"chars": 1115394, "unknown": 0, "train": ..., "val": ..., "test": ...},
     "files": {"train.bin": {"bytes": ..., "sha256": ...}, ..., "vocab.json": {...}},
     "options": {DataConfig as a dict}, "corpus": null | "NAME",
     "inputs": ["/abs/path", "-"], "sources": [{"path", "size", "sha256"}, ...],
     "seconds": 0.41}

Text is read by :func:`decode_stream`, the one rule by which charrnn reads text (eval
reads its INPUT with it too): decoded with ``--encoding`` / ``--errors``, one byte order
mark (U+FEFF) at the start of each file or stream dropped, a NUL byte in the first
:data:`SNIFF_BYTES` refused as binary (for encodings other than UTF-16/32), and line ends
kept as they are (a CRLF file gives "\\r\\n", two characters).  ``--lowercase`` then
folds case (:func:`charrnn.store.vocab.normalize_text`, recorded in the vocabulary).

Text is read in chunks of :data:`CHUNK_BYTES` in two passes (count characters and hash
the sources, then encode), so memory stays bounded whatever the corpus size.  The
splits are contiguous: ``train | val | test``, the test section at the very end and
validation just before it, so validation text is text the model never trained on.

Everything is built in a hidden sibling directory ``.NAME.tmp-PID-RANDOM`` (made by
:func:`tempfile.mkdtemp`; every file fsynced, meta.json last) and then renamed into
place; an interrupted prepare leaves either the previous directory or none, never one
with a meta.json and missing data.  Two prepares into the same directory at once both
succeed, the last one to finish wins.  SIGTERM (with :func:`stop_on_sigterm`, as the
prepare command installs it) and Ctrl-C remove the build directory.

A stream (stdin, a pipe) is copied to a spool file in the build directory first, since
it is read twice; the spool is decoded as it is copied (a binary stream such as
/dev/zero fails on its first chunk), and it stops with a DiskFullError before the disk is
full: while free space stays above a margin (:data:`DISK_MARGIN`, at most half of what
was free at the start) plus as much again as the spool holds, for the token files.

Reading back, :class:`Dataset` checks everything meta.json says before anything uses it
(types, ranges, counts against file sizes, the dtype against the vocabulary size) and by
default reads every token file once: sha256 as recorded in meta.json, and every id below
the vocabulary size; vocab.json is checked against its recorded sha256 (directories
prepared before it was recorded: against the size and unknown symbol only).  This costs
about 0.2 s per 100 MB of token files with a warm page cache (see the README).

Fault injection for the tests (never set in normal use): ``CHARRNN_TEST_DISK_FREE=BYTES``
makes prepare see at most BYTES free on the disk of its output, less what its build
directory already holds, so the free-space stop is reached without filling a disk.
"""
from __future__ import annotations

import codecs
import contextlib
import datetime as _dt
import errno
import fnmatch
import hashlib
import json
import math
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .. import __version__
from ..config import DataConfig
from ..errors import CharrnnError, DataError, DiskFullError, Interrupted, InputError, VocabError
from .fsutil import atomic_write_bytes, atomic_write_text, fsync_dir, pid_alive, sha256_file
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
# Free space a stream's spool always leaves on the disk (less when the disk had little
# free space to begin with: at most half of what was free when the spool started).
DISK_MARGIN = 256 << 20
# Bytes of a stream copied at a time into its spool.
SPOOL_BLOCK = 1 << 20

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
    except UnicodeError as e:        # e.g. utf-16 without a byte order mark, punycode
        raise InputError(f"{name}: cannot be decoded as {encoding} ({e})") from None


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


def _human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _tree_bytes(directory: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for e in os.scandir(directory):
            with contextlib.suppress(OSError):
                if e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
    return total


def _free_bytes(directory: Path) -> int | None:
    """Bytes free for an unprivileged writer on the disk holding ``directory`` (None where
    the system cannot say); ``CHARRNN_TEST_DISK_FREE`` lowers it (module docstring)."""
    try:
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
    except (OSError, AttributeError):
        free = None
    fake = os.environ.get("CHARRNN_TEST_DISK_FREE", "").strip()
    if fake.isdigit():
        left = max(0, int(fake) - _tree_bytes(directory))
        free = left if free is None else min(free, left)
    return free


def _spool(src: _Source, directory: Path, index: int, cfg: DataConfig,
           shown_out: Path) -> None:
    """Copy a stream (stdin, a pipe) to a file, since prepare reads its input twice.

    The stream is decoded as it is copied (:func:`decode_stream`), so a binary stream
    (/dev/zero) or one in another encoding fails on its first chunk, and the copy stops
    with DiskFullError while the disk still has :data:`DISK_MARGIN` (at most half of the
    free space at the start) plus as much again as the spool holds, for the token
    files: an endless stream (``yes |``) never fills the disk."""
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
    what = "standard input" if src.name == "-" else src.name
    free0 = _free_bytes(directory)
    margin = None if free0 is None else min(DISK_MARGIN, free0 // 2)
    spooled = 0

    # read1: what the pipe has now (read would wait for a whole block or the end)
    read = getattr(stream, "read1", stream.read)

    def blocks() -> Iterator[bytes]:
        while True:
            try:
                block = read(SPOOL_BLOCK)
            except OSError as e:
                raise InputError(f"{src.name}: {_os_message(e)}") from None
            if not block:
                return
            if isinstance(block, str):
                block = block.encode("utf-8")
            yield block

    try:
        with open(path, "xb") as out:
            for raw, _text in decode_stream(blocks(), src.name, cfg.encoding, cfg.errors):
                if not raw:
                    continue
                if margin is not None:
                    free = _free_bytes(directory)
                    if free is not None and free - len(raw) < margin + spooled + len(raw):
                        raise DiskFullError(
                            f"{what}: stopped reading after {_human_bytes(spooled)}: the disk "
                            f"holding {shown_out} has {_human_bytes(free)} free, and prepare "
                            f"keeps room for the token files (as much again as the text) "
                            f"and {_human_bytes(margin)} more; free some space, or give a "
                            "finite input that fits (an endless stream never ends)")
                try:
                    out.write(raw)
                except OSError as e:
                    if e.errno == errno.ENOSPC:
                        raise DiskFullError(f"{what}: no space left on the disk holding "
                                            f"{shown_out} after {_human_bytes(spooled)} "
                                            "of it") from None
                    raise
                spooled += len(raw)
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
    try:
        names = [n for n in os.listdir(out) if not (n.startswith(".") and ".tmp-" in n)]
    except OSError as e:
        raise InputError(f"{shown}: {_os_message(e)}") from None
    if not names:
        return "ours"
    if not set(names) <= set(DATA_FILES):
        return "foreign"
    meta = out / "meta.json"
    if meta.exists() or meta.is_symlink():
        try:
            doc = _read_json(meta, "meta.json")
        except DataError:
            return "foreign"
        if not isinstance(doc, dict) or doc.get("format") != DATA_FORMAT:
            return "foreign"
    return "ours"


# A build or old directory prepare makes next to its output: ``.NAME.tmp-PID-RANDOM``
# (and ``.NAME.tmp-PID`` from earlier versions), ``.NAME.old-PID-RANDOM``.
_WORK_DIR = re.compile(r"\.(?:tmp|old)-(\d+)(?:-[A-Za-z0-9_]+)?$")


def _remove_stale(out: Path) -> None:
    """Remove build/old directories that a killed prepare left next to ``out`` (those of
    a process that is gone; a planted symbolic link is removed as a link)."""
    prefix = f".{out.name}."
    with contextlib.suppress(OSError):
        for p in out.parent.glob(f".{_glob_escape(out.name)}.*-*"):
            m = _WORK_DIR.match(p.name, len(prefix) - 1)
            if not p.name.startswith(prefix) or m is None:
                continue
            pid = int(m.group(1))
            if pid == os.getpid() or pid_alive(pid):
                continue
            if p.is_symlink() or not p.is_dir():
                with contextlib.suppress(OSError):
                    p.unlink()
            else:
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

    def __init__(self, directory: Path, sizes: tuple[int, int, int], dtype: np.dtype,
                 shown: Path):
        self.bounds = np.cumsum((0,) + sizes)             # (4,)
        self.dtype = dtype
        self.shown = shown
        self.files = []
        for s in SPLITS:
            with self._disk_errors():
                self.files.append(open(directory / f"{s}.bin", "xb"))
        self.hashes = [hashlib.sha256() for _ in SPLITS]
        self.pos = 0

    @contextlib.contextmanager
    def _disk_errors(self):
        """A full disk is one DiskFullError naming the output, not the build directory."""
        try:
            yield
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"{self.shown}: no space left on the disk while writing "
                                    "the token files; nothing was changed") from None
            raise InputError(f"{self.shown}: cannot write the token files: "
                             f"{_os_message(e)}") from None

    def write(self, ids: np.ndarray) -> None:
        data = ids.astype(self.dtype.newbyteorder("<"), copy=False)
        start = self.pos
        end = start + len(data)
        for k in range(3):
            lo, hi = max(start, self.bounds[k]), min(end, self.bounds[k + 1])
            if lo < hi:
                buf = data[lo - start:hi - start].tobytes()
                with self._disk_errors():
                    self.files[k].write(buf)
                self.hashes[k].update(buf)
        self.pos = end

    def close(self) -> dict:
        info = {}
        for k, f in enumerate(self.files):
            with self._disk_errors():
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
    from .. import console
    # shown only for an input that takes more than a second
    return console.progress(total=total, desc=desc, unit="B", delay=1.0, unit_scale=True,
                            unit_divisor=1024)


# Signals that arrive while the output is being swapped into place wait until it is.
_critical = threading.local()


@contextlib.contextmanager
def _no_interruption():
    """SIGTERM / SIGINT (when :func:`stop_on_sigterm` handles them) are held back until
    the block ends, so the output directory is never left half swapped."""
    _critical.depth = getattr(_critical, "depth", 0) + 1
    try:
        yield
    finally:
        _critical.depth -= 1
        pending = getattr(_critical, "pending", None)
        if _critical.depth == 0 and pending is not None:
            _critical.pending = None
            raise pending


@contextlib.contextmanager
def stop_on_sigterm(what: str = "prepare"):
    """While the block runs, SIGTERM raises :class:`~charrnn.errors.Interrupted` (exit
    143) and SIGINT KeyboardInterrupt, so prepare's cleanup removes its build directory
    and spool; a signal that arrives while the output is being moved into place is held
    back until it is there.  Does nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if signum == signal.SIGINT:
            exc: BaseException = KeyboardInterrupt()
        else:
            exc = Interrupted(f"terminated by SIGTERM; {what} stopped and removed its "
                              "temporary files", 128 + signum)
        if getattr(_critical, "depth", 0):
            _critical.pending = exc
            return
        raise exc

    old = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, handler)
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _install(tmp: Path, out: Path, shown: Path, force: bool) -> None:
    """Put the finished build directory ``tmp`` at ``out``.  Another prepare may be
    installing into ``out`` at the same time: the state is looked at again here, and a
    rename that loses the race is retried, so the last one to finish wins."""
    parent = out.parent
    for _ in range(20):
        state = _out_dir_state(out, shown)
        if state == "foreign" and not force:
            raise InputError(f"{shown}: another program wrote other files into it while "
                             "prepare was running; nothing was changed (use --force to "
                             "write the data files into it anyway, or choose another -o)")
        try:
            if state == "new":
                os.rename(tmp, out)
            elif state == "ours" and not out.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-",
                                            dir=parent))
                moved = old / "d"
                try:
                    os.rename(out, moved)
                    os.rename(tmp, out)
                except BaseException:
                    # Put the previous data back (a failed rename, or a signal handler
                    # that raised in between), unless a complete directory is there now.
                    with contextlib.suppress(OSError):
                        if moved.exists():
                            os.rename(moved, out)
                    raise
                finally:
                    fsync_dir(parent)
                    shutil.rmtree(old, ignore_errors=True)
            else:
                _replace_files(tmp, out)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EISDIR,
                           errno.ENOTDIR):
                continue        # another prepare moved things meanwhile: look again
            raise
        fsync_dir(parent)
        return
    raise InputError(f"{shown}: other programs kept replacing it while prepare was "
                     "installing its output; nothing was changed, run prepare again")


def _replace_files(tmp: Path, out: Path) -> None:
    """A folder with other files (--force) or a symlink: never delete what prepare did
    not write.  meta.json goes first and comes back last, so the directory never looks
    complete while its files are being replaced."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out / "meta.json")
    fsync_dir(out)
    for name in DATA_FILES:                  # meta.json is the last of them
        if name == "meta.json":
            fsync_dir(out)
        os.replace(tmp / name, out / name)
    fsync_dir(out)
    shutil.rmtree(tmp, ignore_errors=True)


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
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=parent))
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)      # mkdtemp's 0o700 would become the output's
    except OSError as e:
        for d in created:
            with contextlib.suppress(OSError):
                d.rmdir()
        if e.errno == errno.ENOSPC:
            raise DiskFullError(f"{shown_out}: no space left on the disk") from None
        raise InputError(f"{shown_out}: cannot write in {parent}: {_os_message(e)}") from None
    writer: _SplitWriter | None = None
    try:
        for i, s in enumerate(sources):
            if s.stream:
                _spool(s, tmp, i, cfg, shown_out)
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
        if counts[0xD800:0xE000].any():
            raise InputError(f"{sources[0].name if len(sources) == 1 else 'the input'}: "
                             f"decodes to lone surrogates (U+D800..U+DFFF), which are not "
                             f"characters; check --encoding (now {cfg.encoding})")
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

        # 5. Pass 2: encode into the split files (if the disk has room for them).
        need = n * dtype.itemsize
        free = _free_bytes(tmp)
        if free is not None and free < need + (1 << 20):
            raise DiskFullError(f"{shown_out}: the token files need {_human_bytes(need)}, "
                                f"but the disk holding it has {_human_bytes(free)} free; "
                                "free some space or choose another -o")
        writer = _SplitWriter(tmp, sizes, dtype, shown_out)
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
        vocab_bytes = (json.dumps(vocab.to_dict(), ensure_ascii=False) + "\n").encode("utf-8")
        atomic_write_bytes(tmp / "vocab.json", vocab_bytes)
        files["vocab.json"] = {"bytes": len(vocab_bytes),
                               "sha256": hashlib.sha256(vocab_bytes).hexdigest()}
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
        text = json.dumps(meta, indent=1, ensure_ascii=False) + "\n"
        if _has_surrogates(text):      # a file name that is not UTF-8 (os.fsdecode's escapes)
            text = json.dumps(meta, indent=1) + "\n"
        atomic_write_text(tmp / "meta.json", text)
        fsync_dir(tmp)

        # 7. Into place.
        with _no_interruption():
            _install(tmp, out, shown_out, force)
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


# The largest meta.json / vocab.json a data directory can hold: a vocabulary of every
# code point is ~8 MB, and meta.json lists one short record per source file.
MAX_JSON_BYTES = 32 << 20
# ... and at most this many objects and lists (meta.json has one per source file): 32 MB
# of "{}," would otherwise become ~1 GB of Python dicts.
MAX_JSON_CONTAINERS = 1 << 20
_DTYPES = ("uint8", "uint16", "uint32")
_META_FIELDS = frozenset({"format", "version", "charrnn_version", "created", "dtype",
                          "vocab_size", "unk", "counts", "files", "options", "corpus",
                          "inputs", "sources", "seconds"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_REDO = "run 'charrnn prepare' again"


def _open_regular(path: Path, what: str):
    """``path`` opened for reading, refused unless it is a regular file (a FIFO or a
    device named like a data file would block or never end).  Returns (file, size)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        if os.path.islink(path):
            raise DataError(f"{path}: broken symbolic link; {_REDO}") from None
        raise DataError(f"{path}: missing; {_REDO}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {what}: {_os_message(e)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path}: not a regular file; the data directory is damaged, "
                            f"{_REDO}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _read_json(path: Path, what: str):
    """The JSON value in ``path`` (at most :data:`MAX_JSON_BYTES`), every failure one
    DataError: not UTF-8, not JSON, NaN/Infinity, nesting too deep to parse."""
    f, size = _open_regular(path, what)
    with f:
        if size > MAX_JSON_BYTES:
            raise DataError(f"{path}: {size:,} bytes, more than a data directory's {what} "
                            f"ever holds; the file is damaged, {_REDO}")
        try:
            raw = f.read(MAX_JSON_BYTES + 1)
        except OSError as e:
            raise DataError(f"{path}: cannot read {what}: {_os_message(e)}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise DataError(f"{path}: more than {MAX_JSON_BYTES:,} bytes, more than a data "
                        f"directory's {what} ever holds; the file is damaged, {_REDO}")
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_CONTAINERS:
        raise DataError(f"{path}: holds more JSON objects and lists than a data directory's "
                        f"{what} ever has; the file is damaged, {_REDO}")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise DataError(f"{path}: corrupt (not UTF-8 text); {_REDO}") from None
    except RecursionError:
        raise DataError(f"{path}: corrupt (JSON nested too deeply); {_REDO}") from None
    except ValueError as e:
        msg = str(e)
        raise DataError(f"{path}: corrupt ({msg if len(msg) < 200 else msg[:197] + '...'}); "
                        f"{_REDO}") from None


_SURROGATE = re.compile("[\ud800-\udfff]")
# os.fsdecode turns the bytes of a file name that are not UTF-8 into U+DC80..U+DCFF
_NOT_FSDECODE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def _has_surrogates(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


class _MetaCheck:
    """Field checks of one meta.json; every failure a DataError naming the field."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, field: str, want: str, got) -> DataError:
        return DataError(f"{self.path}: '{field}' must be {want} (got {_shown(got)}); the "
                         f"file is damaged, {_REDO}")

    def int(self, d: dict, key: str, field: str, lo: int = 0, hi: int = 1 << 62) -> int:
        v = d.get(key) if isinstance(d, dict) else None
        if not _is_int(v) or not lo <= v <= hi:
            raise self.fail(field, f"an integer in [{lo}, {hi}]", v)
        return v

    def dict(self, d: dict, key: str, field: str, optional: bool = False) -> dict | None:
        v = d.get(key)
        if v is None and optional:
            return None
        if not isinstance(v, dict):
            raise self.fail(field, "an object", v)
        return v

    def str(self, d: dict, key: str, field: str, optional: bool = False,
            path: bool = False) -> str | None:
        """A string; lone surrogates only as os.fsdecode writes a file name's bytes
        that are not UTF-8 (``path``), never elsewhere."""
        v = d.get(key) if isinstance(d, dict) else d[key]
        if v is None and optional:
            return None
        if not isinstance(v, str):
            raise self.fail(field, "a string", v)
        if (_NOT_FSDECODE if path else _SURROGATE).search(v):
            raise self.fail(field, "text (it holds a lone surrogate)", v)
        return v

    def sha(self, d: dict, key: str, field: str) -> str:
        v = d.get(key)
        if not isinstance(v, str) or not _HEX64.fullmatch(v):
            raise self.fail(field, "a sha256 (64 hex digits)", v)
        return v


class Dataset:
    """A prepared data directory, checked on opening (every failure is a DataError that
    names the file and says what to do).

    Opening checks meta.json completely (types, ranges, counts against the token files'
    sizes, the dtype against the vocabulary size) and vocab.json against it; with
    ``verify`` (the default) it also reads every token file once (:meth:`verify`: its
    sha256 as recorded, every id below the vocabulary size) and checks vocab.json's
    recorded sha256.  ``verify=False`` is for a caller that has just verified the same
    directory; the sizes are checked either way."""

    def __init__(self, data_dir, verify: bool = True):
        d = Path(data_dir)
        self.path = d
        if not (d.exists() or d.is_symlink()):
            raise DataError(f"{d}: no such data directory; make one with "
                            f"'charrnn prepare TEXT -o {d}'")
        if not d.is_dir():
            raise DataError(f"{d}: not a data directory (it is a file); make one with "
                            f"'charrnn prepare TEXT -o DATA_DIR'")
        meta_path = d / "meta.json"
        if not (meta_path.exists() or meta_path.is_symlink()):
            raise DataError(f"{d}: not a complete data directory (no meta.json; "
                            "an interrupted prepare?); run 'charrnn prepare' again")
        meta = _read_json(meta_path, "meta.json")
        if not isinstance(meta, dict) or meta.get("format") != DATA_FORMAT:
            raise DataError(f"{meta_path}: not a charrnn data directory's meta.json")
        version = meta.get("version")
        if not _is_int(version):
            raise DataError(f"{meta_path}: no integer 'version'")
        if version > DATA_VERSION:
            raise DataError(f"{meta_path}: data format version {version} is newer than this "
                            f"charrnn understands ({DATA_VERSION}); upgrade charrnn")
        if version < 1:
            raise DataError(f"{meta_path}: 'version' must be >= 1 (got {version}); the file "
                            f"is damaged, {_REDO}")
        counts, files = self._check_meta(meta, meta_path)
        self.dtype = np.dtype(meta["dtype"])
        vocab_size = meta["vocab_size"]

        vocab_path = d / "vocab.json"
        vocab_doc = _read_json(vocab_path, "vocab.json")
        try:
            self.vocab = Vocab.from_dict(vocab_doc)
        except VocabError as e:
            raise DataError(f"{vocab_path}: corrupt ({e}); {_REDO}") from None
        if vocab_size != len(self.vocab):
            raise DataError(f"{d}: vocab.json has {len(self.vocab)} symbols but meta.json "
                            f"says vocab_size {vocab_size}; the directory is damaged, {_REDO}")
        if meta["unk"] != self.vocab.unk:
            raise DataError(f"{d}: vocab.json's unknown symbol is {self.vocab.unk!r} but "
                            f"meta.json says {meta['unk']!r}; the directory is damaged, "
                            f"{_REDO}")

        self.meta: dict = meta
        self.counts: dict[str, int] = counts
        self._files = files
        self._maps: dict[str, np.ndarray] = {}
        self._check_sizes()
        if verify:
            self.verify()

    def _check_meta(self, meta: dict, path: Path) -> tuple[dict, dict]:
        """Every field of meta.json (all that prepare writes, nothing else): (split
        counts, files)."""
        c = _MetaCheck(path)
        unknown = sorted(set(meta) - _META_FIELDS)
        if unknown:
            raise DataError(f"{path}: unknown field(s) {_shown(unknown)}; the file is "
                            f"damaged or from another program, {_REDO}")
        dtype = meta.get("dtype")
        if dtype not in _DTYPES:
            raise c.fail("dtype", f"one of {', '.join(_DTYPES)}", dtype)
        vocab_size = c.int(meta, "vocab_size", "vocab_size", 1, _NCODEPOINTS + 1)
        if token_dtype(vocab_size).name != dtype:
            raise DataError(f"{path}: says the token files are {dtype}, but ids of a "
                            f"vocabulary of {vocab_size} symbols are stored as "
                            f"{token_dtype(vocab_size).name}; the file is damaged, {_REDO}")
        unk = meta.get("unk")
        if unk is not None and not (isinstance(unk, str) and len(unk) == 1):
            raise c.fail("unk", "null or one character", unk)
        cd = c.dict(meta, "counts", "counts")
        if set(cd) - {"chars", "unknown", *SPLITS}:
            raise c.fail("counts", "chars, unknown, train, val and test", sorted(cd))
        counts = {s: c.int(cd, s, f"counts.{s}") for s in SPLITS}
        chars = c.int(cd, "chars", "counts.chars")
        if chars != sum(counts.values()):
            raise DataError(f"{path}: counts.chars is {chars:,} but the splits hold "
                            f"{sum(counts.values()):,} (train + val + test); the file is "
                            f"damaged, {_REDO}")
        c.int(cd, "unknown", "counts.unknown", 0, chars)
        fd = c.dict(meta, "files", "files")
        extra = sorted(set(fd) - set(DATA_FILES) - {"meta.json"})
        if extra or "meta.json" in fd:
            raise c.fail("files", "records of the data files", sorted(fd))
        itemsize = np.dtype(dtype).itemsize
        files = {}
        for name in ("train.bin", "val.bin", "test.bin", "vocab.json"):
            rec = fd.get(name)
            if rec is None and name == "vocab.json":
                continue                # prepared before vocab.json's hash was recorded
            if not isinstance(rec, dict):
                raise c.fail(f"files.{name}", "an object", rec)
            size = c.int(rec, "bytes", f"files.{name}.bytes", 0 if name != "vocab.json" else 1)
            if name != "vocab.json":
                split = name[:-4]
                want = counts[split] * itemsize
                if size != want:
                    raise DataError(f"{path}: files.{name}.bytes is {size:,} but "
                                    f"counts.{split} {counts[split]:,} x {itemsize} bytes "
                                    f"is {want:,}; the file is damaged, {_REDO}")
            files[name] = {"bytes": size, "sha256": c.sha(rec, "sha256", f"files.{name}.sha256")}
        opts = c.dict(meta, "options", "options", optional=True)
        if opts is not None:
            try:
                DataConfig.from_dict(opts)
            except (CharrnnError, TypeError, ValueError) as e:
                raise DataError(f"{path}: 'options' are not prepare's options ({e}); the file "
                                f"is damaged, {_REDO}") from None
            for key in ("encoding", "errors"):
                if key in opts:
                    c.str(opts, key, f"options.{key}")
            c.str(opts, "glob", "options.glob", optional=True, path=True)
            if not isinstance(opts.get("lowercase", False), bool):
                raise c.fail("options.lowercase", "true or false", opts["lowercase"])
        c.str(meta, "corpus", "corpus", optional=True)
        inputs = meta.get("inputs", [])
        if not isinstance(inputs, list):
            raise c.fail("inputs", "a list of paths", inputs)
        for i in range(len(inputs)):
            c.str(inputs, i, f"inputs[{i}]", path=True)
        sources = meta.get("sources", [])
        if not isinstance(sources, list):
            raise c.fail("sources", "a list", sources)
        for i, rec in enumerate(sources):
            if not isinstance(rec, dict):
                raise c.fail(f"sources[{i}]", "an object", rec)
            c.str(rec, "path", f"sources[{i}].path", path=True)
            c.int(rec, "size", f"sources[{i}].size")
            c.sha(rec, "sha256", f"sources[{i}].sha256")
        for key in ("created", "charrnn_version"):
            c.str(meta, key, key, optional=True)
        sec = meta.get("seconds")
        if sec is not None and (isinstance(sec, bool) or not isinstance(sec, (int, float))
                                or not math.isfinite(sec) or sec < 0):
            raise c.fail("seconds", "a number of seconds", sec)
        return counts, files

    def _check_sizes(self) -> None:
        """Every token file is a regular file of the size meta.json records."""
        for s in SPLITS:
            path = self.path / f"{s}.bin"
            want = self.counts[s] * self.dtype.itemsize
            f, have = _open_regular(path, "a token file")
            f.close()
            if have != want:
                raise DataError(f"{path}: {have} bytes, but meta.json records {self.counts[s]} "
                                f"tokens of {self.dtype.name} ({want} bytes); the directory "
                                "is damaged, run 'charrnn prepare' again")

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
        """vocab.json's recorded sha256, then every token file read once, in blocks: its
        sha256 as meta.json records it, and every id below the vocabulary size.  About
        0.2 s per 100 MB of token files (module docstring)."""
        rec = self._files.get("vocab.json")
        if rec is not None:
            path = self.path / "vocab.json"
            f, _ = _open_regular(path, "vocab.json")
            with f:
                raw = f.read(MAX_JSON_BYTES + 1)
            if len(raw) != rec["bytes"] or hashlib.sha256(raw).hexdigest() != rec["sha256"]:
                raise DataError(f"{path}: differs from the vocab.json meta.json records (its "
                                f"size or sha256: the file is damaged or was changed, and "
                                f"the token ids would mean other characters); {_REDO}")
        V = len(self.vocab)
        dt = self.dtype.newbyteorder("<")
        step = (4 << 20) // dt.itemsize * dt.itemsize
        buf = bytearray(step)
        for s in SPLITS:
            path = self.path / f"{s}.bin"
            want = self.counts[s] * dt.itemsize
            f, _ = _open_regular(path, "a token file")
            h = hashlib.sha256()
            done = 0
            with f:
                while done < want:
                    chunk = memoryview(buf)[:min(step, want - done)]
                    got = 0
                    while got < len(chunk):
                        try:
                            k = f.readinto(chunk[got:])
                        except OSError as e:
                            raise DataError(f"{path}: cannot read it: "
                                            f"{_os_message(e)}") from None
                        if not k:
                            raise DataError(f"{path}: shorter than meta.json records "
                                            f"({done + got} of {want} bytes); the directory "
                                            f"is damaged, {_REDO}")
                        got += k
                    h.update(chunk)
                    ids = np.frombuffer(chunk, dtype=dt)
                    if ids.size and int(ids.max()) >= V:
                        first = int(np.argmax(ids >= V))
                        raise DataError(f"{path}: token id {int(ids[first])} at position "
                                        f"{done // dt.itemsize + first:,} is not below the "
                                        f"vocabulary size {V}; the directory is damaged, "
                                        f"{_REDO}")
                    done += got
            if h.hexdigest() != self._files[f"{s}.bin"]["sha256"]:
                raise DataError(f"{path}: sha256 differs from meta.json (the file is damaged "
                                f"or was changed); {_REDO}")

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
