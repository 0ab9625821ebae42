"""Write tests/fixtures/torch_parity.npz: PyTorch's results for tests/test_torch_fixtures.py.

Needs torch (``pip install torch`` or ``make install-torch``); run from the repository
root as::

    python tests/make_torch_fixtures.py [--out PATH]

The cases (names, sizes, settings) are defined in tests/test_torch_fixtures.py; the torch
side is built as the live comparisons build it: the model by tests/test_torch_parity.py's
TorchTwin (nn.Embedding + nn.LSTM/GRU/RNN + nn.Linear, batch_first), the optimizer steps
by tests/test_optim.py's _torch_run (torch.optim + clip_grad_norm_ + clip_grad_value_).
Weights, tokens, initial states and gradients are drawn here from numpy generators
seeded by the case name, so a rerun with the same torch writes the same numbers.
Everything is float64.  Not a test module (pytest collects only test_*.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

WEIGHT_BOUND = 0.6      # rnn.* and head.*: uniform(-0.6, 0.6); embedding: N(0, 1)
STATE_SCALE = 0.5       # initial states: 0.5 * N(0, 1), as in test_torch_parity
BIG_FACTOR = 50.0       # the BIG_STEP gradient is this many times larger


def _seed(case: str) -> int:
    return zlib.crc32(case.encode())


def model_case(torch, case: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Arrays of one model case, and torch's parameter names in order."""
    from charrnn.config import ModelConfig
    from test_torch_fixtures import B, MODEL_CASES, T, V, state_names
    from test_torch_parity import TorchTwin

    cfg = ModelConfig(dtype="float64", **MODEL_CASES[case])
    twin = TorchTwin(cfg).to(torch.float64)
    rng = np.random.default_rng(_seed(case))
    out: dict[str, np.ndarray] = {}
    names = []
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if name == "embedding.weight":
                w = rng.standard_normal(tuple(p.shape))
            else:
                w = rng.uniform(-WEIGHT_BOUND, WEIGHT_BOUND, tuple(p.shape))
            p.copy_(torch.from_numpy(w))
            out[f"{case}/param/{name}"] = w
            names.append(name)
    # every symbol appears in the inputs (each one-hot column gets a gradient)
    x = rng.permutation(np.resize(np.arange(V), B * T)).reshape(B, T).astype(np.int64)
    y = rng.integers(0, V, (B, T)).astype(np.int64)
    L = cfg.num_layers
    state = [STATE_SCALE * rng.standard_normal((L, B, cfg.hidden_size))
             for _ in state_names(case)]
    tstate = tuple(torch.from_numpy(s.copy()) for s in state)
    logits, final = twin(torch.from_numpy(x), tstate if cfg.cell == "lstm" else tstate[0])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V),
                                             torch.from_numpy(y).reshape(-1))
    loss.backward()
    final = final if cfg.cell == "lstm" else (final,)
    out[f"{case}/x"] = x
    out[f"{case}/y"] = y
    for s, s0, sT in zip(state_names(case), state, final):
        out[f"{case}/{s}0"] = s0
        out[f"{case}/{s}_final"] = sT.detach().numpy().copy()
    out[f"{case}/logits"] = logits.detach().numpy().copy()
    out[f"{case}/loss"] = np.array(loss.item(), np.float64)
    for name, p in twin.named_parameters():
        out[f"{case}/grad/{name}"] = p.grad.numpy().copy()
    return out, names


def optim_case(torch, case: str) -> dict[str, np.ndarray]:
    """Arrays of one optimizer case: the parameters after each step of torch.optim."""
    from charrnn.config import TrainConfig
    from test_optim import _data, _torch_run
    from test_torch_fixtures import BIG_STEP, LRS, N_PARAMS, N_STEPS, OPTIM_CASES

    cfg = TrainConfig(lr=LRS[0], **OPTIM_CASES[case])
    cfg.validate()
    p0, gs = _data(N_PARAMS, np.float64, N_STEPS, seed=_seed(case))
    gs[BIG_STEP] *= BIG_FACTOR
    # charrnn's clip=0 means "no clipping"; _torch_run always calls clip_grad_norm_,
    # which with max_norm=inf scales by 1 (min(inf/(norm+1e-6), 1))
    tcfg = dataclasses.replace(cfg, clip=math.inf) if cfg.clip == 0 else cfg
    lrs = list(LRS)
    params = []
    for k in range(1, N_STEPS + 1):     # the same deterministic run, stopped after k steps
        p, norms = _torch_run(torch, cfg.optimizer, tcfg, p0, gs[:k], lrs[:k])
        params.append(p.copy())
    return {f"{case}/p0": p0, f"{case}/grads": np.stack(gs), f"{case}/lrs": np.array(lrs),
            f"{case}/norms": np.array(norms, np.float64), f"{case}/params": np.stack(params)}


def build(torch) -> dict[str, np.ndarray]:
    import test_torch_fixtures as tf

    torch.set_num_threads(1)
    arrays: dict[str, np.ndarray] = {}
    names = {}
    for case in tf.MODEL_CASES:
        a, names[case] = model_case(torch, case)
        if names[case] != tf.param_names(case):
            raise SystemExit(f"{case}: torch names its parameters {names[case]}, "
                             f"the test expects {tf.param_names(case)}")
        arrays.update(a)
    for case in tf.OPTIM_CASES:
        arrays.update(optim_case(torch, case))
    want = tf.expected_arrays()
    for key, (shape, dtype) in want.items():
        arrays[key] = np.array(arrays[key], dtype=dtype, order="C")
        if arrays[key].shape != shape:
            raise SystemExit(f"{key}: shape {arrays[key].shape}, expected {shape}")
    if set(arrays) != set(want):
        raise SystemExit(f"arrays differ from the expected set: "
                         f"{sorted(set(arrays) ^ set(want))}")
    meta = dict(
        format=tf.FORMAT,
        generator="tests/make_torch_fixtures.py",
        torch_version=torch.__version__, numpy_version=np.__version__,
        sizes=dict(V=tf.V, E=tf.E, H=tf.H, B=tf.B, T=tf.T),
        model_cases=tf.MODEL_CASES, optim_cases=tf.OPTIM_CASES,
        optim_sizes=dict(n=tf.N_PARAMS, steps=tf.N_STEPS),
        param_names=names,
        sha256=tf.checksum(arrays),
    )
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    return arrays


def main(argv=None) -> int:
    import test_torch_fixtures as tf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=tf.FIXTURE)
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("make_torch_fixtures: torch is not installed (pip install torch)",
              file=sys.stderr)
        return 2
    arrays = build(torch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(tf.MODEL_CASES)} model cases, "
          f"{len(tf.OPTIM_CASES)} optimizer cases, {len(arrays)} arrays, "
          f"{args.out.stat().st_size} bytes (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
