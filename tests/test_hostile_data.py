"""Hostile data directories, streams and corpus caches (issue 29, the data side).

Every crafted data directory (meta.json, vocab.json and token files mutated, some with
their recorded sha256 recomputed so that only the structural checks can catch them) is
given to ``charrnn train DIR`` and ``charrnn eval CKPT --data DIR`` in a subprocess under
an address-space limit and a timeout: each must exit 1 with exactly one ``Error:`` line,
no traceback and no "internal error".  Then the streams: ``prepare /dev/zero``, an
endless ``prepare -`` (stopped by the free-space check, reached with charrnn.store.spool's
``CHARRNN_TEST_DISK_FREE`` instead of a full disk), SIGTERM during a slow stream; two
prepares into one directory; and a corpus cache changed after its download.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from charrnn.config import DataConfig
from charrnn.store import corpora, corpus_cache, outdir
from charrnn.store.dataset import Dataset
from charrnn.store.outdir import stop_on_sigterm
from charrnn.store.prepare import prepare
from charrnn.errors import CorpusError, DataError, DiskFullError, Interrupted, InputError, VocabError
from charrnn.store.vocab import Vocab

from conftest import make_text, run_main

LIMIT_AS = 3 << 30          # bytes of address space every subprocess may map
TIMEOUT = 60                # seconds; more counts as a hang


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))


def _charrnn(*args, timeout=TIMEOUT, **kw):
    env = dict(os.environ, CHARRNN_THREADS="1")
    env.pop("CHARRNN_TEST_DISK_FREE", None)
    env.update(kw.pop("env", {}))
    return subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout,
                          preexec_fn=_limit_memory, stdin=subprocess.DEVNULL, **kw)


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("Error:")]


def _assert_one_error(rc: int, stderr: str, want: str | None = None) -> str:
    errors = _error_lines(stderr)
    assert rc == 1, f"exit {rc}: {stderr[-2000:]}"
    assert len(errors) == 1, stderr[-2000:]
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr[-2000:]
    if want is not None:
        assert want in errors[0], errors[0]
    return errors[0]


# ----------------------------------------------------------------- crafting

def _meta(d: Path) -> dict:
    return json.loads((d / "meta.json").read_text(encoding="utf-8"))


def _put_meta(d: Path, meta: dict) -> None:
    (d / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


def _edit_meta(fn):
    def mutate(d):
        m = _meta(d)
        fn(m)
        _put_meta(d, m)
    return mutate


def _vocab(d: Path) -> dict:
    return json.loads((d / "vocab.json").read_text(encoding="utf-8"))


def _put_vocab(d: Path, doc: dict) -> None:
    (d / "vocab.json").write_text(json.dumps(doc), encoding="utf-8")


def _resign(d: Path) -> None:
    """Record the files as they are now, as prepare would: only the structural checks
    can then tell the directory is crafted."""
    m = _meta(d)
    for name in ("train.bin", "val.bin", "test.bin", "vocab.json"):
        raw = (d / name).read_bytes()
        m["files"][name] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    _put_meta(d, m)


def _signed(fn):
    def mutate(d):
        fn(d)
        _resign(d)
    return mutate


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _raw_meta(fn):
    """Edit meta.json's text (for what json.dumps cannot write)."""
    def mutate(d):
        text = (d / "meta.json").read_text(encoding="utf-8")
        (d / "meta.json").write_bytes(fn(text).encode("utf-8", "surrogatepass"))
    return mutate


def _set_counts_train(v):
    def fn(m):
        m["counts"]["train"] = v
    return _edit_meta(fn)


def _drop_last_symbol(d: Path) -> None:
    """A vocabulary one symbol shorter than the ids in the token files (re-signed)."""
    doc = _vocab(d)
    top = len(doc["chars"]) - 1
    ids = np.concatenate([np.fromfile(d / f"{s}.bin", np.uint8) for s in ("train", "val")])
    assert ids.max() == top                  # the dropped symbol's id is in the data
    doc["chars"] = doc["chars"][:-1]
    _put_vocab(d, doc)
    m = _meta(d)
    m["vocab_size"] = top
    _put_meta(d, m)
    _resign(d)


