"""Faults and hostile input, in real subprocesses: kills at random moments (also in the
middle of a checkpoint write), a full disk, corrupt checkpoints, concurrent runs and
readers, impossible option combinations.  Each case pins the message and the exit code
and checks that nothing good was lost."""
from __future__ import annotations

import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from charrnn.store.checkpoint import read_checkpoint

from conftest import make_text, run_cli
from charrnn.store.checkpoint import load_model

ARGS = ["--layers", "1", "--hidden", "16", "--batch-size", "4", "--seq-len", "16",
        "--eval-every", "5", "--max-epochs", "0"]


def _popen(*args, env=None):
    full = dict(os.environ, CHARRNN_THREADS="2")
    full.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "charrnn", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full)


@pytest.fixture
def corpus(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(make_text(20_000, seed=7), encoding="utf-8")
    return p


@pytest.fixture
def trained(corpus, tmp_path) -> Path:
    run = tmp_path / "run"
    r = run_cli("train", corpus, "-o", run, *ARGS, "--max-iters", "10")
    assert r.returncode == 0, r.stderr
    return run


def _checkpoint_id(path: Path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _wait_for_a_save(proc, path: Path, timeout: float = 120.0) -> None:
    """Until ``path`` is replaced by a newer checkpoint, or the process ends."""
    before = _checkpoint_id(path)
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        now = _checkpoint_id(path)
        if now is not None and now != before:
            return
        time.sleep(0.005)


def test_random_sigkills_lose_nothing_and_resume_bit_exact(corpus, tmp_path):
    """Kill at random moments: while the process starts or loads its checkpoint, and at
    a random delay after one of its saves, half of those with a slow (wide-window)
    checkpoint writer, so that most of them land inside a write; after every kill
    `latest` loads; the finished run equals an uninterrupted one.  (Kills are timed by
    the run's progress, not by the clock, so the run stays short on any machine.)"""
    args = [*ARGS, "--max-iters", "2000", "--save-every", "25", "--eval-every", "200"]
    ref = run_cli("train", corpus, "-o", tmp_path / "ref", *args)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "run"
    rng = random.Random(1)
    kills = 0
    for k in range(8):
        env = {"CHARRNN_TEST_SLOW_WRITE": "0.2"} if k % 2 else None
        proc = _popen("train", corpus, "-o", run, *args, env=env)
        if k % 4 == 0:
            time.sleep(rng.uniform(0.05, 0.5))               # starting up or resuming
        else:
            _wait_for_a_save(proc, run / "latest.safetensors")
            time.sleep(rng.uniform(0.0, 0.3))                # training (or writing)
        if proc.poll() is not None:
            break
        proc.kill()
        proc.wait()
        kills += 1
        if (run / "latest.safetensors").exists():
            load_model(run / "latest.safetensors")           # always a complete file
            read_checkpoint(run / "latest.safetensors")
    assert kills >= 4
    r = run_cli("train", corpus, "-o", run, *args)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(load_model(run / "latest.safetensors").flat,
                          load_model(tmp_path / "ref" / "latest.safetensors").flat)
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]


def test_disk_full_while_saving_keeps_previous_checkpoint(trained, corpus):
    latest = trained / "latest.safetensors"
    before = latest.read_bytes()
    r = run_cli("train", corpus, "-o", trained, *ARGS, "--max-iters", "20",
                env={"CHARRNN_TEST_ENOSPC": "latest.safetensors"})
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == (f"Error: {latest}: no space left on device; the "
                                         "previous file (if any) is intact")
    assert latest.read_bytes() == before
    assert not [p for p in trained.iterdir() if ".tmp-" in p.name]
    r = run_cli("train", corpus, "-o", trained, *ARGS, "--max-iters", "20")
    assert r.returncode == 0, r.stderr


def _damaged_copies(src: Path, out: Path) -> dict[str, Path]:
    data = src.read_bytes()
    n = len(data)
    hlen = struct.unpack("<Q", data[:8])[0]
    cases = {}

    def put(name, content):
        p = out / f"{name}.safetensors"
        p.write_bytes(content)
        cases[name] = p
    for i in range(1, 8):
        put(f"truncated-{i}of8", data[: n * i // 8])
    put("zero-length", b"")
    hdr = bytearray(data)
    pos = data.index(b'"format_version"') + 3
    hdr[pos] ^= 0x01
    put("flipped-header-byte", bytes(hdr))
    ten = bytearray(data)
    ten[8 + hlen + (n - 8 - hlen) // 2] ^= 0x40
    put("flipped-tensor-byte", bytes(ten))
    put("random", np.random.default_rng(0).bytes(4096))
    from safetensors.numpy import save
    put("foreign", save({"w": np.zeros((2, 2), np.float32)}, metadata={"x": "y"}))
    head = json.loads(data[8:8 + hlen])
    head["__metadata__"]["format_version"] = "99"
    raw = json.dumps(head).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    put("future-version", struct.pack("<Q", len(raw)) + raw + data[8 + hlen:])
    return cases


def test_corrupt_checkpoints_are_one_line_errors(trained, tmp_path, invoke):
    """Every damaged copy, with every command that reads a checkpoint: one line on
    stderr, exit code 1, nothing on stdout.  All pairs run in-process through the CLI's
    entry point; each damaged copy also with one of the commands (in turn) in a real
    subprocess, where nothing but that one line may reach stderr."""
    bad = tmp_path / "bad"
    bad.mkdir()
    cases = _damaged_copies(trained / "latest.safetensors", bad)
    from charrnn.cli.app import cli
    commands = [["info"], ["sample", "-n", "5"], ["eval", str(trained / "data" / "val.bin")],
                ["train", str(trained / "data"), "-o", str(tmp_path / "ft"), "--max-iters", "1",
                 "--init-from"]]
    (trained / "corpus-piece.txt").write_text("the fox\n")
    tried = 0
    for i, (name, path) in enumerate(cases.items()):
        for j, cmd in enumerate(commands):
            assert cmd[0] in cli.commands, cmd[0]
            argv = [*cmd, str(path)] if cmd[0] == "train" else [cmd[0], str(path), *cmd[1:]]
            if cmd[0] == "eval":
                argv = ["eval", str(path), str(trained / "corpus-piece.txt")]
            runs = [invoke(argv)]
            if j == i % len(commands):
                r = run_cli(*argv)
                runs.append((r.returncode, r.stdout, r.stderr))
            for code, out, err in runs:
                tried += 1
                assert code == 1, (name, cmd, err)
                assert err.startswith(f"Error: {path}: "), (name, cmd, err)
                assert err.count("\n") == 1 and "Traceback" not in err, (name, err)
                assert out == ""
    assert tried == len(cases) * (len(commands) + 1)
    r = run_cli("info", cases["future-version"])
    assert "format version 99" in r.stderr and "upgrade charrnn" in r.stderr


def test_readers_always_see_complete_checkpoints_while_training(corpus, tmp_path):
    run = tmp_path / "run"
    proc = _popen("train", corpus, "-o", run, *ARGS, "--eval-every", "1", "--max-iters", "150",
                  env={"CHARRNN_THREADS": "1"})
    reads = 0
    try:
        while proc.poll() is None:
            if (run / "best.safetensors").exists() and (run / "latest.safetensors").exists():
                for name in ("latest.safetensors", "best.safetensors"):
                    load_model(run / name)
                    reads += 1
            time.sleep(0.01)
    finally:
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert reads > 10
    r = run_cli("sample", run, "-n", "20", "--seed", "1")
    assert r.returncode == 0 and len(r.stdout) >= 20


def test_second_train_on_same_run_dir_exits_75(corpus, tmp_path):
    run = tmp_path / "run"
    first = _popen("train", corpus, "-o", run, *ARGS, "--max-iters", "100000")
    try:
        deadline = time.time() + 120
        while not (run / ".lock").exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        r = run_cli("train", corpus, "-o", run, *ARGS, "--max-iters", "5")
        assert r.returncode == 75
        assert r.stderr.startswith(f"Error: {run} is in use by another charrnn train (pid "
                                   f"{first.pid}")
        assert r.stderr.count("\n") == 1
        while not (run / "latest.safetensors").exists():   # training, not setting up
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
    finally:
        first.terminate()
        first.communicate(timeout=120)
    assert first.returncode == 143


def test_batch_larger_than_data_and_memory_estimate(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("abcdefghij" * 30, encoding="utf-8")
    r = run_cli("train", small, "-o", tmp_path / "r1", "--batch-size", "50", "--seq-len", "50")
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1].startswith("Error: training split has 285 characters; it "
                                                "needs at least B*T+1 = 2501")
    r = run_cli("train", small, "-o", tmp_path / "r2", "--hidden", "16384",
                "--batch-size", "100000", "--seq-len", "1000")
    assert r.returncode == 1
    line = r.stderr.splitlines()[-1]
    assert line.startswith("Error: this model and batch need about ") and "GiB" in line


def test_eval_lines_answers_an_endless_fast_stdin_at_once(trained):
    """`yes | charrnn eval run --lines | head -3`: the first lines come back from the
    first small read (not after 64 KiB of lines are scored), and a closed stdout ends it."""
    yes = subprocess.Popen([sys.executable, "-c", "import sys\ntry:\n    while True: "
                            "sys.stdout.write('y\\n' * 512)\nexcept BrokenPipeError:\n"
                            "    pass\n"], stdout=subprocess.PIPE)
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "eval", str(trained), "--lines"],
                            stdin=yes.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, CHARRNN_THREADS="1"))
    yes.stdout.close()
    try:
        got = [proc.stdout.readline() for _ in range(3)]
        proc.stdout.close()                           # head exits
        code = proc.wait(timeout=120)
        err = proc.stderr.read().decode()
    finally:
        proc.kill()
        yes.kill()
        proc.wait()
        yes.wait()
    assert all(ln.endswith(b"\ty\n") and ln.count(b"\t") == 2 for ln in got), got
    assert code in (0, 141) and "Traceback" not in err and "Error" not in err, err


def test_ctrl_c_is_one_error_line(trained):
    """Ctrl-C while a command waits (here eval --lines on a pipe) is exactly one line on
    stderr, exit 130 (click used to print an empty line first)."""
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "eval", str(trained), "--lines"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, CHARRNN_THREADS="1"))
    try:
        proc.stdin.write(b"the first line\n")
        proc.stdin.flush()
        assert proc.stdout.readline().endswith(b"\tthe first line\n")   # now it waits
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130
    assert err.decode() == "Error: interrupted\n"


