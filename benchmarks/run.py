"""`make bench`: charrnn side by side with PyTorch on this machine; writes results.md.

Every measurement runs in a fresh worker process (benchmarks/_worker.py), charrnn and
PyTorch alternating, ``--rounds`` times; the table reports the median over rounds of
each worker's best-of-repeats.  Same threads, float32, same model, same batch, Adam with
gradient clipping at 5 on both sides; PyTorch gets one-hot inputs like charrnn's
(charrnn gathers columns instead of multiplying by one-hot vectors: that is part of its
design, and of the comparison).

Run it as the Makefile does, without this sandbox's OpenBLAS overrides::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/run.py --out benchmarks/results.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from charrnn.store.checkpoint import save_model

HERE = Path(__file__).resolve().parent
V = 65                      # tinyshakespeare's vocabulary

TRAIN = [  # name, cell, L, H, B, T, charrnn with --low-memory (PyTorch as always)
    ("LSTM 2x128", "lstm", 2, 128, 50, 50, False),
    ("LSTM 2x256", "lstm", 2, 256, 50, 50, False),
    ("LSTM 2x512", "lstm", 2, 512, 50, 100, False),
    ("LSTM 3x512", "lstm", 3, 512, 50, 100, False),
    ("GRU 2x256", "gru", 2, 256, 50, 50, False),
    ("RNN 2x256", "rnn", 2, 256, 50, 50, False),
    ("LSTM 2x512, charrnn --low-memory", "lstm", 2, 512, 50, 100, True),
]
SAMPLE = [  # name, L, H, streams, chars per stream
    ("LSTM 2x256, 1 stream", 2, 256, 1, 2000),
    ("LSTM 3x512, 1 stream", 3, 512, 1, 500),
    ("LSTM 2x256, 32 streams", 2, 256, 32, 500),
]
#: `sample --weights`: one stream of LSTM 3x512 (L, H, chars), each weights in turn a round
WEIGHTS_SAMPLE = (3, 512, 500)
WEIGHTS = ("float32", "bf16", "int8")


def worker(framework: str, kind: str, cfg: dict) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "_worker.py"), framework, kind,
                          json.dumps(cfg)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{framework} {kind} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def have_torch() -> bool:
    return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0


def flops_per_char(cell: str, L: int, H: int, train: bool) -> float:
    """Matrix-multiply FLOPs per character: recurrent and input products (the first
    layer's one-hot input product is a gather for charrnn, counted as zero) and the head;
    backward is twice the forward."""
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    fwd = 2 * G * H * H * L + 2 * G * H * H * (L - 1) + 2 * H * V
    return fwd * (3 if train else 1)


def median_pair(fn_ours, fn_theirs, rounds: int, rates: bool = False):
    """Medians over ``rounds`` alternating rounds of charrnn's and PyTorch's figure, and
    the ratio of each round's pair, charrnn's speed over PyTorch's (the figures are
    times, or with ``rates`` characters per second).  The table's ratio is the ratio of
    the medians; the per-round ratios show how far this machine's drift moves it."""
    ours, theirs, ratios = [], [], []
    for _ in range(rounds):
        ours.append(fn_ours())
        if fn_theirs is not None:
            theirs.append(fn_theirs())
            ratios.append(ours[-1] / theirs[-1] if rates else theirs[-1] / ours[-1])
    return (statistics.median(ours), (statistics.median(theirs) if theirs else None),
            ratios)


def spread(ratios: list[float]) -> str:
    """'1.41-1.62x' (lowest and highest per-round ratio), or 'n/a'."""
    return f"{min(ratios):.2f}-{max(ratios):.2f}x" if ratios else "n/a"


