"""The corpus registry: downloads from a local HTTP server on 127.0.0.1 (never the
internet), sha256 checks, trust on first use, the cache, local copies, zip archives,
and the built-in corpora."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import sysconfig
import threading
import zipfile
from pathlib import Path

import pytest

from charrnn.store import corpora
from charrnn.store.dataset import Dataset
from charrnn.store.prepare import prepare
from charrnn.store.sources import fingerprint_sources
from charrnn.errors import CorpusError

from conftest import make_text

TEXT = make_text(3000, seed=11).encode()
SHA = hashlib.sha256(TEXT).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.hits.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        short = self.path.startswith("/short")            # claims more than it sends
        self.send_header("Content-Length", str(len(body) + (100 if short else 0)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server; returns (base url, files dict to fill, list of request paths)."""
    for var in ("no_proxy", "NO_PROXY"):                  # never through a proxy
        monkeypatch.setenv(var, "*")
    files: dict[str, bytes] = {}
    hits: list[str] = []
    handler = type("H", (_Handler,), {"files": files, "hits": hits})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files, hits
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_CACHE", str(d))
    monkeypatch.delenv("CHARRNN_CORPORA_DIR", raising=False)
    return d


def _entry(monkeypatch, name, **changes):
    entry = corpora.get(name)
    for k, v in changes.items():
        monkeypatch.setitem(entry, k, v)
    return entry


def test_download_verify_and_cache(server, cache, monkeypatch, tmp_path, capsys):
    base, files, hits = server
    files["/input.txt"] = TEXT
    _entry(monkeypatch, "tinyshakespeare", url=f"{base}/input.txt", sha256=SHA, size=len(TEXT))
    assert corpora.corpus_files("tinyshakespeare", download=False) is None
    [path] = corpora.corpus_files("tinyshakespeare", show_progress=False)
    assert path == cache / "tinyshakespeare" / "tinyshakespeare.txt"
    assert path.read_bytes() == TEXT and hits == ["/input.txt"]
    info = json.loads((cache / "tinyshakespeare" / "source.json").read_text())
    assert info["sha256"] == SHA and info["verified"] is True
    assert capsys.readouterr().err == ""                  # verified: no warning
    # cached: no second request, and listed as cached
    assert corpora.corpus_files("tinyshakespeare") == [path] and len(hits) == 1
    row = {r["name"]: r for r in corpora.list_corpora()}["tinyshakespeare"]
    assert row["cached"] == "yes" and row["size"] == len(TEXT)
    # prepare --corpus reads the cached file and records it as the source
    s = prepare([], tmp_path / "d", corpus="tinyshakespeare", show_progress=False)
    assert s["chars"] == len(TEXT) and len(hits) == 1
    ds = Dataset(tmp_path / "d")
    assert ds.meta["sources"] == [{"path": str(path), "size": len(TEXT), "sha256": SHA}]
    assert fingerprint_sources([], corpus="tinyshakespeare") == ds.meta["sources"]
    assert sorted(p.name for p in (cache / "tinyshakespeare").iterdir()) == \
        ["source.json", "tinyshakespeare.txt"]


def test_sha256_mismatch_discards_the_download(server, cache, monkeypatch, tmp_path):
    base, files, _ = server
    files["/input.txt"] = TEXT + b"tampered"
    _entry(monkeypatch, "tinyshakespeare", url=f"{base}/input.txt", sha256=SHA)
    got = hashlib.sha256(TEXT + b"tampered").hexdigest()
    with pytest.raises(CorpusError) as ei:
        corpora.corpus_files("tinyshakespeare", show_progress=False)
    assert str(ei.value) == (f"corpus 'tinyshakespeare': sha256 mismatch (expected {SHA}, "
                             f"got {got}); the download was discarded")
    assert list((cache / "tinyshakespeare").iterdir()) == []
    assert corpora.corpus_files("tinyshakespeare", download=False) is None


def test_cli_prepare_corpus_downloads(server, cache, monkeypatch, tmp_path, capsys):
    from charrnn.cli.app import main
    base, files, _ = server
    files["/t.txt"] = TEXT
    _entry(monkeypatch, "tinyshakespeare", url=f"{base}/t.txt", sha256=SHA, size=len(TEXT))
    with pytest.raises(SystemExit) as ei:
        main(["prepare", "--corpus", "tinyshakespeare", "-o", str(tmp_path / "d"), "--json"])
    out, err = capsys.readouterr()
    assert ei.value.code == 0, err
    assert json.loads(out)["corpus"] == "tinyshakespeare"
    files["/t.txt"] = b"changed on the server"
    monkeypatch.setitem(corpora.get("tinyshakespeare"), "url", f"{base}/t.txt")
    # mismatch through the CLI: one Error line, exit 1 (on a fresh cache)
    monkeypatch.setenv("CHARRNN_CACHE", str(tmp_path / "cache2"))
    with pytest.raises(SystemExit) as ei:
        main(["prepare", "--corpus", "tinyshakespeare", "-o", str(tmp_path / "d2")])
    out, err = capsys.readouterr()
    got = hashlib.sha256(b"changed on the server").hexdigest()
    assert ei.value.code == 1 and out == ""
    assert err == (f"Error: corpus 'tinyshakespeare': sha256 mismatch (expected {SHA}, got "
                   f"{got}); the download was discarded\n")
    assert not (tmp_path / "d2").exists()


def test_trust_on_first_use(server, cache, monkeypatch, capsys):
    base, files, hits = server
    files["/pg11.txt"] = TEXT
    _entry(monkeypatch, "alice", url=f"{base}/pg11.txt", sha256=None, size=None)
    [path] = corpora.corpus_files("alice", show_progress=False)
    err = capsys.readouterr().err
    assert err == (f"Warning: corpus 'alice': the registry has no sha256 for {base}/pg11.txt; "
                   f"recorded {SHA} from this first download (trust on first use)\n")
    info = json.loads((cache / "alice" / "source.json").read_text())
    assert info["sha256"] == SHA and info["verified"] is False
    assert corpora.corpus_files("alice") == [path] and len(hits) == 1


