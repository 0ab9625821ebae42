"""Forward+backward throughput of charrnn's core vs PyTorch (chars/s).

A 2-layer 256-wide LSTM (one-hot input, V=65), B=50, T=50, float32, both on 2 threads.
Run it without the OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE overrides of this sandbox::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/core_throughput.py

Options: --cell lstm|gru|rnn, --hidden, --layers, --batch, --seq, --vocab, --iters,
--threads, --dtype, --no-torch.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _time(fn, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - t0) / iters)
    return best


def bench_charrnn(a) -> float:
    from charrnn.config import ModelConfig
    from charrnn.model.network import Model
    from charrnn.kernels.runtime import configure_threads

    configure_threads(a.threads)
    cfg = ModelConfig(cell=a.cell, vocab_size=a.vocab, hidden_size=a.hidden,
                      num_layers=a.layers, dtype=a.dtype)
    model = Model.from_config(cfg, seed=0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, a.vocab, (a.batch, a.seq))
    y = rng.integers(0, a.vocab, (a.batch, a.seq))
    state = model.initial_state(a.batch)
    return _time(lambda: model.forward_backward(x, y, state), a.iters)


def bench_torch(a) -> float:
    import torch
    import torch.nn as nn

    torch.set_num_threads(a.threads)
    dt = torch.float32 if a.dtype == "float32" else torch.float64
    cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[a.cell]
    rnn = cls(a.vocab, a.hidden, a.layers, batch_first=True).to(dt)
    head = nn.Linear(a.hidden, a.vocab).to(dt)
    x = torch.randint(0, a.vocab, (a.batch, a.seq))
    y = torch.randint(0, a.vocab, (a.batch, a.seq))
    xo = nn.functional.one_hot(x, a.vocab).to(dt)
    params = list(rnn.parameters()) + list(head.parameters())

    def step():
        for p in params:
            p.grad = None
        out, _ = rnn(xo)
        loss = nn.functional.cross_entropy(head(out).reshape(-1, a.vocab), y.reshape(-1))
        loss.backward()
    return _time(step, a.iters)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn"])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--seq", type=int, default=50)
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--no-torch", action="store_true")
    a = ap.parse_args()
    chars = a.batch * a.seq
    ours = bench_charrnn(a)
    print(f"charrnn {a.cell} L={a.layers} H={a.hidden} B={a.batch} T={a.seq} {a.dtype}: "
          f"{ours * 1e3:7.1f} ms/batch  {chars / ours:9.0f} chars/s")
    if a.no_torch:
        return
    try:
        theirs = bench_torch(a)
    except ImportError:
        print("torch not installed: no comparison")
        return
    print(f"torch   {a.cell} L={a.layers} H={a.hidden} B={a.batch} T={a.seq} {a.dtype}: "
          f"{theirs * 1e3:7.1f} ms/batch  {chars / theirs:9.0f} chars/s")
    print(f"speed-up: {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
