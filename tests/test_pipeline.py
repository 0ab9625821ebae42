"""Layer pipelining (charrnn.pipeline): the numbers of the sequential order (up to float
rounding) for every cell and option, the same bits every time; the plan; failures in a
stage surface and never hang."""
import threading

import numpy as np
import pytest

from charrnn import pipeline, runtime
from charrnn.config import ModelConfig
from charrnn.model import Model

V = 7


@pytest.fixture
def two_threads(monkeypatch):
    """The pipeline runs only with >= 2 threads; pretend so even on a 1-core machine."""
    monkeypatch.setattr(runtime, "threads", lambda: 2)


def _run(model, x, y, state, mode, monkeypatch, masks=None):
    monkeypatch.setenv("CHARRNN_PIPELINE", mode)
    loss, final = model.forward_backward(x, y, state, train=True, masks=masks)
    lp, _ = model.log_probs(x, y, state)
    return loss, final, model.grad_flat.copy(), lp


OPTIONS = [
    dict(cell="lstm"),
    dict(cell="lstm", peepholes=True, residual=True, dropout=0.3),
    dict(cell="lstm", embed_size=4, num_layers=3),
    dict(cell="gru"),
    dict(cell="gru", gru_reset="before", residual=True, embed_size=3),
    dict(cell="rnn", nonlinearity="relu", dropout=0.2, num_layers=3),
    dict(cell="rnn", nonlinearity="tanh"),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_pipelined_equals_sequential(opts, dtype, two_threads, monkeypatch):
    monkeypatch.setenv("CHARRNN_PIPELINE_CHUNKS", "3")      # T=7: chunks of 2, 2, 3 steps
    kw = dict(vocab_size=V, hidden_size=6, num_layers=2, dtype=dtype)
    kw.update(opts)
    model = Model.from_config(ModelConfig(**kw), seed=3)
    rng = np.random.default_rng(0)
    B, T = 3, 7
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = tuple(s + rng.standard_normal(s.shape).astype(dtype)
                  for s in model.initial_state(B))
    masks = model.dropout_masks(B, T, rng) if model.config.dropout > 0 else None
    seq = _run(model, x, y, state, "0", monkeypatch, masks)
    monkeypatch.setenv("CHARRNN_PIPELINE", "1")
    assert len(pipeline.plan(model.config.num_layers, 6, T)) == 3
    pipe = _run(model, x, y, state, "1", monkeypatch, masks)
    again = _run(model, x, y, state, "1", monkeypatch, masks)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == "float64" else dict(rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(pipe[0], seq[0], **tol)
    for a, b in zip(seq[1], pipe[1]):
        np.testing.assert_allclose(b, a, **tol)
    np.testing.assert_allclose(pipe[2], seq[2], **tol)
    np.testing.assert_allclose(pipe[3], seq[3], **tol)
    assert np.abs(seq[2]).sum() > 0
    assert pipe[0] == again[0]                              # deterministic, bit for bit
    np.testing.assert_array_equal(pipe[2], again[2])


def test_plan(monkeypatch):
    monkeypatch.delenv("CHARRNN_PIPELINE", raising=False)
    monkeypatch.delenv("CHARRNN_PIPELINE_CHUNKS", raising=False)
    monkeypatch.setattr(runtime, "threads", lambda: 2)
    chunks = pipeline.plan(2, 128, 50)                           # default: auto
    assert chunks[0][0] == 0 and chunks[-1][1] == 50
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(chunks, chunks[1:]))
    assert len(chunks) == pipeline.DEFAULT_CHUNKS
    assert pipeline.plan(1, 128, 50) is None                     # one layer: nothing to overlap
    assert pipeline.plan(2, 128, 1) is None                      # one step
    assert pipeline.plan(2, pipeline.MAX_HIDDEN + 1, 50) is None  # wide: BLAS threads win
    monkeypatch.setenv("CHARRNN_PIPELINE", "1")
    assert pipeline.plan(2, pipeline.MAX_HIDDEN + 1, 50) is not None
    monkeypatch.setenv("CHARRNN_PIPELINE_CHUNKS", "500")
    assert len(pipeline.plan(2, 8, 50)) == 50                    # at most one step per chunk
    monkeypatch.setenv("CHARRNN_PIPELINE", "0")
    assert pipeline.plan(2, 128, 50) is None
    monkeypatch.setenv("CHARRNN_PIPELINE", "auto")
    assert pipeline.plan(2, pipeline.MAX_HIDDEN + 1, 50) is None
    monkeypatch.setattr(runtime, "threads", lambda: 1)
    monkeypatch.setenv("CHARRNN_PIPELINE", "1")
    assert pipeline.plan(2, 128, 50) is None                     # --threads 1


def test_stage_order_and_failure(monkeypatch):
    p = pipeline.Pipeline()
    chunks = [(0, 2), (2, 4), (4, 6)]
    seen, lock = [], threading.Lock()

    def work(k, t0, t1):
        with lock:
            seen.append((k, t0))

    p.run([0, 1, 2], chunks, work)
    assert sorted(seen) == sorted((k, t0) for k in range(3) for t0, _ in chunks)
    for k in (1, 2):                 # stage k saw chunk c only after stage k-1 finished it
        for t0, _ in chunks:
            assert seen.index((k - 1, t0)) < seen.index((k, t0))

    def bad(k, t0, t1):
        if k == 1 and t0 == 2:
            raise ValueError("stage 1 broke")

    with pytest.raises(ValueError, match="stage 1 broke"):
        p.run([0, 1, 2], chunks, bad)
    seen.clear()
    p.run([0, 1, 2], chunks, work)   # the pool is still usable
    assert len(seen) == 9


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_fused_time_loop_equals_python_loop(opts, monkeypatch):
    """The numba time loops (kernels.steps, products through numpy's own gemm) against the
    per-step Python loop, for every cell and option, forward and backward."""
    from charrnn.kernels import blas

    kw = dict(vocab_size=V, hidden_size=6, num_layers=2, dtype="float64")
    kw.update(opts)
    model = Model.from_config(ModelConfig(**kw), seed=5)
    rng = np.random.default_rng(1)
    B, T = 4, 6
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    masks = model.dropout_masks(B, T, rng) if model.config.dropout > 0 else None
    monkeypatch.setenv("CHARRNN_PIPELINE", "0")
    out = {}
    for loop in ("python", "fused"):
        monkeypatch.setenv("CHARRNN_STEP_LOOP", loop)
        with runtime.blas_single_thread():
            if loop == "fused" and blas.gemm(np.float64) is None:
                pytest.skip("numpy's BLAS exposes no cblas_dgemm here: the Python loop is used")
            if loop == "python":
                assert blas.gemm(np.float64) is None
            loss, final = model.forward_backward(x, y, None, train=True, masks=masks)
            out[loop] = (loss, final, model.grad_flat.copy())
    assert runtime.blas_is_single_threaded() == (runtime.threads() == 1)   # restored
    np.testing.assert_allclose(out["fused"][0], out["python"][0], rtol=1e-13)
    for a, b in zip(out["python"][1], out["fused"][1]):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out["fused"][2], out["python"][2], rtol=1e-11, atol=1e-14)


def test_time_loops_bind_numpys_own_blas():
    """numba loads scipy's OpenBLAS too (np.dot); the time loops must call numpy's, whose
    threads --threads and the pipeline limit."""
    import os

    from charrnn.kernels import blas

    try:
        import scipy.linalg.cython_blas  # noqa: F401  (loads scipy's BLAS, if installed)
    except ImportError:
        pass
    files = blas._blas_files()
    home = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    ours = [f for f in files if os.path.relpath(f, home).startswith("numpy")]
    if not ours:
        pytest.skip("numpy's BLAS is not a bundled library here (system or conda numpy)")
    assert files[0] == ours[0]
    with runtime.blas_single_thread():
        fn = blas.gemm(np.float32)
    assert fn is not None and fn.__name__ in {c[0] for c in blas._CANDIDATES}
