"""Shared fixtures: small corpora the tests write themselves, and CLI helpers."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

# `make test` runs the suite in two pytest-xdist workers, so every kernel and CLI process
# of one worker shares the cores with the other's.  OpenMP threads that spin while they
# wait (charrnn's default, for speed) would then wait for a core the other worker holds:
# one resume test went from 20 s to over 300 s.  Waiting passively costs only speed,
# never a result (the numbers are the same bits on any thread count and wait policy).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

_WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
          "jolly boxers and my girl wove six dozen plaid jackets before she quit").split()


def make_text(n_chars: int, seed: int = 0) -> str:
    """Deterministic English-like text: sentences of random words, one per line."""
    rng = np.random.default_rng(seed)
    out, size = [], 0
    while size < n_chars:
        k = int(rng.integers(3, 10))
        words = [_WORDS[i] for i in rng.integers(0, len(_WORDS), k)]
        line = " ".join(words).capitalize() + (". " if rng.random() < 0.7 else "!\n")
        out.append(line)
        size += len(line)
    return "".join(out)[:n_chars]


@pytest.fixture
def text_file(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(make_text(20_000), encoding="utf-8")
    return p


def run_cli(*args, env=None, input=None, timeout=300, cwd=None):
    """Run `python -m charrnn ARGS` in a real subprocess; returns CompletedProcess."""
    full_env = dict(os.environ)
    full_env.setdefault("CHARRNN_THREADS", "2")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)],
                          capture_output=True, text=True, env=full_env, input=input,
                          timeout=timeout, cwd=cwd)


def run_main(argv, capsys, stdin_text: str | None = None):
    """Run charrnn.cli.app.main in-process: (exit code, stdout, stderr).  ``stdin_text``
    becomes sys.stdin for the call."""
    from charrnn.cli.app import main

    old = sys.stdin
    if stdin_text is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin_text.encode()))
    try:
        with pytest.raises(SystemExit) as ei:
            main([str(a) for a in argv])
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    return ei.value.code, out, err


@pytest.fixture
def invoke(capsys):
    """``invoke(argv, input=None)``: :func:`run_main` with this test's capsys."""
    return lambda argv, input=None: run_main(argv, capsys, input)

