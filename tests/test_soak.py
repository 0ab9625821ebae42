"""Opt-in soak test (`make soak`): 200 train/kill/resume cycles in a row, nothing lost, and
the final parameters equal to an uninterrupted run's.  Skipped unless CHARRNN_SOAK=1."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from charrnn.model import Model

from conftest import make_text, run_cli

pytestmark = pytest.mark.skipif(os.environ.get("CHARRNN_SOAK") != "1",
                                reason="soak test is opt-in: make soak (CHARRNN_SOAK=1)")

CYCLES = int(os.environ.get("CHARRNN_SOAK_CYCLES", "200"))
ARGS = ["--layers", "2", "--hidden", "24", "--batch-size", "4", "--seq-len", "16",
        "--eval-every", "40", "--save-every", "10", "--max-epochs", "0", "--dropout", "0.1"]


def test_soak(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(40_000, seed=11), encoding="utf-8")
    iters = 400 * CYCLES
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
