"""Reading a prepared data directory back: :class:`Dataset` checks everything meta.json
says before anything uses it (types, ranges, counts against file sizes, the dtype
against the vocabulary size) and by default reads every token file once: sha256 as
recorded in meta.json, and every id below the vocabulary size; vocab.json is checked
against its recorded sha256 (directories prepared before it was recorded: against the
size and unknown symbol only).  The cost of that read is in docs/performance.md.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..errors import DataError, InputError, VocabError
from .fsutil import os_message
from .meta import MAX_JSON_BYTES, REDO, SPLITS, check_meta, open_regular, read_json
from .sources import fingerprint_sources
from .vocab import Vocab


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
        meta = read_json(meta_path, "meta.json")
        counts, files = check_meta(meta, meta_path)
        self.dtype = np.dtype(meta["dtype"])
        vocab_size = meta["vocab_size"]

        vocab_path = d / "vocab.json"
        vocab_doc = read_json(vocab_path, "vocab.json")
        try:
            self.vocab = Vocab.from_dict(vocab_doc)
        except VocabError as e:
            raise DataError(f"{vocab_path}: corrupt ({e}); {REDO}") from None
        if vocab_size != len(self.vocab):
            raise DataError(f"{d}: vocab.json has {len(self.vocab)} symbols but meta.json "
                            f"says vocab_size {vocab_size}; the directory is damaged, {REDO}")
        if meta["unk"] != self.vocab.unk:
            raise DataError(f"{d}: vocab.json's unknown symbol is {self.vocab.unk!r} but "
                            f"meta.json says {meta['unk']!r}; the directory is damaged, "
                            f"{REDO}")

        self.meta: dict = meta
        self.counts: dict[str, int] = counts
        self._files = files
        self._maps: dict[str, np.ndarray] = {}
        self._check_sizes()
        if verify:
            self.verify()

    def _check_sizes(self) -> None:
        """Every token file is a regular file of the size meta.json records."""
        for s in SPLITS:
            path = self.path / f"{s}.bin"
            want = self.counts[s] * self.dtype.itemsize
            f, have = open_regular(path, "a token file")
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
        sha256 as meta.json records it, and every id below the vocabulary size.  Its cost:
        docs/performance.md."""
        rec = self._files.get("vocab.json")
        if rec is not None:
            path = self.path / "vocab.json"
            f, _ = open_regular(path, "vocab.json")
            with f:
                raw = f.read(MAX_JSON_BYTES + 1)
            if len(raw) != rec["bytes"] or hashlib.sha256(raw).hexdigest() != rec["sha256"]:
                raise DataError(f"{path}: differs from the vocab.json meta.json records (its "
                                f"size or sha256: the file is damaged or was changed, and "
                                f"the token ids would mean other characters); {REDO}")
        V = len(self.vocab)
        dt = self.dtype.newbyteorder("<")
        step = (4 << 20) // dt.itemsize * dt.itemsize
        buf = bytearray(step)
        for s in SPLITS:
            path = self.path / f"{s}.bin"
            want = self.counts[s] * dt.itemsize
            f, _ = open_regular(path, "a token file")
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
                                            f"{os_message(e)}") from None
                        if not k:
                            raise DataError(f"{path}: shorter than meta.json records "
                                            f"({done + got} of {want} bytes); the directory "
                                            f"is damaged, {REDO}")
                        got += k
                    h.update(chunk)
                    ids = np.frombuffer(chunk, dtype=dt)
                    if ids.size and int(ids.max()) >= V:
                        first = int(np.argmax(ids >= V))
                        raise DataError(f"{path}: token id {int(ids[first])} at position "
                                        f"{done // dt.itemsize + first:,} is not below the "
                                        f"vocabulary size {V}; the directory is damaged, "
                                        f"{REDO}")
                    done += got
            if h.hexdigest() != self._files[f"{s}.bin"]["sha256"]:
                raise DataError(f"{path}: sha256 differs from meta.json (the file is damaged "
                                f"or was changed); {REDO}")

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


__all__ = ["Dataset"]
