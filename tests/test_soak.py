"""Opt-in soak tests (`make soak`): 200 train/kill/resume cycles in a row, nothing lost, and
the final parameters equal to an uninterrupted run's; and a 1 GiB line through
`eval --lines`.  Skipped unless CHARRNN_SOAK=1."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from charrnn.model.network import Model

from conftest import make_text, run_cli

pytestmark = pytest.mark.skipif(os.environ.get("CHARRNN_SOAK") != "1",
                                reason="soak test is opt-in: make soak (CHARRNN_SOAK=1)")

CYCLES = int(os.environ.get("CHARRNN_SOAK_CYCLES", "200"))
ARGS = ["--layers", "2", "--hidden", "24", "--batch-size", "4", "--seq-len", "16",
        "--eval-every", "40", "--save-every", "10", "--max-epochs", "0", "--dropout", "0.1"]


def test_soak(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(40_000, seed=11), encoding="utf-8")
    iters = 1000 * CYCLES           # about 1,000 iterations/s: never done before the kills
    args = [*ARGS, "--max-iters", str(iters)]
    ref = run_cli("train", corpus, "-o", tmp_path / "ref", *args, timeout=3600)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "run"
    rng = random.Random(0)
    env = dict(os.environ, CHARRNN_THREADS="2")
    kills = 0
    for cycle in range(CYCLES):
        if cycle % 3 == 1:
            env["CHARRNN_TEST_SLOW_WRITE"] = "0.05"
        else:
            env.pop("CHARRNN_TEST_SLOW_WRITE", None)
        proc = subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(corpus), "-o",
                                 str(run), *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        time.sleep(rng.uniform(0.7, 1.5))
        if proc.poll() is not None:
            break
        proc.kill()
        proc.wait()
        kills += 1
        if (run / "latest.safetensors").exists():
            Model.load(run / "latest.safetensors")
    r = run_cli("train", corpus, "-o", run, *args, timeout=3600)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(Model.load(run / "latest.safetensors").flat,
                          Model.load(tmp_path / "ref" / "latest.safetensors").flat)
    print(f"soak: {kills} kills, 0 checkpoints lost")


def test_eval_lines_scores_a_gigabyte_line_in_bounded_memory(tmp_path):
    """One line of 1 GiB with no newline, piped into `eval --lines`: it is scored to the
    end (every character counted) and the scorer's peak memory stays far below the line's
    size.  About 7 minutes with a tiny model on one thread."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(20_000, seed=7), encoding="utf-8")
    run = tmp_path / "run"
    r = run_cli("train", corpus, "-o", run, "--cell", "rnn", "--layers", "1", "--hidden",
                "16", "--max-iters", "50", "--max-epochs", "0")
    assert r.returncode == 0, r.stderr
    size = 1 << 30
    producer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\n"
         "chunk = ('the quick brown fox ' * 3277).encode()\n"      # 65,540 bytes
         f"left = {size}\n"
         "while left > 0:\n"
         "    n = min(left, len(chunk)); sys.stdout.buffer.write(chunk[:n]); left -= n\n"],
        stdout=subprocess.PIPE)
    scorer = subprocess.Popen([sys.executable, "-m", "charrnn", "eval", str(run), "--lines"],
                              stdin=producer.stdout, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=dict(os.environ, CHARRNN_THREADS="1"))
    producer.stdout.close()
    echoed = 0
    while True:                         # the line is echoed after its score: count it
        block = scorer.stdout.read(1 << 20)
        if not block:
            break
        echoed += len(block)
    err = scorer.stderr.read().decode()
    _, status, usage = os.wait4(scorer.pid, 0)
    scorer.returncode = os.waitstatus_to_exitcode(status)
    assert producer.wait() == 0
    assert scorer.returncode == 0, err
    assert f"chars {size}" in err.splitlines()[-1], err
    assert echoed > size
    peak_mb = usage.ru_maxrss / 1024
    assert peak_mb < 400, f"peak RSS {peak_mb:.0f} MB while scoring a 1 GiB line"
    print(f"1 GiB line scored; peak RSS of the scorer {peak_mb:.0f} MB")
