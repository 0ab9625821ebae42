"""charrnn.kernels.blas: numpy's BLAS product called from numba's threads."""
import os
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from charrnn.kernels import runtime
from charrnn.kernels import blas
from charrnn.kernels import matmul as MM


def _wheel_openblas() -> bool:
    np.matmul(np.ones((2, 2)), np.ones((2, 2)))
    return any(i.get("prefix") == "libscipy_openblas" for i in threadpool_info())


def _by_ranges(a, b, parts):
    """One np.matmul per row range: what the pool fallback computes."""
    out = np.empty((a.shape[0], b.shape[1]), a.dtype)
    M = a.shape[0]
    for i in range(parts):
        r0, r1 = M * i // parts, M * (i + 1) // parts
        np.matmul(a[r0:r1], b, out=out[r0:r1])
    return out


@pytest.mark.skipif(not _wheel_openblas(), reason="numpy's BLAS is not the wheel's OpenBLAS")
def test_found_for_numpys_wheel():
    assert blas.available()


needs_blas = pytest.mark.skipif(not blas.available(), reason="no CBLAS gemm found for numpy's BLAS")


@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_same_bits_as_numpy_per_row_range(dtype, parts):
    rng = np.random.default_rng(1)
    d = rng.standard_normal((301, 70)).astype(dtype)      # (N, G*H): a = d.T, transposed
    h = rng.standard_normal((301, 9)).astype(dtype)       # (N, H)
    x = rng.standard_normal((70, 33)).astype(dtype)       # a plain (M, K)
    w = rng.standard_normal((33, 12)).astype(dtype)
    for a, b in ((d.T, h), (x, w)):
        out = np.full((a.shape[0], b.shape[1]), np.nan, dtype)
        assert blas.gemm_rows(a, b, out, parts)
        np.testing.assert_array_equal(out, _by_ranges(a, b, parts))


@needs_blas
def test_views_with_leading_dimensions():
    """Column slices of wider arrays (lda, ldb, ldc larger than the width) and a
    transposed slice."""
    rng = np.random.default_rng(2)
    big_a = rng.standard_normal((40, 50)).astype(np.float32)
    big_b = rng.standard_normal((30, 20)).astype(np.float32)
    wide = np.full((40, 25), np.nan, np.float32)
    a, b, out = big_a[:, 5:35], big_b[:, 3:14], wide[:, 2:13]
    assert blas.gemm_rows(a, b, out, 2)
    np.testing.assert_array_equal(out, _by_ranges(a, b, 2))
    assert np.isnan(wide[:, :2]).all() and np.isnan(wide[:, 13:]).all()
    at = big_a.T[10:40, :30]                                # (30, 30), stride (1, 50)
    out2 = np.empty((30, 11), np.float32)
    assert blas.gemm_rows(at, big_b[:30, :11], out2, 2)
    np.testing.assert_array_equal(out2, _by_ranges(at, big_b[:30, :11], 2))


