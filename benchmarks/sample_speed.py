"""Generation speed of ``charrnn sample`` vs a per-step PyTorch loop (chars/s).

charrnn: the jitted generation kernel (one call per 256-character chunk, every step
fused: products, gates, head, softmax, draw), end to end through
``charrnn.sampling.generate_text`` (ids turned into text, --stop scanning) and, for
the matrix products, both its own loops and BLAS (scipy's, through numba's np.dot).
PyTorch: ``torch.nn.LSTM`` + ``nn.Linear`` with our weights, one step per Python
iteration (one-hot input, softmax, ``torch.multinomial``), under ``torch.no_grad``.
Both use the same number of threads.  Run without this sandbox's OpenBLAS overrides::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/sample_speed.py

Options: --threads, --chars (per configuration), --vocab, --no-torch, --quick.
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import time

CONFIGS = [  # (label, layers, hidden, streams)
    ("LSTM 2x256, 1 stream", 2, 256, 1),
    ("LSTM 3x512, 1 stream", 3, 512, 1),
    ("LSTM 2x256, 32 streams", 2, 256, 32),
]


def _model(L, H, V):
    from charrnn.config import ModelConfig
    from charrnn.model.network import Model
    from charrnn.store.vocab import Vocab

    chars = [chr(c) for c in range(32, 32 + V - 1)] + ["\n"]
    m = Model.from_config(ModelConfig(vocab_size=V, hidden_size=H, num_layers=L), seed=0)
    m.vocab = Vocab(sorted(chars))
    return m


def _best(fn, repeats=3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_kernel(m, N, chars, blas) -> float:
    from charrnn.sampling import Sampler

    s = Sampler(m, N, seed=1, blas=blas)
    s.generate(16)                                   # compile / warm up
    steps = max(1, chars // N)
    return steps * N / _best(lambda: s.generate(steps))


def bench_end_to_end(m, N, chars) -> float:
    from charrnn.sampling import generate_text

    steps = max(1, chars // N)

    def run():
        for _ in generate_text(m, steps, num_samples=N, seed=1):
            pass
    run()
    return steps * N / _best(run)


def bench_torch(m, N, chars, threads) -> float:
    import torch
    import torch.nn as nn

    torch.set_num_threads(threads)
    c = m.config
    V, H, L = c.vocab_size, c.hidden_size, c.num_layers
    rnn = nn.LSTM(V, H, L, batch_first=True)
    head = nn.Linear(H, V)
    rnn.load_state_dict({k[4:]: torch.from_numpy(v.copy()) for k, v in m.params.items()
                         if k.startswith("rnn.")})
    head.load_state_dict({"weight": torch.from_numpy(m.params["head.weight"].copy()),
                          "bias": torch.from_numpy(m.params["head.bias"].copy())})
    gen = torch.Generator().manual_seed(1)
    steps = max(1, chars // N)

    def run():
        with torch.no_grad():
            x = torch.zeros(N, 1, V)                                          # (N, 1, V)
            idx = torch.zeros(N, 1, 1, dtype=torch.long)
            state = None
            for _ in range(steps):
                x.zero_()
                x.scatter_(2, idx, 1.0)
                y, state = rnn(x, state)                                      # (N, 1, H)
                p = torch.softmax(head(y[:, 0]), dim=-1)                      # (N, V)
                idx = torch.multinomial(p, 1, generator=gen).view(N, 1, 1)
    run()
    return steps * N / _best(run, repeats=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chars", type=int, default=20_000)
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer characters (a smoke run)")
    a = ap.parse_args()
    from charrnn.kernels.runtime import configure_threads

    configure_threads(a.threads)
    chars = 2000 if a.quick else a.chars
    rows = []
    for label, L, H, N in CONFIGS:
        m = _model(L, H, a.vocab)
        n = chars if H <= 256 else chars // 4
        loops = bench_kernel(m, N, n, blas=False)
        blas = bench_kernel(m, N, n, blas=True)
        e2e = bench_end_to_end(m, N, n)
        torch_cps = None if a.no_torch else bench_torch(m, N, max(200, n // 10), a.threads)
        rows.append((label, loops, blas, e2e, torch_cps))
    print(f"Generation speed, chars/s (float32, V={a.vocab}, {a.threads} threads)\n")
    print("| model | kernel, own loops | kernel, BLAS | `generate_text` (auto) "
          "| PyTorch per-step loop | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, loops, blas, e2e, tc in rows:
        t = "-" if tc is None else f"{tc:,.0f}"
        sp = "-" if tc is None else f"{e2e / tc:.1f}x"
        print(f"| {label} | {loops:,.0f} | {blas:,.0f} | {e2e:,.0f} | {t} | {sp} |")


if __name__ == "__main__":
    main()
