"""Start-up time of the command line: ``charrnn --help`` and ``charrnn sample CKPT -n 100``.

Each run is a fresh process (``python -m charrnn ...``); the table gives the median
and the range (min-max) of ``--runs`` runs.  The sample runs use a warm kernel cache
(one untimed run first).  Targets (issue 31): ``--help`` under 0.1 s, ``sample -n 100``
under 0.5 s.  Run without this sandbox's OpenBLAS overrides (the script drops
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE from the children's environment itself)::

    python -m compileall -q charrnn          # else an editable checkout compiles each start
    python benchmarks/startup.py --ckpt RUN_DIR

Without ``--ckpt`` it trains a throw-away LSTM 2x256 (5 iterations) on a small
generated corpus first.  ``--baseline DIR`` times another copy of the package too (DIR
holds its ``charrnn/``), alternating the two run by run, so that both see the same load
on a shared machine.  ``--profile`` adds one ``-X importtime`` summary of the sample
command (the largest imports).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DROP = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in DROP}
    env.setdefault("CHARRNN_THREADS", "2")
    return env


def _run(src: Path, args, env) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "charrnn", *args], cwd=src, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _checkpoint(tmp: Path, env) -> Path:
    words = "the quick brown fox jumps over a lazy dog and then it sleeps".split()
    text = "\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(9))
                     for i in range(4000))
    (tmp / "corpus.txt").write_text(text + "\n", encoding="utf-8")
    for args in (["prepare", str(tmp / "corpus.txt"), "-o", str(tmp / "d"),
                  "--val-frac", "0.05"],
                 ["train", str(tmp / "d"), "-o", str(tmp / "r"), "--max-iters", "5",
                  "--layers", "2", "--hidden", "256", "--threads", "2"]):
        subprocess.run([sys.executable, "-m", "charrnn", *args], cwd=ROOT, env=env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return tmp / "r"


def _profile(src: Path, args, env, top: int = 15) -> None:
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "charrnn", *args],
                         cwd=src, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, check=True)
    rows = []
    for line in res.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    top_level = [(us, name.strip()) for us, name in rows if name.startswith(" ") and
                 not name.startswith("  ")]
    print(f"\nimports of `charrnn {' '.join(args)}` ({src}), top level, cumulative:")
    for us, name in sorted(top_level, reverse=True)[:top]:
        print(f"  {us / 1000:8.1f} ms  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--ckpt", type=Path, default=None,
                    help="checkpoint or run directory to sample from")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a directory holding another charrnn/ to compare with")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    env = _env()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = a.ckpt if a.ckpt is not None else _checkpoint(Path(tmp), env)
        cases = [("charrnn --help", ["--help"]),
                 ("charrnn sample CKPT -n 100", ["sample", str(ckpt), "-n", "100",
                                                 "--seed", "1"])]
        sources = [("this", ROOT)] + ([("baseline", a.baseline)] if a.baseline else [])
        for _label, src in sources:          # warm the kernel cache and the .pyc files
            for _name, args in cases:
                _run(src, args, env)
        times = {(lab, name): [] for lab, _ in sources for name, _ in cases}
        for _ in range(a.runs):
            for name, args in cases:
                for lab, src in sources:
                    times[(lab, name)].append(_run(src, args, env))
        print(f"{'command':28s} {'checkout':9s} {'median':>8s} {'range':>15s}  target")
        targets = {"charrnn --help": 0.1, "charrnn sample CKPT -n 100": 0.5}
        for name, _ in cases:
            for lab, _src in sources:
                t = times[(lab, name)]
                print(f"{name:28s} {lab:9s} {statistics.median(t):7.3f}s "
                      f"{min(t):6.3f}-{max(t):.3f}s  {targets[name]:.1f}s")
        if a.profile:
            for _lab, src in sources:
                _profile(src, cases[1][1], env)


if __name__ == "__main__":
    main()
