"""Compile the kernels the suite's command-line tests use, before the tests start.

On a clean clone every kernel compiles on first use, and with pytest-xdist each worker
would compile the same kernels itself, at the same time as the other.  The session
start (tests/conftest.py) runs the two parts below side by side instead, one process
each, so that each kernel compiles once and the two cores share the work; the workers
then load them from numba's cache.  The float64 and forced-path kernels of the library
tests are left to those tests.

    python tests/warm.py train|sample     (one part; prints nothing on success)
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex jolly "
        "boxers\nand my girl wove six dozen plaid jackets before she quit.\n") * 300


def _cli(*args, input=None) -> None:
    env = dict(os.environ, CHARRNN_THREADS="2")
    r = subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)], input=input,
                       capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"warm-up: charrnn {' '.join(map(str, args))}: {r.stderr[-500:]}")


def part_train(tmp: Path) -> None:
    """train (forward/backward, optimizer, validation) for every cell."""
    (tmp / "c.txt").write_text(TEXT)
    _cli("prepare", tmp / "c.txt", "-o", tmp / "data")
    tiny = ["--hidden", "16", "--batch-size", "4", "--seq-len", "16", "--max-iters", "2",
            "--eval-every", "1"]
    for cell in ("lstm", "gru", "rnn"):
        _cli("train", tmp / "data", "-o", tmp / cell, "--cell", cell, "--layers", "2",
             "--dropout", "0.1", *tiny)


def part_sample(tmp: Path) -> None:
    """sample (streams, beam, reduced weights) and eval, from untrained models."""
    sys.path.insert(0, str(ROOT))
    from charrnn.config import ModelConfig
    from charrnn.model.network import Model
    from charrnn.store.checkpoint import save_model
    from charrnn.store.vocab import Vocab

    vocab = Vocab.from_text(TEXT)
    for cell in ("lstm", "gru", "rnn"):
        m = Model.from_config(ModelConfig(cell=cell, vocab_size=len(vocab), hidden_size=16,
                                          num_layers=2, dtype="float32"), 1)
        m.vocab = vocab
        ck = tmp / f"{cell}.safetensors"
        save_model(ck, m)
        _cli("sample", ck, "-n", "20", "--seed", "1")
        _cli("sample", ck, "-n", "20", "--seed", "1", "--num-samples", "3")
        _cli("sample", ck, "-n", "20", "--beam", "3")
        for w in ("int8", "bf16"):
            _cli("sample", ck, "-n", "20", "--seed", "1", "--weights", w)
        _cli("eval", ck, "-", input=TEXT[:2000])
        _cli("eval", ck, "--lines", "-", input=TEXT[:2000])


def main(part: str) -> None:
    with tempfile.TemporaryDirectory(prefix="charrnn-warm-") as tmp:
        {"train": part_train, "sample": part_sample}[part](Path(tmp))


if __name__ == "__main__":
    main(sys.argv[1])
