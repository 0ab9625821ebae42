"""``prepare``: text -> a data directory of token files (its format: charrnn.store.meta).

Text is read by :func:`charrnn.store.text.decode_stream` in chunks of
:data:`charrnn.store.text.CHUNK_BYTES`, in two passes (count characters and hash the
sources, then encode), so memory stays bounded whatever the corpus size.  The splits
are contiguous: ``train | val | test``, the test section at the very end and validation
just before it, so validation text is text the model never trained on.

Everything is built in a hidden sibling directory (every file fsynced, meta.json last)
and then put in place by :func:`charrnn.store.outdir.install`.  A stream (stdin, a pipe)
is copied to a spool file in the build directory first, since it is read twice
(:func:`charrnn.store.spool.spool`).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import __version__, console
from ..config import DataConfig
from ..errors import DiskFullError, InputError, VocabError
from ..units import fmt_bytes
from . import outdir
from .fsutil import atomic_write_bytes, atomic_write_text, fsync_dir, make_dirs, os_message
from .meta import DATA_FILES, DATA_FORMAT, DATA_VERSION, NCODEPOINTS, SPLITS, has_surrogates
from .sources import Source, resolve
from .spool import free_bytes, spool
from .text import codec_name, source_text
from .vocab import Vocab, codepoints, token_dtype


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
                             f"{os_message(e)}") from None

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


def _count(sources: list[Source], cfg: DataConfig, bar) -> tuple[np.ndarray, list[dict]]:
    """Pass 1: how often each code point occurs, (0x110000,) int64, and the record
    (path, size, sha256) of every source."""
    counts = np.zeros(NCODEPOINTS, np.int64)              # (0x110000,)
    records = []
    for s in sources:
        h = hashlib.sha256()
        size = 0
        for raw, text in source_text(s, cfg):
            h.update(raw)
            size += len(raw)
            if text:
                cps = codepoints(text)                     # (n,)
                binc = np.bincount(cps)                    # (max code point + 1,)
                counts[:len(binc)] += binc
            if bar is not None and raw:
                bar.update(len(raw))
        records.append({"path": s.record(), "size": size, "sha256": h.hexdigest()})
    return counts, records


def _vocabulary(seen: dict[str, int], cfg: DataConfig, vocab: Vocab | None,
                grow_vocab: bool) -> tuple[Vocab, list[str]]:
    """The vocabulary to encode with (built from the counts ``seen``, or the given one),
    and the characters ``grow_vocab`` appended to it."""
    if vocab is None:
        return Vocab.from_counts(seen, min_count=cfg.min_count, max_vocab=cfg.max_vocab,
                                 lowercase=cfg.lowercase), []
    if vocab.lowercase != cfg.lowercase:        # it reads text as this data was made
        vocab = Vocab(vocab.chars, vocab.unk, lowercase=cfg.lowercase)
    missing = vocab.missing(seen) if vocab.unk is None else []
    if missing and grow_vocab:
        return vocab.extend(missing), missing
    if missing:
        shown = ", ".join(repr(c) for c in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise VocabError(f"the input has characters not in the given vocabulary: "
                         f"{shown}{more}")
    return vocab, []


def _encode(sources: list[Source], records: list[dict], cfg: DataConfig, vocab: Vocab,
            writer: _SplitWriter, bar) -> int:
    """Pass 2: every source encoded into ``writer`` (:meth:`Vocab.lookup`), each checked
    against its pass-1 sha256.  Returns how many characters became the unknown symbol."""
    unknown = 0
    unk_id = vocab.unk_id
    for s, rec in zip(sources, records):
        h = hashlib.sha256()
        for raw, text in source_text(s, cfg):
            h.update(raw)
            if text:
                ids = vocab.lookup(codepoints(text))       # (n,) int64, -1 outside
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
    return unknown


def prepare(inputs, out_dir, cfg: DataConfig | None = None, *, corpus: str | None = None,
            force: bool = False, vocab: Vocab | None = None, grow_vocab: bool = False,
            show_progress: bool = True) -> dict:
    """Turn text into a data directory (its format: :mod:`charrnn.store.meta`).

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
        sources = [Source(str(f), Path(f), record_path=os.path.abspath(f)) for f in files]
        record_inputs = [os.path.abspath(f) for f in files]
    else:
        if not inputs:
            raise InputError("no input: give files, folders, '-' for stdin, or a corpus name")
        sources = resolve(inputs, cfg.glob, skip=[out])
        record_inputs = [i if i == "-" else os.path.abspath(i) for i in inputs]

    # 2. Where to write (messages show the path as given; the work uses it absolute).
    shown_out = out
    out = Path(os.path.abspath(out))
    if out.parent == out:
        raise InputError(f"{shown_out}: cannot write a data directory at the root")
    state = outdir.out_dir_state(out, shown_out)
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
    make_dirs(parent, shown_out, "the data directory")
    outdir.remove_stale(out)
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
        raise InputError(f"{shown_out}: cannot write in {parent}: {os_message(e)}") from None
    writer: _SplitWriter | None = None
    try:
        for i, s in enumerate(sources):
            if s.stream:
                spool(s, tmp, i, cfg, shown_out)
        total_bytes = sum(os.path.getsize(s.path) for s in sources)

        # 3. Pass 1: count characters, hash and size every source.
        # bars show only for an input that takes more than a second
        bar_opts = dict(total=total_bytes, unit="B", delay=1.0, unit_scale=True,
                        unit_divisor=1024)
        bar = console.progress(desc="counting", **bar_opts) if show_progress else None
        counts, records = _count(sources, cfg, bar)
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
        vocab, added = _vocabulary(_counts_to_chars(counts), cfg, vocab, grow_vocab)
        dtype = token_dtype(len(vocab))

        # 5. Pass 2: encode into the split files (if the disk has room for them).
        need = n * dtype.itemsize
        free = free_bytes(tmp)
        if free is not None and free < need + (1 << 20):
            raise DiskFullError(f"{shown_out}: the token files need {fmt_bytes(need)}, "
                                f"but the disk holding it has {fmt_bytes(free)} free; "
                                "free some space or choose another -o")
        writer = _SplitWriter(tmp, sizes, dtype, shown_out)
        bar = console.progress(desc="encoding", **bar_opts) if show_progress else None
        unknown = _encode(sources, records, cfg, vocab, writer, bar)
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
        if has_surrogates(text):      # a file name that is not UTF-8 (os.fsdecode's escapes)
            text = json.dumps(meta, indent=1) + "\n"
        atomic_write_text(tmp / "meta.json", text)
        fsync_dir(tmp)

        # 7. Into place.
        with outdir.no_interruption():
            outdir.install(tmp, out, shown_out, force)
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


__all__ = ["prepare"]