@needs_blas
def test_declines_what_one_call_cannot_describe():
    f4 = np.ones((6, 4), np.float32)
    cases = [
        (f4[:, ::2], np.ones((2, 3), np.float32), np.empty((6, 3), np.float32)),   # strided a
        (f4, np.ones((4, 6), np.float32)[:, ::2], np.empty((6, 3), np.float32)),   # strided b
        (f4, np.ones((4, 3), np.float32), np.empty((3, 6), np.float32).T),         # F-order out
        (f4, np.ones((4, 3), np.float64), np.empty((6, 3), np.float32)),           # dtypes differ
        (np.ones((6, 4), np.int64), np.ones((4, 3), np.int64), np.empty((6, 3), np.int64)),
        (f4[:0], np.ones((4, 3), np.float32), np.empty((0, 3), np.float32)),       # empty
    ]
    for a, b, out in cases:
        before = out.copy()
        assert not blas.gemm_rows(a, b, out, 2)
        np.testing.assert_array_equal(out, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plain_matmul_same_bits_either_way(dtype, monkeypatch):
    """kernels.matmul.matmul, plain b: numba's threads or the Python pool, the same bits."""
    monkeypatch.setattr(runtime, "threads", lambda: 2)
    monkeypatch.setattr(MM, "MATMUL_ROWS", 8)
    rng = np.random.default_rng(3)
    d = rng.standard_normal((500, 64)).astype(dtype)
    h = rng.standard_normal((500, 16)).astype(dtype)
    fast = MM.matmul(d.T, h, np.empty((64, 16), dtype))
    calls = []

    def declined(*args):
        calls.append(args[3])
        return False
    monkeypatch.setattr(blas, "gemm_rows", declined)
    pool = MM.matmul(d.T, h, np.empty((64, 16), dtype))
    assert calls == [2]
    np.testing.assert_array_equal(fast, pool)
    np.testing.assert_array_equal(pool, _by_ranges(d.T, h, 2))


def test_a_failed_self_check_turns_the_path_off(monkeypatch):
    monkeypatch.setattr(blas, "_state", {})
    monkeypatch.setattr(blas, "_self_check", lambda: False)
    assert not blas.available()
    out = np.full((4, 3), np.nan, np.float32)
    assert not blas.gemm_rows(np.ones((4, 5), np.float32), np.ones((5, 3), np.float32), out, 2)
    assert np.isnan(out).all()
    monkeypatch.setattr(blas, "_state", {})
    monkeypatch.setattr(blas, "_lookup", lambda: None)          # no library found
    assert not blas.available()


_TUNED = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")


def _env_after(code: str, **env):
    clean = {k: v for k, v in os.environ.items() if k not in _TUNED}
    clean.update(env)
    code += "; print(*(os.environ.get(k) for k in %r))" % (_TUNED,)
    return subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True,
                          text=True, check=True).stdout.split()


def test_openmp_workers_spin_unless_the_user_says():
    """The CLI's start (runtime.tune_environment) sets what the user did not."""
    tune = "import os; from charrnn.kernels.runtime import tune_environment; tune_environment()"
    assert _env_after(tune) == ["300000", "None", "4"]
    assert _env_after(tune, GOMP_SPINCOUNT="1000") == ["1000", "None", "4"]
    assert _env_after(tune, OMP_WAIT_POLICY="passive") == ["None", "passive", "4"]
    assert _env_after(tune, OPENBLAS_THREAD_TIMEOUT="9") == ["300000", "None", "9"]


def test_importing_charrnn_changes_no_environment_variable():
    code = ("import os; before = dict(os.environ); import charrnn, charrnn.config, "
            "charrnn.model.network, charrnn.training.loop, charrnn.sampling, charrnn.evaluate, charrnn.cli.app; "
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())")
    assert _env_after(code) == ["None", "None", "None"]


def test_the_command_line_tunes_its_environment(tmp_path):
    script = tmp_path / "show.py"
    script.write_text("import os, sys\n"
                      "from charrnn import cli\n"
                      "cli.cli.add_command(__import__('click').Command('env', callback=lambda: "
                      "print(*(os.environ.get(k) for k in %r))))\n"
                      "cli.main(['env'])\n" % (_TUNED,))
    clean = {k: v for k, v in os.environ.items() if k not in _TUNED}
    r = subprocess.run([sys.executable, str(script)], env=clean, capture_output=True,
                       text=True, check=True)
    assert r.stdout.split() == ["300000", "None", "4"]


_CACHE_CHILD = """
import sys
import numpy as np
from charrnn.kernels import runtime
runtime.configure_threads(int(sys.argv[1]))
from charrnn.kernels import blas
from charrnn.kernels import matmul as MM
rng = np.random.default_rng(0)
a = rng.standard_normal((300, 200)).astype(np.float32).T        # (200, 300), transposed
b = rng.standard_normal((300, 16)).astype(np.float32)
out = np.empty((200, 16), np.float32)
assert blas.gemm_rows(a, b, out, 2)
ref = np.empty_like(out)
ref[:100], ref[100:] = a[:100] @ b, a[100:] @ b
assert np.array_equal(out, ref)
print("ok")
"""


@needs_blas
def test_thread_count_change_on_one_numba_cache(tmp_path):
    """The parallel kernel cached by a 1-thread process runs in a 2-thread one, and back."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    for n in ("1", "2", "1"):
        r = subprocess.run([sys.executable, "-c", _CACHE_CHILD, n], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
    assert any((tmp_path / "numba-cache").rglob("*.nbi"))