def _reorder_vocab(d: Path) -> None:
    doc = _vocab(d)
    doc["chars"] = doc["chars"][1:] + doc["chars"][:1]
    _put_vocab(d, doc)


def _vocab_surrogate(d: Path) -> None:
    doc = _vocab(d)
    doc["chars"][-1] = "\ud800"
    (d / "vocab.json").write_bytes(json.dumps(doc).encode())      # ASCII: "\\ud800"


def _vocab_edit(fn):
    def mutate(d):
        doc = _vocab(d)
        fn(doc)
        _put_vocab(d, doc)
    return _signed(mutate)


def _token_edit(fn, name="train.bin", signed=False):
    def mutate(d):
        raw = bytearray((d / name).read_bytes())
        (d / name).write_bytes(bytes(fn(raw)))
        if signed:
            _resign(d)
    return mutate


def _replace_with(kind, name):
    def mutate(d):
        p = d / name
        p.unlink()
        if kind == "fifo":
            os.mkfifo(p)
        elif kind == "dir":
            p.mkdir()
        elif kind == "zero":
            p.symlink_to("/dev/zero")
        elif kind == "dangling":
            p.symlink_to(d / "nowhere")
    return mutate


def _sparse(name, size):
    def mutate(d):
        with open(d / name, "wb") as f:
            f.truncate(size)
    return mutate


def _huge_train(d: Path) -> None:
    """512 MiB of holes where train.bin was, meta.json's counts made to match (the
    sha256 then differs: verification reads it in bounded memory and says so)."""
    n = 512 << 20
    with open(d / "train.bin", "r+b") as f:
        f.truncate(n)
    m = _meta(d)
    m["counts"]["chars"] += n - m["counts"]["train"]
    m["counts"]["train"] = n
    m["files"]["train.bin"]["bytes"] = n
    _put_meta(d, m)


def _deep_meta(d: Path) -> None:
    text = (d / "meta.json").read_text(encoding="utf-8")
    (d / "meta.json").write_text(text.replace('"options": {', '"deep": ' + _nested(100_000)
                                              + ', "options": {', 1), encoding="utf-8")


def _pop(*path):
    def fn(m):
        for k in path[:-1]:
            m = m[k]
        del m[path[-1]]
    return _edit_meta(fn)


def _setv(value, *path):
    def fn(m):
        for k in path[:-1]:
            m = m[k]
        m[path[-1]] = value
    return _edit_meta(fn)