def test_zip_member(server, cache, monkeypatch):
    base, files, _ = server
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("enwik8", TEXT)
    archive = buf.getvalue()
    files["/enwik8.zip"] = archive
    _entry(monkeypatch, "enwik8", url=f"{base}/enwik8.zip",
           sha256=hashlib.sha256(archive).hexdigest(), size=len(archive))
    [path] = corpora.corpus_files("enwik8", show_progress=False)
    assert path.name == "enwik8" and path.read_bytes() == TEXT
    assert sorted(p.name for p in path.parent.iterdir()) == ["enwik8", "source.json"]
    _entry(monkeypatch, "text8", url=f"{base}/enwik8.zip", sha256=None, member="text8")
    with pytest.raises(CorpusError, match="the archive has no member 'text8'"):
        corpora.corpus_files("text8", show_progress=False)


def test_network_errors_are_one_line(server, cache, monkeypatch):
    base, files, _ = server
    _entry(monkeypatch, "moby-dick", url=f"{base}/missing.txt", sha256=None)
    with pytest.raises(CorpusError) as ei:
        corpora.corpus_files("moby-dick", show_progress=False)
    assert str(ei.value) == (f"corpus 'moby-dick': download failed: HTTP 404 Not Found "
                             f"({base}/missing.txt)")
    # the connection drops in the middle of the body
    files["/short.txt"] = TEXT
    _entry(monkeypatch, "moby-dick", url=f"{base}/short.txt")
    with pytest.raises(CorpusError) as ei:
        corpora.corpus_files("moby-dick", show_progress=False)
    assert str(ei.value).startswith("corpus 'moby-dick': download failed: ")
    assert str(ei.value).endswith(f"({base}/short.txt)") and "\n" not in str(ei.value)
    # a port nobody listens on
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    _entry(monkeypatch, "moby-dick", url=f"http://127.0.0.1:{port}/x.txt")
    with pytest.raises(CorpusError) as ei:
        corpora.corpus_files("moby-dick", show_progress=False)
    msg = str(ei.value)
    assert msg.startswith("corpus 'moby-dick': download failed: ") and "\n" not in msg
    assert "connection refused" in msg.lower()
    assert list((cache / "moby-dick").iterdir()) == []


def test_local_copy_is_used_before_downloading(tmp_path, cache, monkeypatch):
    local = tmp_path / "mine"
    local.mkdir()
    (local / "tinyshakespeare.txt").write_bytes(TEXT)
    monkeypatch.setenv("CHARRNN_CORPORA_DIR", str(local))
    _entry(monkeypatch, "tinyshakespeare", url="http://127.0.0.1:9/never", sha256=SHA)
    assert corpora.corpus_files("tinyshakespeare") == [local / "tinyshakespeare.txt"]
    row = {r["name"]: r for r in corpora.list_corpora()}["tinyshakespeare"]
    assert row["cached"] == "local"
    assert not cache.exists()
    _entry(monkeypatch, "tinyshakespeare", sha256="0" * 64)
    with pytest.raises(CorpusError, match=r"tinyshakespeare.txt: sha256 mismatch \(expected 0+, "):
        corpora.corpus_files("tinyshakespeare")


def test_registry_entries_are_complete():
    reg = corpora.registry()
    assert {"tinyshakespeare", "enwik8", "text8", "python-stdlib", "fables"} <= set(reg)
    gutenberg = [e for e in reg.values() if "gutenberg.org" in (e.get("url") or "")]
    assert len(gutenberg) >= 3
    for name, e in reg.items():
        assert e["kind"] in corpora.KINDS, name
        assert e.get("license") and e.get("description"), name
        if e["kind"] == "download":
            assert e["url"].startswith(("http://", "https://")) and "sha256" in e, name
            assert e["sha256"] is None or len(e["sha256"]) == 64, name
    ts = reg["tinyshakespeare"]
    assert ts["size"] == 1115394 and ts["url"].endswith("tinyshakespeare/input.txt")
    shared = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"
    if shared.is_file():                                   # only where a copy happens to exist
        assert hashlib.sha256(shared.read_bytes()).hexdigest() == ts["sha256"]


def test_shipped_text_matches_its_registry_entry():
    e = corpora.get("fables")
    [path] = corpora.corpus_files("fables")
    data = path.read_bytes()
    assert len(data) == e["size"] and hashlib.sha256(data).hexdigest() == e["sha256"]
    data.decode("utf-8")


def test_python_stdlib_corpus():
    files = corpora.corpus_files("python-stdlib")
    root = Path(sysconfig.get_paths()["stdlib"])
    rel = [p.relative_to(root).parts for p in files]
    assert rel == sorted(rel) and len(files) > 100
    assert all(p.suffix == ".py" for p in files)
    skipped = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    assert not any(set(parts[:-1]) & skipped for parts in rel)
    assert ("os.py",) in rel
    assert sum(p.stat().st_size for p in files) > 2_000_000


def test_unknown_corpus():
    with pytest.raises(CorpusError, match=r"^unknown corpus 'nope' \(known: alice, "):
        corpora.get("nope")


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("CHARRNN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert corpora.cache_dir() == tmp_path / "xdg" / "charrnn" / "corpora"
    monkeypatch.setenv("CHARRNN_CACHE", str(tmp_path / "c"))
    assert corpora.cache_dir() == tmp_path / "c"
    assert os.fspath(corpora.corpora_dir() / "registry.json")
