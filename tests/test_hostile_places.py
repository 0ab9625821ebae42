"""Hostile places and values around the files charrnn writes and the ids it feeds its
kernels (issue 29): planted symlinks in a shared --publish folder, stale temporaries,
start ids outside the weights, non-finite scores, and a long prime fed in pieces."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import make_text, run_cli
from charrnn.store.checkpoint import load_model, save_model

TINY = ["--layers", "1", "--hidden", "16", "--batch-size", "4", "--seq-len", "16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("trained")
    corpus = d / "corpus.txt"
    corpus.write_text(make_text(6000, seed=2), encoding="utf-8")
    r = run_cli("train", corpus, "-o", d / "run", *TINY, "--max-iters", "3")
    assert r.returncode == 0, r.stderr
    return corpus, d / "run"


def _no_json_constants(text: str):
    def refuse(name):
        raise AssertionError(f"invalid JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_publish_never_writes_through_planted_symlinks(tmp_path, trained):
    """A shared folder where someone planted a symlink at the published path and at
    temporary names: the files they point to stay untouched, the published path becomes
    a regular file, and the planted temporaries are removed as links."""
    corpus, _ = trained
    shared = tmp_path / "shared"
    shared.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    pub = shared / "model.safetensors"
    pub.symlink_to(victim)
    planted = [shared / f".model.safetensors.tmp-{pid}" for pid in (999_999_999, 4_000_000)]
    for p in planted:
        p.symlink_to(victim)
    other = shared / ".notes.txt.tmp-999999999"              # someone else's file
    other.write_text("not ours")
    r = run_cli("train", corpus, "-o", tmp_path / "run", *TINY, "--max-iters", "2",
                "--publish", pub)
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "precious"
    assert pub.is_file() and not pub.is_symlink()
    assert pub.read_bytes() == (tmp_path / "run" / "best.safetensors").read_bytes()
    assert not any(p.is_symlink() or p.exists() for p in planted)
    assert other.read_text() == "not ours"
    assert sorted(p.name for p in shared.iterdir()) == [other.name, pub.name]


def test_stale_temporaries_of_live_writers_are_kept(tmp_path):
    from charrnn.store.fsutil import remove_stale_temps

    live = tmp_path / f".x.bin.tmp-{os.getpid()}-abc123"
    dead = tmp_path / ".x.bin.tmp-999999999-abc123"
    old_style = tmp_path / ".x.bin.tmp-999999998"
    for p in (live, dead, old_style):
        p.write_bytes(b"1")
    remove_stale_temps(tmp_path)
    assert live.exists() and not dead.exists() and not old_style.exists()


def test_atomic_write_errors_name_the_target_not_the_temporary(tmp_path):
    from charrnn.store.fsutil import atomic_write_bytes

    target = tmp_path / "missing" / "out.bin"
    with pytest.raises(OSError) as e:
        atomic_write_bytes(target, b"x")
    assert e.value.filename == str(target) and ".tmp-" not in str(e.value)
    ok = tmp_path / "ok.bin"
    atomic_write_bytes(ok, b"abc")
    assert ok.read_bytes() == b"abc" and oct(ok.stat().st_mode & 0o777) != oct(0o600)


def test_start_ids_outside_the_weights_are_refused(trained):
    from charrnn.errors import InputError
    from charrnn.sampling import Sampler

    model = load_model(trained[1])
    s = Sampler(model, 1, seed=1)
    s.cur[:] = model.config.vocab_size                        # one past the last row
    with pytest.raises(InputError, match="symbol ids must be in"):
        s.generate(5)
    s.cur[:] = -1
    with pytest.raises(InputError, match="symbol ids must be in"):
        s.generate(5)


@pytest.mark.parametrize("streams", [1, 3])
def test_a_long_prime_fed_in_pieces_equals_one_piece(trained, monkeypatch, streams):
    import charrnn.sampling as S

    model = load_model(trained[1])
    prime = make_text(1000, seed=5)
    whole = S.sample_text(model, 40, prime=prime, seed=3, num_samples=streams)
    monkeypatch.setattr(S, "PRIME_PIECE", 7)                  # 143 pieces of the prime
    pieces = S.sample_text(model, 40, prime=prime, seed=3, num_samples=streams)
    assert len(whole) == len(pieces) == streams
    for a, b in zip(whole, pieces):
        assert a.text == b.text and len(a.text) == 40
        assert np.array_equal(a.logprobs, b.logprobs)


def test_prime_file_with_a_nul_byte_is_refused(tmp_path, trained):
    p = tmp_path / "prime.bin"
    p.write_bytes(b"abc\0def")
    r = run_cli("sample", trained[1], "--prime-file", p, "-n", "5")
    assert r.returncode == 1
    assert r.stderr.strip() == f"Error: {p}: looks like a binary file (NUL byte at offset 3)"


@pytest.fixture(scope="module")
def overflowing(trained, tmp_path_factory):
    """A checkpoint with finite weights so large that the logits overflow to infinity
    (every row alike: the log-softmax is inf - inf, NaN)."""

    model = load_model(trained[1])
    model.params["head.weight"][...] = 3e38
    model.params["head.bias"][...] = 3e38
    path = tmp_path_factory.mktemp("overflow") / "big.safetensors"
    save_model(path, model)
    return path


def test_eval_of_a_non_finite_loss_is_an_error(tmp_path, trained, overflowing):
    text = tmp_path / "t.txt"
    text.write_text(make_text(300, seed=8), encoding="utf-8")
    r = run_cli("eval", overflowing, text)
    assert r.returncode == 1, r.stdout
    assert r.stdout == ""
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and "is not a finite number" in errors[0], r.stderr


def test_sample_json_is_valid_json_whatever_the_scores(overflowing):
    r = run_cli("sample", overflowing, "-n", "5", "--json", "--seed", "1")
    assert r.returncode == 0, r.stderr
    rec = _no_json_constants(r.stdout.strip())
    assert rec["chars"] == 5


_COMPILING = r"""
import os, signal, sys
from charrnn.kernels import runtime
from charrnn.errors import Interrupted
runtime.ensure_numba()
runtime.defer_signals_while_compiling()
import numba.core.event as ev
sig = getattr(signal, sys.argv[1])
ev.start_event("numba:compiler_lock")            # as numba does around a compilation
os.kill(os.getpid(), sig)
for _ in range(1000):                            # the handler has run by now: deferred
    pass
print("still compiling", flush=True)
try:
    ev.end_event("numba:compiler_lock")
except KeyboardInterrupt:
    print("KeyboardInterrupt when the compilation ended")
except Interrupted as e:
    print(f"Interrupted {e.exit_code} when the compilation ended")
"""


@pytest.mark.parametrize("sig, want", [("SIGINT", "KeyboardInterrupt"),
                                       ("SIGTERM", "Interrupted 143")])
def test_a_signal_during_compilation_acts_when_it_ends(sig, want):
    """Raised inside numba's compiler (its LLVM callbacks run through ctypes), Ctrl-C
    was lost or left a half-built kernel; it now waits for the compilation to end."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _COMPILING, sig], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["still compiling", f"{want} when the compilation ended"]