def test_eager_reads_start_small_and_grow():
    from charrnn.evaluate.text import _eager_blocks

    class Pipe(io.BytesIO):
        def read1(self, n=-1):
            sizes.append(n)
            return super().read1(n)

    sizes = []
    assert b"".join(_eager_blocks(Pipe(b"y\n" * 100_000), 1 << 16)) == b"y\n" * 100_000
    assert sizes[:6] == [4096, 8192, 16384, 32768, 65536, 65536]


def test_eval_lines_streams_an_endless_line_in_bounded_memory(trained, tmp_path):
    """A line with no newline that never ends (a 1 GB line, as far as the scorer can
    tell): `eval --lines` keeps consuming it as it arrives, and its peak memory stays
    bounded, far below what buffering the line would take."""
    gen = tmp_path / "gen.py"
    gen.write_text(
        "import sys\n"
        "chunk = ('the quick brown fox ' * 3277).encode()\n"      # 64 KiB, no newline
        "out = sys.stdout.buffer\n"
        "sent = 0\n"
        "try:\n"
        "    while sent < 1 << 30:\n"
        "        out.write(chunk); out.flush(); sent += len(chunk)\n"
        "        open(sys.argv[1], 'w').write(str(sent))\n"
        "except BrokenPipeError:\n"
        "    pass\n")
    count = tmp_path / "sent"
    producer = subprocess.Popen([sys.executable, str(gen), str(count)], stdout=subprocess.PIPE)
    env = dict(os.environ, CHARRNN_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "eval", str(trained), "--lines"],
                            stdin=producer.stdout, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    producer.stdout.close()
    try:
        first, peak, sent = None, 0, 0
        t_end = time.time() + 120
        while time.time() < t_end:
            time.sleep(0.5)
            assert proc.poll() is None, proc.stderr.read()
            with open(f"/proc/{proc.pid}/status") as f:
                hwm = [ln for ln in f if ln.startswith("VmHWM:")]
            peak = int(hwm[0].split()[1]) // 1024 if hwm else 0
            sent = int(count.read_text() or 0) if count.exists() else 0
            if first is None and sent > 0:
                first = sent
            elif first is not None and sent >= first + (1 << 20):
                break                                 # it keeps reading the one line
        assert first is not None and sent >= first + (1 << 20), (first, sent)
        assert peak < 400                             # MB: bounded, not the line's size
    finally:
        proc.kill()
        producer.kill()
        proc.wait()
        producer.wait()