# (name, mutation, the Error line holds this; None: only one clean Error line)
CASES = [
    # meta.json: values
    ("train Infinity", _set_counts_train(float("inf")), "Infinity is not a number"),
    ("train -Infinity", _set_counts_train(float("-inf")), "Infinity is not a number"),
    ("train NaN", _set_counts_train(float("nan")), "NaN is not a number"),
    ("train negative", _set_counts_train(-1), "'counts.train' must be an integer"),
    ("train 10**30", _set_counts_train(10**30), "'counts.train' must be an integer"),
    ("train 1e300", _set_counts_train(1e300), "'counts.train' must be an integer"),
    ("train 5.0", _set_counts_train(5.0), "'counts.train' must be an integer"),
    ("train true", _set_counts_train(True), "'counts.train' must be an integer"),
    ("train a string", _set_counts_train("2850"), "'counts.train' must be an integer"),
    ("train 5000 digits", _raw_meta(lambda t: t.replace('"train": 2850', '"train": '
                                                        + "9" * 5000, 1)), "corrupt"),
    ("train off by one", _set_counts_train(2851), "counts.chars is"),
    ("chars disagree", _setv(1, "counts", "chars"), "counts.chars is"),
    ("unknown > chars", _setv(10**9, "counts", "unknown"), "'counts.unknown' must be"),
    ("counts missing", _pop("counts"), "'counts' must be an object"),
    ("counts a list", _setv([1, 2, 3], "counts"), "'counts' must be an object"),
    ("dtype float64", _setv("float64", "dtype"), "'dtype' must be one of"),
    ("dtype object", _setv("object", "dtype"), "'dtype' must be one of"),
    ("dtype >u2", _setv(">u2", "dtype"), "'dtype' must be one of"),
    ("dtype a number", _setv(8, "dtype"), "'dtype' must be one of"),
    ("dtype too wide", _setv("uint16", "dtype"), "symbols are stored as uint8"),
    ("vocab_size true", _setv(True, "vocab_size"), "'vocab_size' must be an integer"),
    ("vocab_size 10**12", _setv(10**12, "vocab_size"), "'vocab_size' must be an integer"),
    ("vocab_size 0", _setv(0, "vocab_size"), "'vocab_size' must be an integer"),
    ("vocab_size one less", _setv(44, "vocab_size"), "vocab.json has 45 symbols but "
                                                     "meta.json says vocab_size 44"),
    ("unk disagrees", _setv("?", "unk"), "unknown symbol"),
    ("unk two chars", _setv("??", "unk"), "'unk' must be"),
    ("files missing", _pop("files"), "'files' must be an object"),
    ("file record missing", _pop("files", "val.bin"), "'files.val.bin' must be an object"),
    ("sha256 not hex", _setv("zz" * 32, "files", "train.bin", "sha256"),
     "'files.train.bin.sha256' must be a sha256"),
    ("bytes disagree", _setv(7, "files", "train.bin", "bytes"), "files.train.bin.bytes is 7"),
    ("foreign file record", _setv({"bytes": 1, "sha256": "0" * 64}, "files", "x.bin"),
     "'files' must be records"),
    ("options wrong type", _setv({"val_frac": "much"}, "options"), "'options' are not"),
    ("options unknown field", _setv({"colour": 1}, "options"), "'options' are not"),
    ("sources a string", _setv("x", "sources"), "'sources' must be a list"),
    ("source without sha", _setv([{"path": "x", "size": 1}], "sources"),
     "'sources[0].sha256' must be a sha256"),
    ("inputs of numbers", _setv([1, 2], "inputs"), "'inputs[0]' must be a string"),
    ("seconds NaN", _setv(float("nan"), "seconds"), "NaN is not a number"),
    ("version 1.5", _setv(1.5, "version"), "no integer 'version'"),
    ("version 0", _setv(0, "version"), "'version' must be >= 1"),
    ("version true", _setv(True, "version"), "no integer 'version'"),
    ("meta nested 100k deep", _deep_meta, "nested too deeply"),
    ("meta all nesting", lambda d: (d / "meta.json").write_text(_nested(100_000)),
     "nested too deeply"),
    ("meta not UTF-8", lambda d: (d / "meta.json").write_bytes(b'{"format": "\xff"}'),
     "not UTF-8"),
    ("meta truncated", _raw_meta(lambda t: t[:len(t) // 2]), "corrupt"),
    ("meta lone surrogate", _raw_meta(lambda t: t.replace('"corpus": null',
                                                          '"corpus": "\\ud800"', 1)), None),
    ("meta 64 MiB of holes", _sparse("meta.json", 64 << 20), "ever holds"),
    ("meta a FIFO", _replace_with("fifo", "meta.json"), None),
    ("meta a directory", _replace_with("dir", "meta.json"), None),
    ("meta -> /dev/zero", _replace_with("zero", "meta.json"), None),
    ("meta an empty object", lambda d: (d / "meta.json").write_text("{}"),
     "not a charrnn data directory's meta.json"),
    ("meta a list", lambda d: (d / "meta.json").write_text("[1, 2]"),
     "not a charrnn data directory's meta.json"),
    ("meta 6 MB of {}", _raw_meta(lambda t: t.replace('"options": {', '"x": ['
                                                      + "{}," * 2_000_000 + '{}], "options": {',
                                                      1)), "more JSON objects and lists"),
    ("meta 8 MB of small ints", _raw_meta(lambda t: t.replace(
        '"options": {', '"x": [' + "1," * 4_000_000 + '1], "options": {', 1)),
     "unknown field(s) ['x']"),
    ("counts extra", _setv(1, "counts", "more"), "'counts' must be chars, unknown"),
    # vocab.json
    ("vocab nested 100k deep", lambda d: (d / "vocab.json").write_text(
        '{"version": 1, "chars": ' + _nested(100_000) + "}"), "nested too deeply"),
    ("vocab lone surrogate", _signed(_vocab_surrogate), "lone surrogate"),
    ("vocab reordered", _reorder_vocab, "vocab.json: differs from"),
    ("vocab shorter than its ids", _drop_last_symbol, "not below the vocabulary size 44"),
    ("vocab duplicate", _vocab_edit(lambda v: v["chars"].__setitem__(1, v["chars"][0])),
     "duplicate"),
    ("vocab two-char entry", _vocab_edit(lambda v: v["chars"].__setitem__(0, "ab")),
     "single characters"),
    ("vocab chars a dict", _vocab_edit(lambda v: v.__setitem__("chars", {"a": 1})),
     "no 'chars' list"),
    ("vocab version 1e400", _vocab_edit(lambda v: v.__setitem__("version", 1e400)), None),
    ("vocab lowercase 1", _vocab_edit(lambda v: v.__setitem__("lowercase", 1)), "lowercase"),
    ("vocab 64 MiB of holes", _sparse("vocab.json", 64 << 20), "ever holds"),
    ("vocab a directory", _replace_with("dir", "vocab.json"), "not a regular file"),
    ("vocab missing", lambda d: (d / "vocab.json").unlink(), "vocab.json: missing"),
    # token files
    ("train zeroed", _token_edit(lambda b: bytes(len(b))), "train.bin: sha256 differs"),
    ("train one id changed", _token_edit(lambda b: b[:-1] + bytes([(b[-1] + 1) % 45])),
     "train.bin: sha256 differs"),
    ("train truncated", _token_edit(lambda b: b[:-10]), "bytes, but meta.json records"),
    ("train extended", _token_edit(lambda b: b + b"\x01" * 10),
     "bytes, but meta.json records"),
    ("train id >= V, re-signed", _token_edit(lambda b: b[:100] + b"\xc8" + b[101:],
                                             signed=True), "token id 200 at position 100"),
    ("val id 255, re-signed", _token_edit(lambda b: b"\xff" + b[1:], "val.bin", signed=True),
     "token id 255 at position 0"),
    ("train a FIFO", _replace_with("fifo", "train.bin"), "not a regular file"),
    ("train a directory", _replace_with("dir", "train.bin"), "not a regular file"),
    ("train -> /dev/zero", _replace_with("zero", "train.bin"), "not a regular file"),
    ("train a dangling link", _replace_with("dangling", "train.bin"), "broken symbolic link"),
    ("test missing", lambda d: (d / "test.bin").unlink(), "test.bin: missing"),
    ("train 512 MiB of holes", _huge_train, "train.bin: sha256 differs"),
]
# A meta.json that is no file at all makes DIR an ordinary folder to `train`, which then
# prepares it as text (and refuses the token files as binary): only eval names meta.json.
TRAIN_READS_AS_TEXT = {"meta a FIFO", "meta a directory", "meta -> /dev/zero"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A prepared data directory and a tiny model trained on it (the normal run, under
    the same limits as every case)."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "in.txt").write_text(make_text(3000, seed=3), encoding="utf-8")
    data = root / "data"
    prepare([str(root / "in.txt")], data, show_progress=False)
    assert len(Dataset(data).vocab) == 45               # the cases above count on it
    r = _charrnn("train", data, "-o", root / "run", "--max-iters", "1", "--layers", "1",
                 "--hidden", "8")
    assert r.returncode == 0, r.stderr
    ckpt = root / "run" / "latest.safetensors"
    r = _charrnn("eval", ckpt, "--data", data)
    assert r.returncode == 0 and "loss" in r.stdout, r.stderr
    return root, data, ckpt


# Starting `python -m charrnn` costs ~0.6 s of CPU (numba's import and kernels), 150
# runs 90 s.  So one helper process imports charrnn once and forks a child per command:
# each child is its own process, under RLIMIT_AS and a timeout, its stderr in a file,
# running cli.main as `charrnn ...` does, and reaped like a subprocess (a negative status
# is a death by signal).  numba's workqueue threading layer, since GNU OpenMP's threads,
# started when the kernels are imported, refuse a fork.
_FORKER = r"""
import json, os, resource, signal, sys, time
import charrnn.cli.app, charrnn.training.loop, charrnn.evaluate, charrnn.store.checkpoint, charrnn.store.prepare
import charrnn.model.network, charrnn.kernels.runtime, charrnn.model.cells.lstm, charrnn.kernels.steps
limit = int(sys.argv[1])
for line in sys.stdin:
    job = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            fd = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 2); os.dup2(fd, 1)
            null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0)
            try:
                charrnn.cli.app.main(job["argv"])
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            finally:
                os._exit(code)
    status = None
    while time.monotonic() - t0 < job["timeout"]:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(st)
            break
        time.sleep(0.005)
    if status is None:
        os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)
        status = "hang"
    print(json.dumps({"status": status, "seconds": time.monotonic() - t0}), flush=True)
"""


class _Forker:
    """Runs ``charrnn ARGV`` in a forked child of a process that imported charrnn."""

    def __init__(self, workdir: Path):
        env = dict(os.environ, CHARRNN_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   NUMBA_THREADING_LAYER="workqueue")      # fork-safe, unlike GNU OpenMP
        env.pop("CHARRNN_TEST_DISK_FREE", None)
        self.workdir = workdir
        self.proc = subprocess.Popen([sys.executable, "-c", _FORKER, str(LIMIT_AS)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.n = 0

    def run(self, *argv) -> tuple:
        """(exit status or "hang", stderr, seconds)."""
        self.n += 1
        err = self.workdir / f"stderr-{os.getpid()}-{id(self)}-{self.n}"
        job = {"argv": [str(a) for a in argv], "stderr": str(err), "timeout": TIMEOUT}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        text = err.read_text(encoding="utf-8", errors="replace")
        err.unlink()
        return reply["status"], text, reply["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)
        self.proc.stdout.close()


def _run_case(forker: _Forker, root: Path, ckpt: Path, i, d: Path) -> dict:
    return {"train": forker.run("train", d, "-o", root / f"run{i}", "--max-iters", "1",
                                "--layers", "1", "--hidden", "8"),
            "eval": forker.run("eval", ckpt, "--data", d)}


@pytest.fixture(scope="module")
def outcomes(base):
    """Every case run once, two helpers at a time: name -> {"train"|"eval": (status,
    stderr, seconds)}; the untouched directory first, which must succeed."""
    root, data, ckpt = base
    dirs = []
    for i, (_, mutate, _) in enumerate(CASES):
        d = root / f"case{i}"
        shutil.copytree(data, d)
        mutate(d)
        dirs.append(d)
    forkers = [_Forker(root), _Forker(root)]
    try:
        for k, f in enumerate(forkers):       # the untouched directory works this way
            control = _run_case(f, root, ckpt, f"control{k}", data)
            assert [r[0] for r in control.values()] == [0, 0], control
        with ThreadPoolExecutor(len(forkers)) as pool:
            futures = [pool.submit(lambda k: [(CASES[i][0], _run_case(forkers[k], root, ckpt,
                                                                      i, dirs[i]))
                                              for i in range(k, len(CASES), len(forkers))], k)
                       for k in range(len(forkers))]
            return dict(item for f in futures for item in f.result())
    finally:
        for f in forkers:
            f.close()


@pytest.mark.parametrize("cmd", ["train", "eval"])
@pytest.mark.parametrize("name, want", [(n, w) for n, _, w in CASES], ids=[n for n, *_ in CASES])
def test_crafted_data_directory(outcomes, name, want, cmd):
    rc, stderr, _ = outcomes[name][cmd]
    assert rc != "hang", f"{cmd} hung on {name}"
    if cmd == "train" and name in TRAIN_READS_AS_TEXT:
        want = "looks like a binary file"
    _assert_one_error(rc, stderr, want)


def test_no_crash_hang_or_internal_error(outcomes):
    """The closing counts: every case of CASES through both commands."""
    runs = [r for o in outcomes.values() for r in o.values()]
    crashes = [r for r in runs if isinstance(r[0], int) and r[0] < 0]
    hangs = [r for r in runs if r[0] == "hang"]
    internal = [r for r in runs if "internal error" in r[1] or "Traceback" in r[1]]
    assert (len(runs), len(crashes), len(hangs), len(internal)) == (2 * len(CASES), 0, 0, 0)


@pytest.mark.parametrize("name", ["train Infinity", "vocab shorter than its ids",
                                  "meta nested 100k deep"])
def test_the_same_in_a_fresh_interpreter(base, outcomes, tmp_path, name):
    """`python -m charrnn` started afresh (preexec_fn sets RLIMIT_AS) gives the very line
    the forked helper's child gave."""
    root, data, ckpt = base
    i = [n for n, *_ in CASES].index(name)
    d = root / f"case{i}"
    for cmd, args in (("train", ("train", d, "-o", tmp_path / "run", "--max-iters", "1")),
                      ("eval", ("eval", ckpt, "--data", d))):
        r = _charrnn(*args)
        line = _assert_one_error(r.returncode, r.stderr, CASES[i][2])
        assert [line] == _error_lines(outcomes[name][cmd][1])


def test_init_from_with_data_ids_beyond_its_vocabulary(base, outcomes, tmp_path):
    """Was IndexError ("internal error") in `train --init-from`: the ids are checked
    against the data's own vocabulary when the data is opened, before the model."""
    root, _, ckpt = base
    d = root / f"case{[n for n, *_ in CASES].index('vocab shorter than its ids')}"
    r = _charrnn("train", d, "-o", tmp_path / "run", "--init-from", ckpt, "--max-iters", "1")
    _assert_one_error(r.returncode, r.stderr, "is not below the vocabulary size 44")


# ----------------------------------------------------------------- in-process checks

def test_open_verifies_and_opt_out_checks_sizes(base, tmp_path):
    _, data, _ = base
    d = tmp_path / "d"
    shutil.copytree(data, d)
    _token_edit(lambda b: bytes(len(b)))(d)
    with pytest.raises(DataError, match="sha256 differs"):
        Dataset(d)
    Dataset(d, verify=False)                 # a caller that verified already: sizes only
    _token_edit(lambda b: b[:-1])(d)
    with pytest.raises(DataError, match="bytes, but meta.json records"):
        Dataset(d, verify=False)


def test_directories_without_a_vocab_record_still_load(base, tmp_path):
    """Data prepared before vocab.json's sha256 was recorded opens as before."""
    _, data, _ = base
    d = tmp_path / "d"
    shutil.copytree(data, d)
    _pop("files", "vocab.json")(d)
    assert len(Dataset(d).vocab) == 45


def test_vocab_refuses_lone_surrogates():
    with pytest.raises(VocabError, match=r"lone surrogate \(U\+DC80\)"):
        Vocab.from_dict({"version": 1, "chars": ["a", "\udc80"], "unk": None})
    with pytest.raises(VocabError, match="lone surrogate"):
        Vocab.from_dict({"version": 1, "chars": ["a"], "unk": "\ud800"})


def test_prepare_refuses_text_that_decodes_to_surrogates(tmp_path):
    src = tmp_path / "esc.txt"
    src.write_bytes(b"abc \\ud800 def\n" * 40)
    with pytest.raises(InputError, match="lone surrogates"):
        prepare([str(src)], tmp_path / "d", DataConfig(encoding="unicode_escape"),
                show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["esc.txt"]


def test_token_files_that_do_not_fit_the_disk(tmp_path, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text(make_text(200_000), encoding="utf-8")
    monkeypatch.setenv("CHARRNN_TEST_DISK_FREE", "100000")
    with pytest.raises(DiskFullError, match=r"the token files need 195.3 KiB, but "):
        prepare([str(src)], tmp_path / "d", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


# ----------------------------------------------------------------- streams

def _leftovers(folder: Path, *keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_dev_zero_stops_at_once(tmp_path):
    t0 = time.monotonic()
    r = _charrnn("prepare", "/dev/zero", "-o", tmp_path / "x", timeout=30)
    assert time.monotonic() - t0 < 15
    _assert_one_error(r.returncode, r.stderr,
                      "/dev/zero: looks like a binary file (NUL byte at offset 0)")
    assert _leftovers(tmp_path) == []


def _feed_forever(stdin, block: bytes, stop: threading.Event) -> None:
    try:
        while not stop.is_set():
            stdin.write(block)
    except (BrokenPipeError, OSError, ValueError):
        pass


def test_endless_stream_stops_before_the_disk_fills(tmp_path):
    env = dict(os.environ, CHARRNN_THREADS="1", CHARRNN_TEST_DISK_FREE=str(32 << 20))
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "prepare", "-", "-o",
                             str(tmp_path / "x")], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, preexec_fn=_limit_memory)
    stop = threading.Event()
    feeder = threading.Thread(target=_feed_forever, args=(proc.stdin, b"y\n" * 32768, stop),
                              daemon=True)
    feeder.start()
    try:
        rc = proc.wait(timeout=60)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        feeder.join(10)
        with_err = proc.stderr.read().decode()
        proc.stderr.close()
        try:
            proc.stdin.close()
        except OSError:
            pass
    line = _assert_one_error(rc, with_err, "standard input: stopped reading after ")
    assert "MiB free" in line and "endless stream" in line
    assert _leftovers(tmp_path) == []


def test_sigterm_during_a_slow_stream_removes_everything(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "prepare", "-", "-o",
                             str(tmp_path / "x")], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, CHARRNN_THREADS="1"),
                            preexec_fn=_limit_memory)
    try:
        proc.stdin.write(b"some text, slowly\n" * 1000)
        proc.stdin.flush()
        end = time.monotonic() + 30
        spool = []
        while time.monotonic() < end and not spool:
            spool = [q for p in tmp_path.glob(".x.tmp-*") for q in p.glob(".stream-*")]
            time.sleep(0.05)
        assert spool, "prepare never started its spool"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode()
        proc.stderr.close()
        proc.stdin.close()
    assert rc == 143, err
    assert _error_lines(err) == ["Error: terminated by SIGTERM; prepare stopped and removed "
                                 "its temporary files"], err
    assert "Traceback" not in err
    assert _leftovers(tmp_path) == []


def test_a_signal_during_install_waits_until_the_output_is_in_place(tmp_path, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text(make_text(3000), encoding="utf-8")
    real = outdir.install

    def install(*args):
        os.kill(os.getpid(), signal.SIGTERM)       # arrives in the middle of the swap
        time.sleep(0.05)
        real(*args)

    monkeypatch.setattr(outdir, "install", install)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as ei, stop_on_sigterm():
        prepare([str(src)], tmp_path / "d", show_progress=False)
    assert ei.value.exit_code == 143
    assert Dataset(tmp_path / "d").counts["train"] > 0        # complete, in place
    assert _leftovers(tmp_path, "in.txt") == ["d"]
    assert signal.getsignal(signal.SIGTERM) == before         # the old handler is back


# ----------------------------------------------------------------- two prepares at once

@pytest.mark.parametrize("existing", [False, True])
def test_concurrent_prepares_the_last_one_wins(tmp_path, monkeypatch, existing):
    """The other prepare installs its output between this one's start and its install:
    this one still succeeds and replaces it (before: 'Directory not empty: .d.tmp-PID')."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(make_text(3000, seed=1), encoding="utf-8")
    b.write_text(make_text(4000, seed=2), encoding="utf-8")
    out = tmp_path / "d"
    if existing:
        prepare([str(b)], out, show_progress=False)
    real = outdir.install

    def racing(*args):
        monkeypatch.setattr(outdir, "install", real)
        prepare([str(b)], out, show_progress=False)       # the other one finishes first
        real(*args)

    monkeypatch.setattr(outdir, "install", racing)
    prepare([str(a)], out, show_progress=False)
    ds = Dataset(out)
    assert ds.counts["train"] + ds.counts["val"] == 3000
    assert _leftovers(tmp_path, "a.txt", "b.txt") == ["d"]


def test_two_real_prepares_into_one_directory(tmp_path):
    srcs = []
    for i in range(2):
        srcs.append(tmp_path / f"in{i}.txt")
        srcs[-1].write_text(make_text(200_000, seed=i), encoding="utf-8")
    env = dict(os.environ, CHARRNN_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "charrnn", "prepare", str(s), "-o",
                               str(tmp_path / "d")], stderr=subprocess.PIPE, env=env)
             for s in srcs]
    for p in procs:
        err = p.communicate(timeout=60)[1].decode()
        assert p.returncode == 0 and "Error" not in err, err
    assert Dataset(tmp_path / "d").counts["train"] + Dataset(tmp_path / "d").counts["val"] \
        == 200_000
    assert _leftovers(tmp_path, "in0.txt", "in1.txt") == ["d"]


# ----------------------------------------------------------------- corpus cache

def _cache_entry(tmp_path, monkeypatch, text: bytes, pinned: bool) -> Path:
    """tinyshakespeare as if downloaded once into CHARRNN_CACHE (no network is used)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_CACHE", str(cache))
    monkeypatch.delenv("CHARRNN_CORPORA_DIR", raising=False)
    sha = hashlib.sha256(text).hexdigest()
    entry = corpora.get("tinyshakespeare")
    monkeypatch.setitem(entry, "url", "http://127.0.0.1:9/never")
    monkeypatch.setitem(entry, "sha256", sha if pinned else None)
    monkeypatch.setitem(entry, "size", len(text) if pinned else None)
    d = cache / "tinyshakespeare"
    d.mkdir(parents=True)
    (d / "tinyshakespeare.txt").write_bytes(text)
    (d / "source.json").write_text(json.dumps({
        "name": "tinyshakespeare", "url": entry["url"], "sha256": sha, "size": len(text),
        "file": "tinyshakespeare.txt", "file_size": len(text), "verified": pinned}))
    return d / "tinyshakespeare.txt"


@pytest.mark.parametrize("pinned", [True, False], ids=["registry sha256", "trust on first use"])
def test_a_same_size_tampered_cache_is_refused(tmp_path, monkeypatch, capsys, pinned):
    text = make_text(3000, seed=4).encode()
    cached = _cache_entry(tmp_path, monkeypatch, text, pinned)
    code, out, err = run_main(["prepare", "--corpus", "tinyshakespeare", "-o",
                               tmp_path / "ok"], capsys)
    assert code == 0, err
    cached.write_bytes(b"A" * len(text))                 # same size, other text
    code, out, err = run_main(["prepare", "--corpus", "tinyshakespeare", "-o",
                               tmp_path / "bad"], capsys)
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"Error: corpus 'tinyshakespeare': the cached copy {cached} does not match its sha256")
    assert "delete" in lines[0] and not (tmp_path / "bad").exists()
    with pytest.raises(CorpusError):                      # nor for a changed-sources check
        corpora.corpus_files("tinyshakespeare", download=False)


def test_a_cache_without_the_text_hash_gets_it_recorded(tmp_path, monkeypatch):
    text = make_text(3000, seed=5).encode()
    cached = _cache_entry(tmp_path, monkeypatch, text, pinned=False)
    info_path = cached.parent / "source.json"
    info = json.loads(info_path.read_text())
    monkeypatch.setitem(corpora.get("tinyshakespeare"), "format", "gz")   # archive: its
    info["sha256"] = "0" * 64                                             # hash is not the text's
    info_path.write_text(json.dumps(info))
    assert corpora.corpus_files("tinyshakespeare", download=False) == [cached]
    assert json.loads(info_path.read_text())["file_sha256"] == hashlib.sha256(text).hexdigest()
    cached.write_bytes(text.upper())
    with pytest.raises(CorpusError, match="does not match its sha256"):
        corpora.corpus_files("tinyshakespeare", download=False)


def test_an_unverified_local_copy_warns_once(tmp_path, monkeypatch, capsys):
    local = tmp_path / "mine"
    local.mkdir()
    (local / "alice.txt").write_text(make_text(2000), encoding="utf-8")
    monkeypatch.setenv("CHARRNN_CORPORA_DIR", str(local))
    monkeypatch.setenv("CHARRNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(corpora.get("alice"), "sha256", None)
    monkeypatch.setattr(corpus_cache, "_warned_unverified", set())
    assert corpora.corpus_files("alice") == [local / "alice.txt"]
    assert corpora.corpus_files("alice") == [local / "alice.txt"]
    err = capsys.readouterr().err
    assert err == (f"Warning: corpus 'alice': using {local / 'alice.txt'} from "
                   "CHARRNN_CORPORA_DIR unverified (the registry has no sha256 for it); "
                   "make sure it is the text you mean\n")
