"""The corpus registry: well-known texts by name, downloaded once into a cache, and the
built-in corpora that need no network.

The registry is ``corpora/registry.json`` at the top of the source tree (next to the
``charrnn`` package; found from a checkout or an editable install)::

    {"version": 1, "corpora": [
      {"name": "tinyshakespeare", "kind": "download", "url": "https://...",
       "sha256": "86c4...", "size": 1115394, "license": "...", "description": "...",
       "format": "txt" | "zip" | "gz", "member": "enwik8"},      # member: zip only
      {"name": "python-stdlib", "kind": "python-stdlib", ...},
      {"name": "fables", "kind": "file", "path": "fables.txt", "sha256": ..., "size": ...}]}

``kind``:

* ``download``: fetched from ``url`` on first use into the cache directory
  (``$CHARRNN_CACHE``, default ``~/.cache/charrnn/corpora``) as ``CACHE/NAME/NAME.txt``
  (or the zip ``member``), streamed to a temporary file and checked against ``sha256``
  and ``size`` (both of the downloaded file, the archive for zip/gz) before it is kept;
  a mismatch discards the download.  Entries whose hash could not be computed when the
  registry was written have ``"sha256": null``: the hash of the first download is then
  recorded in ``CACHE/NAME/source.json`` and printed as a warning ("trust on first
  use").  ``source.json`` also records the sha256 of the cached text itself
  (``file_sha256``; the unpacked member for zip/gz), and the cached text is checked
  against it (and against the registry's ``sha256`` for plain-text entries) on every
  use: a cache that was changed after the download is a CorpusError, never used.
  Before downloading, ``$CHARRNN_CORPORA_DIR/NAME.txt`` (or the member's name) is used
  if it exists: a local copy, checked against ``sha256`` when the registry's hash is of
  that same file (plain-text entries); a copy the registry has no hash for is used with
  a warning (once per process) that it is not verified.
* ``python-stdlib``: every ``.py`` file of the running Python's standard library
  (``sysconfig.get_paths()["stdlib"]``), in sorted path order, without
  ``site-packages``/``dist-packages``, ``__pycache__`` and the test suites (``test``,
  ``tests``, ``idle_test`` folders: they hold deliberately malformed files).  About
  12 MB on CPython 3.11: a real multi-megabyte corpus on every machine, offline.
* ``file``: a text shipped in ``corpora/`` (written for this project), for tests and
  demos.
"""
from __future__ import annotations

import json
import os
import sysconfig
from pathlib import Path

from ..errors import CorpusError
from ..units import fmt_bytes
from . import corpus_cache
from .corpus_cache import cache_dir

REGISTRY_VERSION = 1
KINDS = ("download", "python-stdlib", "file")
_STDLIB_SKIP = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
_registry_cache: dict | None = None


def corpora_dir() -> Path:
    """The folder holding registry.json and the project's own texts: ``corpora/`` next to
    the package in a checkout or an editable install, else ``share/charrnn/corpora``
    under the installation prefix (where a wheel puts it)."""
    here = Path(__file__).resolve().parents[2] / "corpora"
    if (here / "registry.json").is_file():
        return here
    import sys
    import sysconfig
    for base in (sysconfig.get_path("data"), sys.prefix):
        cand = Path(base) / "share" / "charrnn" / "corpora"
        if (cand / "registry.json").is_file():
            return cand
    return here



def registry() -> dict[str, dict]:
    """name -> entry, read once from registry.json (tests patch entries in place)."""
    global _registry_cache
    if _registry_cache is None:
        path = corpora_dir() / "registry.json"
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise CorpusError(f"{path}: the corpus registry is missing (a broken install?)") \
                from None
        except ValueError as e:
            raise CorpusError(f"{path}: corrupt corpus registry ({e})") from None
        if data.get("version", 0) > REGISTRY_VERSION:
            raise CorpusError(f"{path}: registry version {data.get('version')} is newer than "
                              "this charrnn understands; upgrade charrnn")
        _registry_cache = {e["name"]: e for e in data["corpora"]}
    return _registry_cache


def get(name: str) -> dict:
    reg = registry()
    if name not in reg:
        raise CorpusError(f"unknown corpus {name!r} (known: {', '.join(sorted(reg))}); "
                          "see 'charrnn prepare --list-corpora'")
    return reg[name]


# ----------------------------------------------------------------- built-in corpora

def stdlib_files() -> list[Path]:
    """The .py files of the running Python's standard library, sorted (see module doc)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for d, dirs, files in os.walk(root):           # symlinked folders are not followed
        dirs[:] = [x for x in dirs if x not in _STDLIB_SKIP and not x.startswith(".")]
        rel = Path(d).relative_to(root).parts
        for f in files:
            if f.endswith(".py") and not f.startswith("."):
                found.append(rel + (f,))
    return [root.joinpath(*parts) for parts in sorted(found)]


def download_corpus(name: str, show_progress: bool = True) -> Path:
    """Download corpus ``name`` into the cache (verifying it) and return its text file."""
    return corpus_cache.download(get(name), show_progress)


def corpus_files(name: str, download: bool = True, show_progress: bool = True) -> list[Path] | None:
    """The text files of corpus ``name``, downloading it first if needed.  With
    ``download=False`` a download corpus that is not available locally gives None."""
    entry = get(name)
    kind = entry.get("kind")
    if kind == "python-stdlib":
        files = stdlib_files()
        if not files:
            raise CorpusError(f"corpus '{name}': no .py files under "
                              f"{sysconfig.get_paths()['stdlib']}")
        return files
    if kind == "file":
        p = corpora_dir() / entry["path"]
        if not p.is_file():
            raise CorpusError(f"corpus '{name}': {p} is missing (a broken install?)")
        return [p]
    if kind == "download":
        local = corpus_cache.local_copy(entry)
        if local is not None:
            return [corpus_cache.check_local(entry, local)]
        cached = corpus_cache.cached_file(entry)
        if cached is not None:
            return [cached]
        if not download:
            return None
        return [download_corpus(name, show_progress=show_progress)]
    raise CorpusError(f"corpus '{name}': unknown kind {kind!r} in the registry")


# ----------------------------------------------------------------- listing

def list_corpora() -> list[dict]:
    """One row per corpus: name, kind, size (bytes of text; None if unknown), cached
    ("built-in", "local", "yes", "no"), license, description."""
    rows = []
    for name, e in sorted(registry().items()):
        kind = e.get("kind")
        size = e.get("text_size", e.get("size"))
        if kind == "python-stdlib":
            size = sum(p.stat().st_size for p in stdlib_files())
            cached = "built-in"
        elif kind == "file":
            cached = "built-in"
        elif corpus_cache.local_copy(e) is not None:
            cached = "local"
        else:
            f = corpus_cache.cached_file(e, verify=False)    # listing reads no corpus whole
            cached = "yes" if f is not None else "no"
            if f is not None:
                size = f.stat().st_size
        rows.append({"name": name, "kind": kind, "size": size, "cached": cached,
                     "license": e.get("license", ""), "description": e.get("description", "")})
    return rows


def format_table(rows: list[dict]) -> str:
    head = ("NAME", "SIZE", "CACHED", "LICENSE", "DESCRIPTION")
    table = [head] + [(r["name"], fmt_bytes(r["size"]), r["cached"], r["license"],
                       r["description"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4]
             for row in table]
    return "\n".join(line.rstrip() for line in lines)


download = download_corpus

__all__ = ["registry", "get", "cache_dir", "corpora_dir", "corpus_files", "download_corpus",
           "list_corpora", "format_table", "stdlib_files"]