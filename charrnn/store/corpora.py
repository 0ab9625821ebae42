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

import contextlib
import hashlib
import json
import os
import shutil
import sysconfig
from pathlib import Path

from .. import __version__
from ..errors import CorpusError

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


def cache_dir() -> Path:
    """Where downloads go: ``$CHARRNN_CACHE``, else ``user_cache_dir()/corpora``."""
    env = os.environ.get("CHARRNN_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    from ..kernels.runtime import user_cache_dir
    return user_cache_dir() / "corpora"


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


# ----------------------------------------------------------------- downloads

def _target_name(entry: dict) -> str:
    return entry.get("member") or f"{entry['name']}.txt"


def _entry_dir(entry: dict) -> Path:
    return cache_dir() / entry["name"]


def _read_info(path: Path) -> dict | None:
    """source.json as a dict, or None when it is missing, not a regular file, too large
    or not a JSON object (then the download is not complete: download it again)."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = os.read(fd, 1 << 16)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        info = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return info if isinstance(info, dict) else None


def _expected_sha256(entry: dict, info: dict) -> str | None:
    """The sha256 the cached text must have: the registry's (plain-text entries, or a
    zip/gz entry's ``member_sha256``), else the one recorded when it was downloaded."""
    pinned = entry.get("sha256") if entry.get("format", "txt") == "txt" \
        else entry.get("member_sha256")
    if pinned:
        return pinned
    recorded = info.get("file_sha256")
    if recorded is None and entry.get("format", "txt") == "txt":
        recorded = info.get("sha256")          # the downloaded file is the text itself
    return recorded if isinstance(recorded, str) and recorded else None


def _cached_file(entry: dict, verify: bool = True) -> Path | None:
    """The cached text if a complete download is there (source.json is written last),
    with ``verify`` checked against its sha256 (:func:`_expected_sha256`; a cache from
    before the text's hash was recorded gets it recorded now).  A cached text that
    fails the check is a CorpusError: it is never used."""
    import stat

    d = _entry_dir(entry)
    info_path = d / "source.json"
    target = d / _target_name(entry)
    info = _read_info(info_path)
    if info is None:
        return None
    try:
        st = target.stat()
    except OSError:
        return None
    size = info.get("file_size")
    if not stat.S_ISREG(st.st_mode) or isinstance(size, bool) or st.st_size != size:
        return None
    if not verify:
        return target
    want = _expected_sha256(entry, info)
    try:
        _, got = _sha256_file(target)
    except OSError as e:
        raise CorpusError(f"corpus '{entry['name']}': cannot read the cached copy {target}: "
                          f"{(e.strerror or str(e)).lower()}") from None
    if want is None:
        from .fsutil import atomic_write_text
        with contextlib.suppress(OSError):
            atomic_write_text(info_path, json.dumps(dict(info, file_sha256=got), indent=1)
                              + "\n")
    elif got != want:
        raise CorpusError(f"corpus '{entry['name']}': the cached copy {target} does not match "
                          f"its sha256 (expected {want}, got {got}): it was changed or damaged "
                          f"after the download; delete {d} to download it again")
    return target


def _local_copy(entry: dict) -> Path | None:
    env = os.environ.get("CHARRNN_CORPORA_DIR", "").strip()
    if not env:
        return None
    for cand in dict.fromkeys([f"{entry['name']}.txt", _target_name(entry)]):
        p = Path(env).expanduser() / cand
        if p.is_file():
            return p
    return None


def _sha256_file(path: Path) -> tuple[int, str]:
    from .fsutil import sha256_file

    return sha256_file(path)


_warned_unverified: set[str] = set()


def _check_local(entry: dict, path: Path) -> Path:
    fmt = entry.get("format", "txt")
    want = entry.get("sha256") if fmt == "txt" else entry.get("member_sha256")
    if want:
        try:
            _, got = _sha256_file(path)
        except OSError as e:
            raise CorpusError(f"corpus '{entry['name']}': {path}: "
                              f"{(e.strerror or str(e)).lower()}") from None
        if got != want:
            raise CorpusError(f"corpus '{entry['name']}': {path}: sha256 mismatch (expected "
                              f"{want}, got {got}); remove the file or unset "
                              "CHARRNN_CORPORA_DIR")
    elif str(path) not in _warned_unverified:
        from ..console import warn
        _warned_unverified.add(str(path))
        warn(f"corpus '{entry['name']}': using {path} from CHARRNN_CORPORA_DIR unverified "
             "(the registry has no sha256 for it); make sure it is the text you mean")
    return path


def _fetch(entry: dict, dest: Path, show_progress: bool) -> tuple[int, str]:
    """Stream ``entry['url']`` into ``dest``; returns (size, sha256).  Every network
    failure becomes one CorpusError line; local write errors (a full disk) propagate."""
    import http.client
    import urllib.error
    import urllib.request

    name, url = entry["name"], entry["url"]

    def failed(reason) -> CorpusError:
        return CorpusError(f"corpus '{name}': download failed: {reason} ({url})")

    req = urllib.request.Request(url, headers={"User-Agent": f"charrnn/{__version__}"})
    h = hashlib.sha256()
    size = 0
    bar = None
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        raise failed(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, OSError):
            reason = reason.strerror or str(reason)
        raise CorpusError(f"corpus '{name}': download failed: {reason} ({url}); check the "
                          "network, or put a copy in CHARRNN_CORPORA_DIR") from None
    except (OSError, http.client.HTTPException, ValueError) as e:   # timeouts, bad URLs
        raise failed(str(e) or type(e).__name__) from None
    try:
        with resp, open(dest, "wb") as out:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            if show_progress:
                from .. import console
                bar = console.progress(total=total, desc=f"downloading {name}", unit="B")
                if bar is not None:
                    bar.unit_scale = True
                    bar.unit_divisor = 1024
                    bar.refresh()
            while True:
                try:
                    block = resp.read(1 << 20)
                except (OSError, http.client.HTTPException) as e:
                    raise failed(str(e) or type(e).__name__) from None
                if not block:
                    break
                out.write(block)
                h.update(block)
                size += len(block)
                if bar is not None:
                    bar.update(len(block))
            if total is not None and size != total:
                raise failed(f"the connection closed after {size} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
    finally:
        if bar is not None:
            bar.close()
    return size, h.hexdigest()


def _unpack(entry: dict, archive: Path, dest: Path) -> None:
    fmt = entry.get("format", "txt")
    name = entry["name"]
    try:
        if fmt == "zip":
            import zipfile
            with zipfile.ZipFile(archive) as z:
                member = entry["member"]
                try:
                    src = z.open(member)
                except KeyError:
                    raise CorpusError(f"corpus '{name}': the archive has no member "
                                      f"{member!r}") from None
                with src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        elif fmt == "gz":
            import gzip
            with gzip.open(archive, "rb") as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        else:
            raise CorpusError(f"corpus '{name}': unknown format {fmt!r} in the registry")
    except (OSError, EOFError, ValueError) as e:
        if isinstance(e, CorpusError):
            raise
        import zipfile
        if isinstance(e, (zipfile.BadZipFile, EOFError)) or "gzip" in str(e).lower():
            raise CorpusError(f"corpus '{name}': the downloaded archive is damaged ({e})") \
                from None
        raise


def download_corpus(name: str, show_progress: bool = True) -> Path:
    """Download corpus ``name`` into the cache (verifying it) and return its text file."""
    from ..console import warn
    from .fsutil import atomic_write_text, fsync_dir

    entry = get(name)
    if entry.get("kind") != "download":
        raise CorpusError(f"corpus '{name}' is built in; it is not downloaded")
    d = _entry_dir(entry)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CorpusError(f"corpus '{name}': cannot create the cache directory {d}: "
                          f"{(e.strerror or str(e)).lower()} (set CHARRNN_CACHE)") from None
    from .fsutil import make_temp, remove_stale_temps

    remove_stale_temps(d)            # downloads whose process is gone

    def temp(stem: str) -> Path:
        try:
            fd, p = make_temp(d, stem)
        except OSError as e:
            raise CorpusError(f"corpus '{name}': cannot write in the cache directory {d}: "
                              f"{(e.strerror or str(e)).lower()} (set CHARRNN_CACHE)") from None
        os.close(fd)
        return p

    part = temp("download")
    unpacked = temp(_target_name(entry))
    target = d / _target_name(entry)
    try:
        size, digest = _fetch(entry, part, show_progress)
        want = entry.get("sha256")
        if want and digest != want:
            raise CorpusError(f"corpus '{name}': sha256 mismatch (expected {want}, got "
                              f"{digest}); the download was discarded")
        want_size = entry.get("size")
        if want_size is not None and size != want_size:
            raise CorpusError(f"corpus '{name}': size mismatch (expected {want_size} bytes, "
                              f"got {size}); the download was discarded")
        if not want:
            warn(f"corpus '{name}': the registry has no sha256 for {entry['url']}; recorded "
                 f"{digest} from this first download (trust on first use)")
        if entry.get("format", "txt") == "txt":
            os.replace(part, target)
        else:
            _unpack(entry, part, unpacked)
            os.replace(unpacked, target)
            os.unlink(part)
        file_size, file_digest = (size, digest) if entry.get("format", "txt") == "txt" \
            else _sha256_file(target)
        info = {"name": name, "url": entry["url"], "sha256": digest, "size": size,
                "file": target.name, "file_size": file_size, "file_sha256": file_digest,
                "verified": bool(want)}
        atomic_write_text(d / "source.json", json.dumps(info, indent=1) + "\n")
        fsync_dir(d)
    finally:
        for p in (part, unpacked):
            with contextlib.suppress(OSError):
                p.unlink()
    return target


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
        local = _local_copy(entry)
        if local is not None:
            return [_check_local(entry, local)]
        cached = _cached_file(entry)
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
        elif _local_copy(e) is not None:
            cached = "local"
        else:
            f = _cached_file(e, verify=False)        # listing reads no corpus whole
            cached = "yes" if f is not None else "no"
            if f is not None:
                size = f.stat().st_size
        rows.append({"name": name, "kind": kind, "size": size, "cached": cached,
                     "license": e.get("license", ""), "description": e.get("description", "")})
    return rows


def _human(n) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def format_table(rows: list[dict]) -> str:
    head = ("NAME", "SIZE", "CACHED", "LICENSE", "DESCRIPTION")
    table = [head] + [(r["name"], _human(r["size"]), r["cached"], r["license"],
                       r["description"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4]
             for row in table]
    return "\n".join(line.rstrip() for line in lines)


download = download_corpus

__all__ = ["registry", "get", "cache_dir", "corpora_dir", "corpus_files", "download_corpus",
           "list_corpora", "format_table", "stdlib_files"]
