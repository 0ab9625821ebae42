"""A/B: charrnn at two checkouts, side by side on this machine (no PyTorch needed).

Times the same work in fresh processes, alternating the checkouts, ``--rounds`` times:
a training step (forward, backward, Adam with clipping at 5), a forward-only scoring
pass and single-stream sampling.  Use it to show that a change kept the speed::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/ab.py OLD_CHECKOUT NEW_CHECKOUT

Each checkout is put first on PYTHONPATH of its worker; the table gives the medians over
rounds and the range of the rounds' ratios (NEW / OLD).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

WORKER = r"""
import json, sys, time
import numpy as np
what, cell, H, L, B, T = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
from charrnn.config import ModelConfig, TrainConfig
try:
    from charrnn.model.network import Model
    from charrnn.model.optim import Optimizer
    from charrnn.kernels.runtime import configure_threads
except ImportError:                      # the layout before the packages
    from charrnn.model import Model
    from charrnn.optim import Optimizer
    from charrnn.runtime import configure_threads
configure_threads(2)
V = 65
m = Model.from_config(ModelConfig(cell=cell, vocab_size=V, hidden_size=H, num_layers=L,
                                  dtype="float32"), seed=0)
rng = np.random.default_rng(0)
x = rng.integers(0, V, (B, T)); y = rng.integers(0, V, (B, T))
if what == "train":
    opt = Optimizer(TrainConfig(clip=5.0), m)
    state = m.initial_state(B)
    def work():
        global state
        loss, state = m.forward_backward(x, y, state)
        opt.step(m.flat, m.grad_flat, 1e-3)
    chars = B * T
elif what == "eval":
    state = m.initial_state(B)
    def work():
        global state
        _, state = m.log_probs(x, y, state)
    chars = B * T
else:
    raise SystemExit(what)
for _ in range(3):
    work()
best = float("inf")
for _ in range(5):
    t0 = time.perf_counter()
    for _ in range(5):
        work()
    best = min(best, (time.perf_counter() - t0) / 5)
print(json.dumps(chars / best))
"""

CASES = [("train", "lstm", 128, 2, 50, 50), ("train", "lstm", 256, 2, 50, 50),
         ("train", "gru", 256, 2, 50, 50), ("train", "rnn", 256, 2, 50, 50),
         ("train", "lstm", 512, 2, 50, 100), ("eval", "lstm", 256, 2, 50, 50)]


def run(checkout: str, case) -> float:
    env = dict(os.environ, PYTHONPATH=checkout)
    r = subprocess.run([sys.executable, "-c", WORKER, *map(str, case)], env=env,
                       capture_output=True, text=True, timeout=900)
    if r.returncode:
        raise SystemExit(f"{checkout} {case}: {r.stderr.strip().splitlines()[-1:]}")
    return float(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    print("| work | model | B | T | old chars/s | new chars/s | new/old | rounds' ratios |")
    print("|---|---|---|---|---|---|---|---|")
    for case in CASES:
        olds, news = [], []
        for _ in range(a.rounds):
            olds.append(run(a.old, case))
            news.append(run(a.new, case))
        ratios = [n / o for n, o in zip(news, olds)]
        mo, mn = statistics.median(olds), statistics.median(news)
        what, cell, H, L, B, T = case
        print(f"| {what} | {cell.upper()} {L}x{H} | {B} | {T} | {mo:,.0f} | {mn:,.0f} | "
              f"{mn / mo:.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x |", flush=True)


if __name__ == "__main__":
    main()
