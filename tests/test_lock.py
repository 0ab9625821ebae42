"""RunLock: real subprocesses hold, lose and fight over a run directory's lock."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from charrnn.errors import ExitStatus, LockError
from charrnn.training.lock import RunLock

HOLDER = textwrap.dedent("""
    import sys
    from charrnn.training.lock import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()          # hold until the test closes our stdin
    print("released", flush=True)
""")

FLOCKER = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("flocked", flush=True)
    sys.stdin.read()
""")

COMPETITOR = textwrap.dedent("""
    import sys, time
    from charrnn.errors import LockError
    from charrnn.training.lock import RunLock
    go = float(sys.argv[2])
    while time.time() < go:
        time.sleep(0.001)
    try:
        with RunLock(sys.argv[1]):
            t0 = time.time()
            time.sleep(0.3)
            t1 = time.time()
        print(f"got {t0} {t1}", flush=True)
    except LockError:
        print("busy", flush=True)
""")


def _spawn(script, *args):
    p = subprocess.Popen([sys.executable, "-c", script, *map(str, args)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    return p


def _wait_line(p, want):
    line = p.stdout.readline().strip()
    if line != want:
        p.kill()
        raise AssertionError(f"child said {line!r}, stderr: {p.stderr.read()}")


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(run_dir, pid, host=None, started="2001-01-01T00:00:00+00:00"):
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {"pid": pid, "host": host or socket.gethostname(), "started": started}
    (run_dir / ".lock").write_text(json.dumps(info))


def test_acquire_writes_owner_and_release_removes(tmp_path):
    run = tmp_path / "run"
    with RunLock(run) as lk:
        assert lk.held
        info = json.loads((run / ".lock").read_text())
        assert info["pid"] == os.getpid()
        assert info["host"] == socket.gethostname()
        assert "T" in info["started"]
    assert not lk.held
    assert not (run / ".lock").exists()
    with RunLock(run):              # reusable once released
        pass


def test_second_process_is_refused_while_first_holds(tmp_path):
    run = tmp_path / "run"
    p = _spawn(HOLDER, run)
    try:
        _wait_line(p, "locked")
        with pytest.raises(LockError) as ei:
            RunLock(run).acquire()
        msg = str(ei.value)
        assert msg.startswith(f"{run} is in use by another charrnn train (pid {p.pid}, started ")
        assert msg.endswith(f"wait for it to finish or remove {run}/.lock if it is not running")
        assert "\n" not in msg
        assert ei.value.exit_code == ExitStatus.TEMPFAIL
        assert (run / ".lock").exists()        # the refused one removed nothing
    finally:
        p.stdin.close()
    assert p.wait(timeout=30) == 0
    assert not (run / ".lock").exists()
    with RunLock(run):
        pass


def test_lock_of_killed_process_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    p = _spawn(HOLDER, run)
    _wait_line(p, "locked")
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert (run / ".lock").exists()            # left behind by kill -9
    with RunLock(run):
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"stale lock {run}/.lock (pid {p.pid}" in err


def test_stale_file_with_dead_pid_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    dead = _dead_pid()
    _write_lock(run, dead)
    with RunLock(run):
        pass
    assert f"pid {dead}, started 2001-01-01" in capsys.readouterr().err


def test_live_pid_without_flock_is_stale(tmp_path, capsys):
    # e.g. the pid was reused, or the run directory was copied with its .lock
    run = tmp_path / "run"
    _write_lock(run, os.getppid())
    with RunLock(run):
        pass
    assert "no process holds it" in capsys.readouterr().err


def test_flock_held_but_owner_dead_is_stale(tmp_path, capsys):
    # a forked child kept the descriptor (and so the flock) after the trainer died
    run = tmp_path / "run"
    dead = _dead_pid()
    _write_lock(run, dead)
    p = _spawn(FLOCKER, run / ".lock")
    try:
        _wait_line(p, "flocked")
        with RunLock(run):
            assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
        assert "no longer running" in capsys.readouterr().err
    finally:
        p.stdin.close()
        p.wait(timeout=30)


def test_flock_held_and_owner_alive_is_in_use(tmp_path):
    run = tmp_path / "run"
    _write_lock(run, os.getppid(), started="2020-02-02T02:02:02+00:00")
    p = _spawn(FLOCKER, run / ".lock")
    try:
        _wait_line(p, "flocked")
        with pytest.raises(LockError, match=f"pid {os.getppid()}, started 2020-02-02"):
            RunLock(run).acquire()
    finally:
        p.stdin.close()
        p.wait(timeout=30)


def test_other_host_is_named(tmp_path):
    run = tmp_path / "run"
    _write_lock(run, 12345, host="elsewhere.example")
    p = _spawn(FLOCKER, run / ".lock")
    try:
        _wait_line(p, "flocked")
        with pytest.raises(LockError, match="pid 12345 on host elsewhere.example"):
            RunLock(run).acquire()
    finally:
        p.stdin.close()
        p.wait(timeout=30)


def test_empty_old_lock_file_is_stale(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_bytes(b"")
    old = time.time() - 3600
    os.utime(run / ".lock", (old, old))
    with RunLock(run):
        pass
    assert "pid unknown" in capsys.readouterr().err


def test_same_process_cannot_take_it_twice(tmp_path):
    run = tmp_path / "run"
    with RunLock(run) as first:
        with pytest.raises(LockError, match=f"pid {os.getpid()}"):
            RunLock(run).acquire()
        with pytest.raises(LockError, match="already held"):
            first.acquire()
        assert (run / ".lock").exists()


def test_release_leaves_a_replacement_alone(tmp_path):
    run = tmp_path / "run"
    lk = RunLock(run).acquire()
    os.unlink(run / ".lock")
    (run / ".lock").write_text('{"pid": 1}')      # someone else's file now
    lk.release()
    assert (run / ".lock").read_text() == '{"pid": 1}'


def test_concurrent_processes_never_overlap(tmp_path):
    run = tmp_path / "run"
    go = time.time() + 1.5
    procs = [_spawn(COMPETITOR, run, go) for _ in range(4)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(out.strip())
    spans = sorted(tuple(map(float, o.split()[1:])) for o in outs if o.startswith("got"))
    assert spans, outs
    assert all(o == "busy" or o.startswith("got") for o in outs)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end
    assert not (run / ".lock").exists()
