"""charrnn.kernels.runtime: thread settings; charrnn.kernels.matmul: the row-split BLAS
product."""
import numpy as np
import pytest
from threadpoolctl import threadpool_info

from charrnn.kernels import runtime
from charrnn.kernels import matmul as MM


def test_blas_runs_on_one_thread_after_configure():
    """numba gets the threads; BLAS stays on one (kernels.matmul splits its work)."""
    try:
        assert runtime.configure_threads(2) == 2
        blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas)
    finally:
        runtime.configure_threads(None)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_matmul_splits_rows_and_matches_numpy(threads, monkeypatch):
    monkeypatch.setattr(runtime, "threads", lambda: threads)
    monkeypatch.setattr(MM, "MATMUL_ROWS", 4)
    rng = np.random.default_rng(0)
    d = rng.standard_normal((300, 70))                 # (N, G): a is its transpose
    h = rng.standard_normal((300, 9))
    out = np.full((70, 9), np.nan)
    assert MM.matmul(d.T, h, out) is out
    np.testing.assert_allclose(out, d.T @ h, rtol=1e-12, atol=1e-12)
    small = np.full((3, 9), np.nan)                    # fewer rows than MATMUL_ROWS
    MM.matmul(d.T[:3], h, small)
    np.testing.assert_allclose(small, d.T[:3] @ h, rtol=1e-12, atol=1e-12)


def test_runtime_imports_no_kernel_module():
    """runtime is below the kernels: it imports none of them (no import cycle)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(runtime))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            assert node.module is None or node.module not in (
                "blas", "jit", "matmul", "packed", "cpu", "cells", "steps", "sample"), node.module
            for alias in node.names:
                assert alias.name not in ("blas", "jit", "matmul", "packed", "cpu"), alias.name


def test_a_forced_cpu_path_gets_its_own_numba_cache(monkeypatch):
    """Kernels compiled for another CHARRNN_CPU_PATH / CHARRNN_VECTOR_BITS inline another
    product, so each choice caches apart (numba's cache index would not tell them)."""
    monkeypatch.delenv("CHARRNN_CPU_PATH", raising=False)
    monkeypatch.delenv("CHARRNN_VECTOR_BITS", raising=False)
    assert runtime._cpu_choice() == ""
    monkeypatch.setenv("CHARRNN_CPU_PATH", "numpy")
    assert runtime._cpu_choice() == "cpu-numpy-auto"
    monkeypatch.setenv("CHARRNN_VECTOR_BITS", "512")
    assert runtime._cpu_choice() == "cpu-numpy-512"
