"""What prepare reads: the inputs a command line names (files, folders walked in sorted
order, ``-`` for stdin, pipes) resolved to sources, and their fingerprints (size and
sha256 of every file), which meta.json records and a resumed run compares."""
from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .fsutil import os_message, sha256_file
from .meta import DATA_FORMAT


@dataclass
class Source:
    """One input: ``name`` is what messages and meta.json show (the path as given, or
    ``-``); ``path`` is the file read (a spool file for stdin and pipes)."""

    name: str
    path: Path | None
    stream: bool = False          # stdin or a pipe: readable once, spooled first
    record_path: str | None = None

    def record(self) -> str:
        return self.record_path if self.record_path is not None else self.name



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
            raise InputError(f"{d}: {os_message(e)}") from None
        for e in entries:
            if e.name.startswith("."):
                continue
            p = d / e.name
            r = f"{rel}/{e.name}" if rel else e.name
            try:
                is_dir = e.is_dir()
                is_file = not is_dir and e.is_file()
            except OSError as err:
                raise InputError(f"{p}: {os_message(err)}") from None
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


def resolve(inputs, glob: str | None = None, skip: list[Path] = ()) -> list[Source]:
    """The :class:`Source` of every input, as :func:`resolve_inputs` describes; folders
    in ``skip`` (prepare's output) are not walked into."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    skip_real = {os.path.realpath(p) for p in skip}
    out: list[Source] = []
    stdin_seen = False
    for raw in inputs:
        raw = os.fspath(raw)
        if raw == "-":
            if stdin_seen:
                raise InputError("-: standard input can be given only once")
            stdin_seen = True
            out.append(Source("-", None, stream=True))
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
            raise InputError(f"{raw}: {os_message(e)}") from None
        if stat.S_ISDIR(st.st_mode):
            files = _walk(p, glob, skip_real)
            if not files:
                what = f"no files matching {glob!r}" if glob else "no files"
                raise InputError(f"{raw}: {what}")
            out.extend(Source(str(f), f, record_path=os.path.abspath(f)) for f in files)
        elif stat.S_ISREG(st.st_mode):
            out.append(Source(raw, p, record_path=os.path.abspath(p)))
        else:   # a pipe (<(cmd)), a character device: read once, like stdin
            out.append(Source(raw, p, stream=True))
    return out


def resolve_inputs(inputs, glob: str | None = None) -> list[str]:
    """The files that ``inputs`` name, in the order prepare reads them: files as given,
    folders walked recursively (sorted, hidden entries skipped, ``glob`` filtering file
    names), ``-`` for stdin.  Raises InputError for a missing path, a symlink loop, an
    unreadable folder, or a folder without matching files."""
    return [s.name for s in resolve(inputs, glob)]


def _file_digest(path: Path, name: str) -> tuple[int, str]:
    try:
        return sha256_file(path)
    except OSError as e:
        raise InputError(f"{name}: {os_message(e)}") from None


def fingerprint_sources(inputs, corpus: str | None = None,
                        glob: str | None = None) -> list[dict] | None:
    """``[{"path", "size", "sha256"}, ...]`` for the files ``inputs`` (or the registry
    ``corpus``) name, exactly as :func:`charrnn.store.prepare.prepare` records them in
    ``meta["sources"]`` (streamed; nothing is held in memory).  ``None`` when it cannot be known again:
    stdin or a pipe among the inputs, or a registry corpus not downloaded."""
    if corpus is not None:
        from . import corpora
        files = corpora.corpus_files(corpus, download=False)
        if files is None:
            return None
        sources = [Source(str(f), Path(f), record_path=os.path.abspath(f)) for f in files]
    else:
        sources = resolve(inputs, glob)
    records = []
    for s in sources:
        if s.stream:
            return None
        size, digest = _file_digest(s.path, s.name)
        records.append({"path": s.record(), "size": size, "sha256": digest})
    return records


__all__ = ["Source", "resolve", "resolve_inputs", "fingerprint_sources"]