def wall(cmd: list[str], n: int = 5) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def clean_install_startup(ck: Path) -> tuple[float, float] | None:
    """``charrnn --help`` and ``charrnn sample -n 100`` (warm numba cache) in a fresh
    virtual environment holding charrnn and its own dependencies only, as ``pip install``
    gives a user.  The benchmark's own environment may hold more (scipy, cffi: numba
    imports both at start-up whenever they are installed, about 0.4 s here).  None when
    the environment cannot be built (no network, no pip)."""
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        py = venv / "bin" / "python"
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                           capture_output=True)
            subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(HERE.parent)],
                           check=True, capture_output=True, timeout=600)
            cmd = [str(py), "-m", "charrnn"]
            subprocess.run([*cmd, "sample", str(ck), "-n", "100"], check=True,
                           capture_output=True, timeout=900)     # compiles, then cached
        except (OSError, subprocess.SubprocessError):
            return None
        return wall([*cmd, "--help"]), wall([*cmd, "sample", str(ck), "-n", "100"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "results.md"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke test)")
    a = ap.parse_args()
    torch_ok = have_torch()
    th = a.threads
    rep = dict(repeats=2 if a.quick else 3, inner=2 if a.quick else 5, threads=th)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    # The ceiling is measured like everything else: several times through the run (before
    # the first and after every training configuration), the median reported.  One
    # measurement catches the machine at one moment, and its speed drifts.
    def measure_ceiling() -> dict:
        return worker("numpy", "matmul", {"threads": th, "n": 2048})

    mm = measure_ceiling()
    ceilings = [mm["gflops"]]
    log(f"BLAS ceiling: {ceilings[0]:.0f} GFLOP/s ({mm['blas']})")

    # ---- training and evaluation throughput
    train_rows = []
    for name, cell, L, H, B, T, low in TRAIN:
        c = dict(rep, cell=cell, L=L, H=H, B=B, T=T, V=V, low_memory=low)
        if H >= 512:
            c["inner"] = 2 if a.quick else 3
        ours, theirs, rr = median_pair(
            lambda: worker("charrnn", "train", c)["sec_per_batch"],
            (lambda: worker("torch", "train", c)["sec_per_batch"]) if torch_ok else None,
            a.rounds)
        cps, tcps = B * T / ours, (B * T / theirs if theirs else None)
        gf = cps * flops_per_char(cell, L, H, True) / 1e9
        train_rows.append((name, B, T, cps, tcps, gf, rr))
        log(f"train {name}: charrnn {cps:,.0f} chars/s, torch {tcps or 0:,.0f}")
        ceilings.append(measure_ceiling()["gflops"])
    # ---- thread scaling: what the second core (and each one after it) is worth
    scale_rows = []
    for n in sorted({1, th}):
        c = dict(rep, threads=n, cell="lstm", L=2, H=512, B=50, T=100, V=V, low_memory=False,
                 inner=2 if a.quick else 3)
        ours, theirs, rr = median_pair(
            lambda: worker("charrnn", "train", c)["sec_per_batch"],
            (lambda: worker("torch", "train", c)["sec_per_batch"]) if torch_ok else None,
            a.rounds)
        cps, tcps = 5000 / ours, (5000 / theirs if theirs else None)
        scale_rows.append((n, cps, tcps, cps * flops_per_char("lstm", 2, 512, True) / 1e9, rr))
        log(f"train LSTM 2x512 on {n} thread(s): charrnn {cps:,.0f} chars/s, "
            f"torch {tcps or 0:,.0f}")
        ceilings.append(measure_ceiling()["gflops"])
    ceiling = statistics.median(ceilings)
    log(f"BLAS ceiling, median of {len(ceilings)}: {ceiling:.0f} GFLOP/s "
        f"({min(ceilings):.0f}-{max(ceilings):.0f})")
    c = dict(rep, cell="lstm", L=2, H=256, B=50, T=50, V=V)
    ours, theirs, eval_rr = median_pair(
        lambda: worker("charrnn", "eval", c)["sec_per_batch"],
        (lambda: worker("torch", "eval", c)["sec_per_batch"]) if torch_ok else None,
        a.rounds)
    eval_row = (2500 / ours, 2500 / theirs if theirs else None)
    eval_gf = eval_row[0] * flops_per_char("lstm", 2, 256, False) / 1e9
    log(f"eval LSTM 2x256: charrnn {eval_row[0]:,.0f}, torch {eval_row[1] or 0:,.0f}")

    # ---- sampling
    sample_rows = []
    for name, L, H, N, n in SAMPLE:
        c = dict(threads=th, repeats=3, cell="lstm", L=L, H=H, V=V, streams=N, n=n)
        tc = dict(c, n=max(50, n // 4))
        ours, theirs, rr = median_pair(
            lambda: (lambda r: r["chars"] / r["sec"])(worker("charrnn", "sample", c)),
            (lambda: (lambda r: r["chars"] / r["sec"])(worker("torch", "sample", tc)))
            if torch_ok else None, a.rounds, rates=True)
        sample_rows.append((name, ours, theirs, rr))
        log(f"sample {name}: charrnn {ours:,.0f} chars/s, torch {theirs or 0:,.0f}")
    # ---- sampling with reduced weights: float32, bf16 and int8 in turn, fresh processes
    L, H, n = WEIGHTS_SAMPLE
    w_rates = {w: [] for w in WEIGHTS}
    for _ in range(a.rounds):
        for w in WEIGHTS:
            r = worker("charrnn", "sample", dict(threads=th, repeats=3, cell="lstm", L=L, H=H,
                                                 V=V, streams=1, n=n, weights=w))
            w_rates[w].append(r["chars"] / r["sec"])
    weight_rows = [(w, statistics.median(w_rates[w]),
                    [x / f for x, f in zip(w_rates[w], w_rates["float32"])]) for w in WEIGHTS]
    log("sample --weights, LSTM 3x512, 1 stream: " + ", ".join(
        f"{w} {cps:,.0f} chars/s" for w, cps, _ in weight_rows))

    # ---- memory
    c = dict(threads=th, cell="lstm", L=2, H=512, B=50, T=100, V=V)
    rss_ours = statistics.median(worker("charrnn", "rss", c)["peak_rss_mb"] for _ in range(2))
    rss_low = statistics.median(worker("charrnn", "rss", dict(c, low_memory=True))
                                ["peak_rss_mb"] for _ in range(2))
    rss_torch = (statistics.median(worker("torch", "rss", c)["peak_rss_mb"] for _ in range(2))
                 if torch_ok else None)
    log(f"peak RSS LSTM 2x512: charrnn {rss_ours:.0f} MB (--low-memory {rss_low:.0f} MB), "
        f"torch {rss_torch or 0:.0f} MB")

    # ---- start-up
    charrnn = [sys.executable, "-m", "charrnn"]
    help_s = wall([*charrnn, "--help"])
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(HERE.parent))
        from charrnn.config import ModelConfig
        from charrnn.model.network import Model
        from charrnn.store.vocab import Vocab
        vocab = Vocab([chr(32 + i) for i in range(V - 1)] + ["\n"])
        m = Model.from_config(ModelConfig(vocab_size=V, hidden_size=256, num_layers=2), seed=0)
        m.vocab = vocab
        ck = Path(tmp) / "m.safetensors"
        save_model(ck, m)
        subprocess.run([*charrnn, "sample", str(ck), "-n", "100"], capture_output=True)
        sample_s = wall([*charrnn, "sample", str(ck), "-n", "100"])
        clean = clean_install_startup(ck)
    torch_import = wall([sys.executable, "-c", "import torch"], 3) if torch_ok else None
    log(f"start-up: --help {help_s:.3f}s, sample -n 100 {sample_s:.3f}s; clean install: "
        + (f"--help {clean[0]:.3f}s, sample -n 100 {clean[1]:.3f}s" if clean else "n/a"))

    # ---- report
    def ratio(x, y):
        return f"{x / y:.2f}x" if y else "n/a"

    def num(x):
        return f"{x:,.0f}" if x is not None else "n/a"

    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']})"
                     for b in mm["blas"])
    torch_v = (subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                              capture_output=True, text=True).stdout.strip()
               if torch_ok else "not installed")
    lines = [
        "# charrnn vs PyTorch on this machine",
        "",
        f"Generated by `make bench` on {time.strftime('%Y-%m-%d %H:%M')} "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{th} threads for both; Python {platform.python_version()}; PyTorch {torch_v}; "
        f"BLAS: {blas}). Each figure is the median over {a.rounds} alternating rounds of "
        "fresh processes, each the best of several timed repeats after warm-up; the ratio "
        "is the ratio of the two medians, and the range beside it that of the rounds' "
        "own ratios (charrnn's run and PyTorch's next to it).",
        "",
        f"float32 matrix-multiply ceiling (numpy BLAS, 2048x2048): **{ceiling:.0f} GFLOP/s** "
        f"(median of {len(ceilings)} measurements through the run, each the best of 5; "
        f"they ranged {min(ceilings):.0f}-{max(ceilings):.0f})",
        "",
        "## Training (forward + backward + Adam step, clip 5), characters/second",
        "",
        "| model | B | T | charrnn | PyTorch | ratio | rounds' ratios | charrnn GFLOP/s "
        "| of ceiling |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, B, T, cps, tcps, gf, rr in train_rows:
        lines.append(f"| {name} | {B} | {T} | {num(cps)} | {num(tcps)} | {ratio(cps, tcps)} | "
                     f"{spread(rr)} | {gf:.0f} | {gf / ceiling:.0%} |")
    lines += [
        "",
        "## Evaluation (forward only, loss), characters/second",
        "",
        "| model | charrnn | PyTorch | ratio | rounds' ratios | charrnn GFLOP/s | of ceiling |",
        "|---|---|---|---|---|---|---|",
        f"| LSTM 2x256, B=50 T=50 | {num(eval_row[0])} | {num(eval_row[1])} | "
        f"{ratio(*eval_row)} | {spread(eval_rr)} | {eval_gf:.0f} | {eval_gf / ceiling:.0%} |",
        "",
        "## Thread scaling, training LSTM 2x512 (B=50, T=100), characters/second",
        "",
        "| threads | charrnn | PyTorch | ratio | rounds' ratios | charrnn GFLOP/s | "
        "speed-up over 1 thread (charrnn, PyTorch) |",
        "|---|---|---|---|---|---|---|",
        *[f"| {n} | {num(cps)} | {num(tcps)} | {ratio(cps, tcps)} | {spread(rr)} | {gf:.0f} | "
          f"{cps / scale_rows[0][1]:.2f}x, "
          f"{ratio(tcps, scale_rows[0][2]) if tcps and scale_rows[0][2] else 'n/a'} |"
          for n, cps, tcps, gf, rr in scale_rows],
        "",
        "## Sampling, characters/second (PyTorch: a per-step loop with torch.multinomial)",
        "",
        "| model | charrnn | PyTorch | ratio | rounds' ratios |",
        "|---|---|---|---|---|",
    ]
    for name, ours, theirs, rr in sample_rows:
        lines.append(f"| {name} | {num(ours)} | {num(theirs)} | {ratio(ours, theirs)} | "
                     f"{spread(rr)} |")
    lines += [
        "",
        f"## Sampling with `--weights`, LSTM {L}x{H}, 1 stream, characters/second",
        "",
        "(float32, bf16 and int8 in turn, a fresh process each, every round; the ratio is "
        "each round's own, to that round's float32.)",
        "",
        "| weights | charrnn | ratio to float32 (median) | rounds' ratios |",
        "|---|---|---|---|",
        *[f"| {w} | {num(cps)} | {statistics.median(rr):.2f}x | {spread(rr)} |"
          for w, cps, rr in weight_rows],
    ]
    lines += [
        "",
        "## Memory and start-up",
        "",
        "| measure | charrnn | PyTorch |",
        "|---|---|---|",
        f"| peak RSS, training LSTM 2x512 (B=50, T=100) | {rss_ours:,.0f} MB | "
        f"{'n/a' if rss_torch is None else f'{rss_torch:,.0f} MB'} |",
        f"| the same, charrnn with --low-memory | {rss_low:,.0f} MB | |",
        f"| `charrnn --help` | {help_s:.2f} s | |",
        f"| `charrnn sample -n 100` (warm numba cache, LSTM 2x256) | {sample_s:.2f} s | |",
        f"| `charrnn --help`, clean install (charrnn's dependencies only) | "
        f"{'n/a' if clean is None else f'{clean[0]:.2f} s'} | |",
        f"| `charrnn sample -n 100`, clean install, warm cache | "
        f"{'n/a' if clean is None else f'{clean[1]:.2f} s'} | |",
        f"| `python -c 'import torch'` | | "
        f"{'n/a' if torch_import is None else f'{torch_import:.2f} s'} |",
        "",
    ]
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
