"""The prepared data directory's format: its files, meta.json and how both are read back
safely (every failure one DataError naming the file and saying what to do).

A *data directory* written by :func:`charrnn.store.prepare.prepare`::

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
"""
from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import CharrnnError, DataError
from .fsutil import os_message
from .vocab import token_dtype

DATA_FORMAT = "charrnn-data"
DATA_VERSION = 1
SPLITS = ("train", "val", "test")
DATA_FILES = ("vocab.json", "train.bin", "val.bin", "test.bin", "meta.json")
NCODEPOINTS = 0x110000

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
REDO = "run 'charrnn prepare' again"


def open_regular(path: Path, what: str):
    """``path`` opened for reading, refused unless it is a regular file (a FIFO or a
    device named like a data file would block or never end).  Returns (file, size)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        if os.path.islink(path):
            raise DataError(f"{path}: broken symbolic link; {REDO}") from None
        raise DataError(f"{path}: missing; {REDO}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {what}: {os_message(e)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path}: not a regular file; the data directory is damaged, "
                            f"{REDO}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read_json(path: Path, what: str):
    """The JSON value in ``path`` (at most :data:`MAX_JSON_BYTES`), every failure one
    DataError: not UTF-8, not JSON, NaN/Infinity, nesting too deep to parse."""
    f, size = open_regular(path, what)
    with f:
        if size > MAX_JSON_BYTES:
            raise DataError(f"{path}: {size:,} bytes, more than a data directory's {what} "
                            f"ever holds; the file is damaged, {REDO}")
        try:
            raw = f.read(MAX_JSON_BYTES + 1)
        except OSError as e:
            raise DataError(f"{path}: cannot read {what}: {os_message(e)}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise DataError(f"{path}: more than {MAX_JSON_BYTES:,} bytes, more than a data "
                        f"directory's {what} ever holds; the file is damaged, {REDO}")
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_CONTAINERS:
        raise DataError(f"{path}: holds more JSON objects and lists than a data directory's "
                        f"{what} ever has; the file is damaged, {REDO}")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise DataError(f"{path}: corrupt (not UTF-8 text); {REDO}") from None
    except RecursionError:
        raise DataError(f"{path}: corrupt (JSON nested too deeply); {REDO}") from None
    except ValueError as e:
        msg = str(e)
        raise DataError(f"{path}: corrupt ({msg if len(msg) < 200 else msg[:197] + '...'}); "
                        f"{REDO}") from None


_SURROGATE = re.compile("[\ud800-\udfff]")
# os.fsdecode turns the bytes of a file name that are not UTF-8 into U+DC80..U+DCFF
_NOT_FSDECODE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def has_surrogates(text: str) -> bool:
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
                         f"file is damaged, {REDO}")

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


def check_meta(meta, path: Path) -> tuple[dict, dict]:
    """Every field of meta.json (all that prepare writes, nothing else), read from
    ``path``: (split counts, files)."""
    if not isinstance(meta, dict) or meta.get("format") != DATA_FORMAT:
        raise DataError(f"{path}: not a charrnn data directory's meta.json")
    version = meta.get("version")
    if not _is_int(version):
        raise DataError(f"{path}: no integer 'version'")
    if version > DATA_VERSION:
        raise DataError(f"{path}: data format version {version} is newer than this "
                        f"charrnn understands ({DATA_VERSION}); upgrade charrnn")
    if version < 1:
        raise DataError(f"{path}: 'version' must be >= 1 (got {version}); the file "
                        f"is damaged, {REDO}")
    c = _MetaCheck(path)
    unknown = sorted(set(meta) - _META_FIELDS)
    if unknown:
        raise DataError(f"{path}: unknown field(s) {_shown(unknown)}; the file is "
                        f"damaged or from another program, {REDO}")
    dtype = meta.get("dtype")
    if dtype not in _DTYPES:
        raise c.fail("dtype", f"one of {', '.join(_DTYPES)}", dtype)
    vocab_size = c.int(meta, "vocab_size", "vocab_size", 1, NCODEPOINTS + 1)
    if token_dtype(vocab_size).name != dtype:
        raise DataError(f"{path}: says the token files are {dtype}, but ids of a "
                        f"vocabulary of {vocab_size} symbols are stored as "
                        f"{token_dtype(vocab_size).name}; the file is damaged, {REDO}")
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
                        f"damaged, {REDO}")
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
                                f"is {want:,}; the file is damaged, {REDO}")
        files[name] = {"bytes": size, "sha256": c.sha(rec, "sha256", f"files.{name}.sha256")}
    opts = c.dict(meta, "options", "options", optional=True)
    if opts is not None:
        try:
            DataConfig.from_dict(opts)
        except (CharrnnError, TypeError, ValueError) as e:
            raise DataError(f"{path}: 'options' are not prepare's options ({e}); the file "
                            f"is damaged, {REDO}") from None
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


__all__ = ["DATA_FORMAT", "DATA_VERSION", "SPLITS", "DATA_FILES", "NCODEPOINTS", "MAX_JSON_BYTES",
           "MAX_JSON_CONTAINERS", "REDO", "open_regular", "read_json", "check_meta",
           "has_surrogates"]
