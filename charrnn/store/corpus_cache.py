"""The corpus cache: a registry corpus downloaded once, checked against its sha256 and
size before it is kept, and checked again on every use (see charrnn.store.corpora for
the layout: ``CACHE/NAME/NAME.txt`` and ``CACHE/NAME/source.json``), and a local copy
in ``$CHARRNN_CORPORA_DIR`` used before downloading."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

from .. import __version__
from ..errors import CorpusError
from .fsutil import os_message, sha256_file


def cache_dir() -> Path:
    """Where downloads go: ``$CHARRNN_CACHE``, else ``user_cache_dir()/corpora``."""
    env = os.environ.get("CHARRNN_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    from ..kernels.runtime import user_cache_dir
    return user_cache_dir() / "corpora"


def target_name(entry: dict) -> str:
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


def cached_file(entry: dict, verify: bool = True) -> Path | None:
    """The cached text if a complete download is there (source.json is written last),
    with ``verify`` checked against its sha256 (:func:`_expected_sha256`; a cache from
    before the text's hash was recorded gets it recorded now).  A cached text that
    fails the check is a CorpusError: it is never used."""
    import stat

    d = _entry_dir(entry)
    info_path = d / "source.json"
    target = d / target_name(entry)
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
        _, got = sha256_file(target)
    except OSError as e:
        raise CorpusError(f"corpus '{entry['name']}': cannot read the cached copy {target}: "
                          f"{os_message(e)}") from None
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


def local_copy(entry: dict) -> Path | None:
    env = os.environ.get("CHARRNN_CORPORA_DIR", "").strip()
    if not env:
        return None
    for cand in dict.fromkeys([f"{entry['name']}.txt", target_name(entry)]):
        p = Path(env).expanduser() / cand
        if p.is_file():
            return p
    return None



_warned_unverified: set[str] = set()


def check_local(entry: dict, path: Path) -> Path:
    fmt = entry.get("format", "txt")
    want = entry.get("sha256") if fmt == "txt" else entry.get("member_sha256")
    if want:
        try:
            _, got = sha256_file(path)
        except OSError as e:
            raise CorpusError(f"corpus '{entry['name']}': {path}: "
                              f"{os_message(e)}") from None
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
                bar = console.progress(total=total, desc=f"downloading {name}", unit="B",
                                       unit_scale=True, unit_divisor=1024)
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


def download(entry: dict, show_progress: bool = True) -> Path:
    """Download the registry ``entry`` into the cache (verifying it) and return its text
    file."""
    from ..console import warn
    from .fsutil import atomic_write_text, fsync_dir

    name = entry["name"]
    if entry.get("kind") != "download":
        raise CorpusError(f"corpus '{name}' is built in; it is not downloaded")
    d = _entry_dir(entry)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CorpusError(f"corpus '{name}': cannot create the cache directory {d}: "
                          f"{os_message(e)} (set CHARRNN_CACHE)") from None
    from .fsutil import make_temp, remove_stale_temps

    remove_stale_temps(d)            # downloads whose process is gone

    def temp(stem: str) -> Path:
        try:
            fd, p = make_temp(d, stem)
        except OSError as e:
            raise CorpusError(f"corpus '{name}': cannot write in the cache directory {d}: "
                              f"{os_message(e)} (set CHARRNN_CACHE)") from None
        os.close(fd)
        return p

    part = temp("download")
    unpacked = temp(target_name(entry))
    target = d / target_name(entry)
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
            else sha256_file(target)
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



__all__ = ["cache_dir", "target_name", "cached_file", "local_copy", "check_local", "download"]
