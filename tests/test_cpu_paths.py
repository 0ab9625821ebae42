"""Every code path the products can take on SOME CPU runs here, forced by the switches of
charrnn.kernels.cpu (CHARRNN_CPU_PATH, CHARRNN_VECTOR_BITS), each in a subprocess (the
choice is made at import and compile time) with a private numba cache, and is compared
with numpy: the AVX2 assembly k loop, the LLVM IR loop at 128- and 512-bit vector widths
(LLVM splits 512-bit vectors on an AVX2 host), and the numpy fallback, which must also
train through the CLI like the default path.

The host's own default path runs unforced, on the suite's shared kernel cache (forcing
it would only compile the same code again).  The IR loop at 256 bits differs from the
assembly path only in the micro-kernel's k loop, which tests/test_packed.py checks
bit for bit against the assembly loop for every tile height, in this process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from charrnn.kernels import cpu

ROOT = Path(__file__).resolve().parent.parent

_CHECK = r"""
import json, sys
import numpy as np
from charrnn.kernels import cpu, packed as P
from charrnn.kernels.matmul import matmul, product
from charrnn.kernels.modes import Product

rng = np.random.default_rng(0)
worst = 0.0
for dtype in (np.float32, np.float64):
    tol = 2e-5 if dtype == np.float32 else 1e-12
    nr = P.panel_width(dtype)
    for M in (1, 5, cpu.MR, cpu.MR + 1, 2 * cpu.MR + 3, 250):
        for K, N in ((7, nr), (19, 2 * nr + 3)):
            a = rng.standard_normal((M, K)).astype(dtype)
            w = rng.standard_normal((K, N)).astype(dtype)
            b = rng.standard_normal(N).astype(dtype)
            ref = a.astype(np.float64) @ w.astype(np.float64) + b
            wp = P.packed(w)
            one = matmul(a, wp, np.full((M, N), np.nan, dtype), bias=b, threads=1)
            two = matmul(a, wp, np.full((M, N), np.nan, dtype), bias=b,
                         threads=2)
            assert np.array_equal(one, two), "threads changed the bits"
            np.testing.assert_allclose(one, ref, rtol=tol, atol=tol)
            y = np.full((M, N), np.nan, dtype)
            product(Product.PACKED, w.T.copy(), wp, a, y)             # in-kernel route
            np.testing.assert_allclose(y, ref - b, rtol=tol, atol=tol)
            worst = max(worst, float(np.abs(one - ref).max()))
    d = rng.standard_normal((300, 40)).astype(dtype)                  # plain (BLAS) route
    h = rng.standard_normal((300, 9)).astype(dtype)
    out = matmul(d.T, h, np.empty((40, 9), dtype), threads=2)
    np.testing.assert_allclose(out, d.T.astype(np.float64) @ h, rtol=tol, atol=tol)
print(json.dumps({"path": cpu.CPU_PATH, "bits": cpu.VECTOR_BITS, "mr": cpu.MR,
                  "nr32": P.panel_width(np.float32), "worst": worst}))
"""


def _env(tmp_path, **switches):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"), CHARRNN_THREADS="2",
               PYTHONPATH=str(ROOT))
    env.pop("CHARRNN_CPU_PATH", None)
    env.pop("CHARRNN_VECTOR_BITS", None)
    env.update({k: str(v) for k, v in switches.items()})
    return env


CASES = [
    pytest.param("asm", 256, marks=pytest.mark.skipif(
        not cpu.asm_possible(cpu.host_features(), 256),
        reason="the assembly loop needs x86-64 with AVX2 and FMA")),
    ("ir", 128),
    ("ir", 512),
    ("numpy", 256),
]


@pytest.fixture(scope="module")
def forced_runs(tmp_path_factory):
    """Every forced path's check, started at once: each compiles its kernels afresh (one
    core each), so they run side by side instead of one after the other."""
    procs = {}
    for case in CASES:
        path, bits = case.values if hasattr(case, "values") else case
        if path == "asm" and not cpu.asm_possible(cpu.host_features(), 256):
            continue
        tmp = tmp_path_factory.mktemp(f"{path}{bits}")
        if cpu.choose(cpu.host_features(), None, None) == (bits, path):   # the default
            env = _env(tmp)
            env.pop("NUMBA_CACHE_DIR")
        else:
            env = _env(tmp, CHARRNN_CPU_PATH=path, CHARRNN_VECTOR_BITS=bits)
        procs[(path, bits)] = subprocess.Popen(
            [sys.executable, "-c", _CHECK], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=ROOT, env=env)
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("path,bits", CASES)
def test_forced_path_matches_numpy(path, bits, forced_runs):
    out, err = forced_runs[(path, bits)].communicate(timeout=900)
    assert forced_runs[(path, bits)].returncode == 0, err[-3000:]
    got = json.loads(out.strip().splitlines()[-1])
    assert (got["path"], got["bits"]) == (path, bits)
    assert got["mr"] == (12 if bits == 512 else 6)
    assert got["nr32"] == 2 * bits // 32


def test_choice_rules():
    """The default path by host, and the refusals, without compiling anything."""
    avx2 = {"avx2": True, "fma": True, "avx": True}
    if cpu.asm_possible(avx2, 256):
        assert cpu.choose(avx2, None, None) == (256, "asm")
        assert cpu.choose(avx2, None, "512") == (512, "ir")
        with pytest.raises(ValueError, match="256-bit"):
            cpu.choose(avx2, "asm", "128")
    assert cpu.choose({"avx512f": True}, None, None)[1] == "ir"
    assert cpu.choose({}, "numpy", None) == (128, "numpy")


def test_a_bad_switch_value_is_an_error(tmp_path):
    res = subprocess.run([sys.executable, "-c", "import charrnn.kernels.cpu"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env=_env(tmp_path, CHARRNN_CPU_PATH="avx9"))
    assert res.returncode != 0
    assert "CHARRNN_CPU_PATH must be one of asm, ir, numpy (got 'avx9')" in res.stderr


def _losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in rows]


def test_numpy_fallback_trains_like_the_default_path(tmp_path):
    """A machine without the fast path trains correctly: `charrnn train` with
    CHARRNN_CPU_PATH=numpy gives the default path's validation losses to rounding."""
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    args = ["--cell", "rnn", "--layers", "2", "--hidden", "24", "--batch-size", "4",
            "--seq-len", "16", "--eval-every", "5", "--max-iters", "15", "--seed", "3"]
    losses = {}
    for name, switches in (("default", {}), ("numpy", {"CHARRNN_CPU_PATH": "numpy"})):
        run = tmp_path / name
        env = _env(tmp_path, **switches)
        if not switches:
            env.pop("NUMBA_CACHE_DIR")               # the default path: the shared cache
        res = subprocess.run([sys.executable, "-m", "charrnn", "train", str(text), "-o",
                              str(run), *args], capture_output=True, text=True,
                             timeout=900, cwd=ROOT, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        losses[name] = _losses(run)
    assert len(losses["default"]) == 3
    assert losses["numpy"] == pytest.approx(losses["default"], rel=1e-4)
