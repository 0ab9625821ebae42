"""`charrnn prepare` on the command line: exact error lines and exit codes, nothing written
on failure, stdin, --json, --force, --list-corpora, and a prepare killed mid-write."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from charrnn.store.dataset import Dataset

from conftest import run_main as invoke
from conftest import make_text, run_cli


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(make_text(4000, seed=5), encoding="utf-8")
    return p


def _only(tmp_path, *names):
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_prepare_prints_a_summary_on_stderr(tmp_path, corpus, capsys):
    code, out, err = invoke(["prepare", corpus, "-o", tmp_path / "d", "--test-frac", "0.1"],
                            capsys)
    assert code == 0 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"prepared {tmp_path / 'd'} from 1 file (3.9 KiB) in ")
    assert lines[1] == f"  characters 4,000, vocabulary {len(set(corpus.read_text()))} (uint8)"
    assert lines[2] == "  train 3,400 | val 200 | test 400"
    assert Dataset(tmp_path / "d").counts == {"train": 3400, "val": 200, "test": 400}


def test_prepare_json(tmp_path, corpus, capsys):
    code, out, err = invoke(["prepare", corpus, "-o", tmp_path / "d", "--json",
                             "--lowercase", "--min-count", "2", "--val-frac", "0.2"], capsys)
    assert code == 0 and err == ""
    s = json.loads(out)
    assert (s["chars"], s["train"], s["val"], s["test"]) == (4000, 3200, 800, 0)
    assert set(s) >= {"data_dir", "chars", "vocab_size", "train", "val", "test", "dtype",
                      "seconds", "files", "bytes", "unknown", "unk", "corpus"}
    opts = Dataset(tmp_path / "d").meta["options"]
    assert opts["lowercase"] is True and opts["min_count"] == 2 and opts["val_frac"] == 0.2


def test_stdin(tmp_path, capsys, monkeypatch):
    text = "from standard input\n" * 40
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    code, out, err = invoke(["prepare", "-", "-o", tmp_path / "d", "--json"], capsys)
    assert code == 0, err
    ds = Dataset(tmp_path / "d")
    assert ds.vocab.decode(list(ds.split("train")) + list(ds.split("val"))) == text
    assert ds.meta["sources"][0]["path"] == "-" and ds.meta["inputs"] == ["-"]
    assert ds.meta["sources"][0]["size"] == len(text)
    _only(tmp_path, "d")                                  # the spooled copy is gone
    assert sorted(os.listdir(tmp_path / "d")) == ["meta.json", "test.bin", "train.bin",
                                                  "val.bin", "vocab.json"]


def test_stdin_through_a_real_pipe(tmp_path):
    text = "piped text, line after line\n" * 50
    r = run_cli("prepare", "-", "-o", tmp_path / "d", "--json", input=text)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["chars"] == len(text)
    assert r.stdout.count("\n") == 1          # one JSON line, like every --json


@pytest.mark.parametrize("case", ["missing", "utf8", "binary", "empty", "val", "foreign"])
def test_error_lines(tmp_path, capsys, case):
    out_dir = tmp_path / "d"
    src = tmp_path / "in.txt"
    if case == "missing":
        src = tmp_path / "no such.txt"
        want = f"Error: {src}: no such file or directory"
    elif case == "utf8":
        src.write_bytes(b"caf\xc3\xa9 ok " * 3 + b"\xc3\x28 bad")
        want = f"Error: {src}: invalid utf-8 at byte 27"
    elif case == "binary":
        src.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00")
        want = f"Error: {src}: looks like a binary file (NUL byte at offset 7)"
    elif case == "empty":
        src.write_bytes(b"")
        want = f"Error: empty corpus: {src} has no characters"
    elif case == "val":
        src.write_text("tiny\n")
        want = ("Error: val split would be empty: 5 characters x --val-frac 0.05 is less than "
                "one character; raise --val-frac, use --val-frac 0 for no validation, or use "
                "more text")
    else:
        src.write_text(make_text(2000))
        out_dir.mkdir()
        (out_dir / "notes.md").write_text("keep me")
        (out_dir / "train.bin").write_bytes(b"not ours")
        want = (f"Error: {out_dir}: exists and holds other files (notes.md); use --force to "
                "write the data files into it anyway, or choose another -o")
    code, out, err = invoke(["prepare", src, "-o", out_dir], capsys)
    assert (code, out, err) == (1, "", want + "\n")
    if case == "foreign":
        assert sorted(os.listdir(out_dir)) == ["notes.md", "train.bin"]
        code, _, err = invoke(["prepare", src, "-o", out_dir, "--force"], capsys)
        assert code == 0, err
        assert (out_dir / "notes.md").read_text() == "keep me"
        Dataset(out_dir).verify()
    else:
        assert not out_dir.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_val_frac_zero_is_allowed(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("tiny\n")
    code, out, err = invoke(["prepare", tmp_path / "in.txt", "-o", tmp_path / "d",
                             "--val-frac", "0", "--json"], capsys)
    assert code == 0 and json.loads(out)["val"] == 0


@pytest.mark.parametrize("argv, msg", [
    (["IN"], "Missing option '-o' / '--output'"),
    (["-o", "D"], "give INPUT files or folders, '-' for stdin, or --corpus NAME"),
    (["IN", "--corpus", "fables", "-o", "D"], "give INPUT files or --corpus NAME, not both"),
    (["IN", "-o", "D", "--val-frac", "nan"], "'nan' is not a finite number"),
    (["IN", "-o", "D", "--val-frac", "1"], "1 is not in the valid range"),
    (["IN", "-o", "D", "--val-frac", "0.6", "--test-frac", "0.5"],
     "--val-frac + --test-frac must be < 1 (got 0.6 + 0.5)"),
    (["IN", "-o", "D", "--errors", "ignore"], "'ignore' is not one of 'strict', 'replace'"),
    (["IN", "-o", "D", "--min-count", "0"], "0 is not in the range x>=1"),
])
def test_usage_errors(tmp_path, capsys, argv, msg):
    argv = [str(tmp_path / a) if a in ("IN", "D") else a for a in argv]
    code, out, err = invoke(["prepare", *argv], capsys)
    assert code == 2 and out == "" and msg in err, err
    assert not (tmp_path / "D").exists()


def test_unknown_corpus(tmp_path, capsys):
    code, _, err = invoke(["prepare", "--corpus", "nope", "-o", tmp_path / "d"], capsys)
    assert code == 1
    assert err.startswith("Error: unknown corpus 'nope' (known: ")
    assert err.rstrip().endswith("see 'charrnn prepare --list-corpora'")


def test_builtin_corpus_and_list(tmp_path, capsys):
    code, out, err = invoke(["prepare", "--corpus", "fables", "-o", tmp_path / "d", "--json"],
                            capsys)
    assert code == 0, err
    s = json.loads(out)
    assert s["corpus"] == "fables" and s["chars"] > 3000
    assert Dataset(tmp_path / "d").meta["corpus"] == "fables"
    code, out, err = invoke(["prepare", "--list-corpora"], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "CACHED", "LICENSE", "DESCRIPTION"]
    names = [ln.split()[0] for ln in lines[1:]]
    assert {"tinyshakespeare", "enwik8", "text8", "python-stdlib", "fables"} <= set(names)
    code, out, _ = invoke(["prepare", "--list-corpora", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["fables"]["cached"] == "built-in"
    assert rows["python-stdlib"]["size"] > 1_000_000


def _wait_for(pred, timeout=30.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("existing", [False, True])
def test_killed_prepare_leaves_no_complete_looking_directory(tmp_path, existing):
    src = tmp_path / "in.txt"
    src.write_text(make_text(20_000, seed=1))
    out = tmp_path / "d"
    before = None
    if existing:
        r = run_cli("prepare", src, "-o", out)
        assert r.returncode == 0, r.stderr
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        src.write_text(make_text(30_000, seed=2))
    env = dict(os.environ, CHARRNN_TEST_SLOW_WRITE="20")
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "prepare", str(src), "-o",
                             str(out)], env=env, stderr=subprocess.PIPE)
    try:
        # vocab.json is written (slowly) inside the hidden build directory
        def writing():
            return any(q.name.startswith(".vocab.json.tmp-")
                       for p in tmp_path.glob(".d.tmp-*") for q in p.iterdir())
        assert _wait_for(writing), "prepare never reached its first atomic write"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    if existing:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        Dataset(out).verify()
    else:
        assert not out.exists()
    # the next prepare cleans the killed one's build directory up
    r = run_cli("prepare", src, "-o", out)
    assert r.returncode == 0, r.stderr
    _only(tmp_path, "in.txt", "d")
    assert Dataset(out).counts["train"] + Dataset(out).counts["val"] == len(src.read_text())


@pytest.mark.parametrize("below", ["sub", "a/b"])
def test_output_under_a_file_says_so(tmp_path, below):
    """`prepare -o notes.txt/sub`: one Error line naming the cause, nothing left behind."""
    src = tmp_path / "notes.txt"
    src.write_text(make_text(2000))
    r = run_cli("prepare", src, "-o", f"{src}/{below}")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (f"Error: {src}/{below}: cannot create the data directory (a part of "
                        "the path is a file, not a folder)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
