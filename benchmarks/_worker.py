"""One measurement in a fresh process (run by benchmarks/run.py; prints one JSON line).

    python benchmarks/_worker.py FRAMEWORK KIND JSON_CONFIG

FRAMEWORK: charrnn | torch.  KIND: train | eval | sample | rss | matmul.
Start-up (imports, numba cache load, torch import) is never inside a timed region; each
timed region is repeated and the best of the repeats is reported, after warm-up.
"""
from __future__ import annotations

import json
import resource
import sys
import time

if sys.argv[1:2] == ["charrnn"]:
    from charrnn.kernels.runtime import tune_environment

    tune_environment()      # first, as the CLI does: it tunes OpenBLAS before numpy loads

import numpy as np  # noqa: E402


def _best_of(fn, repeats: int, inner: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def _batch(c, rng):
    x = rng.integers(0, c["V"], (c["B"], c["T"]))
    y = rng.integers(0, c["V"], (c["B"], c["T"]))
    return x, y


# ---------------------------------------------------------------------- charrnn

def charrnn_model(c):
    from charrnn.config import ModelConfig
    from charrnn.model.network import Model
    from charrnn.kernels.runtime import configure_threads, ensure_numba

    ensure_numba()
    configure_threads(c["threads"])
    cfg = ModelConfig(cell=c["cell"], vocab_size=c["V"], hidden_size=c["H"],
                      num_layers=c["L"])
    model = Model.from_config(cfg, seed=0)
    if c.get("low_memory"):                        # as `charrnn train --low-memory` sets it
        from charrnn.training.memory import recompute_chunk
        model.recompute_steps = recompute_chunk(c["B"])
    return model


def charrnn_train(c) -> dict:
    from charrnn.config import TrainConfig
    from charrnn.model.optim import Optimizer

    model = charrnn_model(c)
    opt = Optimizer(TrainConfig(clip=5.0), model)
    x, y = _batch(c, np.random.default_rng(0))
    state = [model.initial_state(c["B"])]

    def step():
        loss, state[0] = model.forward_backward(x, y, state[0], train=True)
        opt.step(model.flat, model.grad_flat, 2e-3)
    sec = _best_of(step, c["repeats"], c["inner"])
    return {"sec_per_batch": sec}


def charrnn_eval(c) -> dict:
    model = charrnn_model(c)
    x, y = _batch(c, np.random.default_rng(0))
    sec = _best_of(lambda: model.log_probs(x, y), c["repeats"], c["inner"])
    return {"sec_per_batch": sec}


def charrnn_sample(c) -> dict:
    from charrnn.sampling import Sampler

    model = charrnn_model(c)
    s = Sampler(model, num_streams=c["streams"], temperature=1.0, seed=1,
                weights=c.get("weights", "float32"))
    n = c["n"]
    s.generate(min(n, 200))                          # compile/warm
    best = float("inf")
    for _ in range(c["repeats"]):
        t0 = time.perf_counter()
        s.generate(n)
        best = min(best, time.perf_counter() - t0)
    return {"sec": best, "chars": n * c["streams"]}


# ---------------------------------------------------------------------- torch

def torch_model(c):
    import torch
    import torch.nn as nn

    torch.set_num_threads(c["threads"])
    torch.manual_seed(0)
    cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[c["cell"]]
    rnn = cls(c["V"], c["H"], c["L"], batch_first=True)
    head = nn.Linear(c["H"], c["V"])
    return torch, nn, rnn, head


def torch_train(c) -> dict:
    torch, nn, rnn, head = torch_model(c)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=2e-3)
    x, y = _batch(c, np.random.default_rng(0))
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    V = c["V"]
    state = [None]

    def step():
        opt.zero_grad(set_to_none=True)
        xo = nn.functional.one_hot(x, V).float()                   # (B, T, V)
        out, st = rnn(xo, state[0])
        loss = nn.functional.cross_entropy(head(out).reshape(-1, V), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        state[0] = tuple(s.detach() for s in st) if isinstance(st, tuple) else st.detach()
    sec = _best_of(step, c["repeats"], c["inner"])
    return {"sec_per_batch": sec}


def torch_eval(c) -> dict:
    torch, nn, rnn, head = torch_model(c)
    x, y = _batch(c, np.random.default_rng(0))
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    V = c["V"]

    def step():
        with torch.no_grad():
            out, _ = rnn(nn.functional.one_hot(x, V).float())
            nn.functional.cross_entropy(head(out).reshape(-1, V), y.reshape(-1))
    return {"sec_per_batch": _best_of(step, c["repeats"], c["inner"])}


def torch_sample(c) -> dict:
    torch, nn, rnn, head = torch_model(c)
    V, N, n = c["V"], c["streams"], c["n"]
    g = torch.Generator().manual_seed(1)

    def run(steps):
        with torch.no_grad():
            tok = torch.zeros(N, dtype=torch.long)
            state = None
            for _ in range(steps):
                xo = nn.functional.one_hot(tok, V).float().unsqueeze(1)   # (N, 1, V)
                out, state = rnn(xo, state)
                p = torch.softmax(head(out[:, 0]), dim=-1)                 # (N, V)
                tok = torch.multinomial(p, 1, generator=g)[:, 0]
    run(min(n, 50))
    best = float("inf")
    for _ in range(c["repeats"]):
        t0 = time.perf_counter()
        run(n)
        best = min(best, time.perf_counter() - t0)
    return {"sec": best, "chars": n * N}


# ---------------------------------------------------------------------- misc

def rss(framework: str, c) -> dict:
    """Peak resident memory of a process that trains a few steps."""
    c = dict(c, repeats=1, inner=3)
    (charrnn_train if framework == "charrnn" else torch_train)(c)
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def matmul(c) -> dict:
    from threadpoolctl import threadpool_info, threadpool_limits

    n = c.get("n", 2048)
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    out = np.empty_like(a)
    with threadpool_limits(c["threads"], user_api="blas"):
        sec = _best_of(lambda: np.matmul(a, b, out=out), 5, 3)
    info = [{k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for i in threadpool_info() if i.get("user_api") == "blas"]
    return {"gflops": 2 * n ** 3 / sec / 1e9, "blas": info}


def main() -> None:
    framework, kind, cfg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if kind == "matmul":
        res = matmul(cfg)
    elif kind == "rss":
        res = rss(framework, cfg)
    else:
        fn = globals()[f"{framework}_{kind}"]
        res = fn(cfg)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
