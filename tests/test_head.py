"""The evaluation's fused head and loss (charrnn.kernels.head): Model.log_probs gives the
same bits as the logits of Model.forward through the training loss, for every cell,
both dtypes, any number of rows (blocks of ROW_BLOCK and a part block) and threads."""
from __future__ import annotations

import numpy as np
import pytest

from charrnn.config import ModelConfig
from charrnn.kernels import cells as K
from charrnn.kernels import packed as P
from charrnn.kernels.head import head_log_probs
from charrnn.model.network import Model


def _reference(model, x, y):
    """log p(y) through the training path: the (N, V) logits, then _softmax_xent."""
    inputs, targets, state = model._prepare(x, y, None)
    buf = model._forward(inputs, state, None)
    model._loss(buf, targets, want_grad=False)
    B, T = x.shape
    return -buf.nll.reshape(T, B).T, model._final_state(buf)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_probs_same_bits_as_training_loss(cell, dtype):
    m = Model.from_config(ModelConfig(cell=cell, vocab_size=37, hidden_size=24, num_layers=2,
                                      dtype=dtype), seed=3)
    rng = np.random.default_rng(1)
    for B, T in [(50, 50), (3, 7), (1, 400), (9, 1)]:
        x = rng.integers(0, 37, (B, T))
        y = rng.integers(0, 37, (B, T))
        lp, state = m.log_probs(x, y)
        want, want_state = _reference(m, x, y)
        assert lp.shape == (B, T) and lp.dtype == np.float64
        np.testing.assert_array_equal(lp, want)
        for a, b in zip(state, want_state):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_head_kernel_rows_and_threads(threads):
    rng = np.random.default_rng(0)
    B, T, H, V = 13, 41, 16, 65                     # N = 533: two whole blocks and a part
    y_in = rng.standard_normal((T * B, H)).astype(np.float32)
    w = rng.standard_normal((V, H)).astype(np.float32)
    bias = rng.standard_normal(V).astype(np.float32)
    tgt = rng.integers(0, V, T * B)
    wp = P.packed(np.ascontiguousarray(w.T))
    logits = y_in.astype(np.float64) @ w.T.astype(np.float64) + bias
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    want = (logits[np.arange(T * B), tgt] - lse).reshape(T, B).T
    lp = np.empty((B, T))
    scratch = head_log_probs(y_in, wp, bias, tgt, lp, threads)
    np.testing.assert_allclose(lp, want, rtol=0, atol=1e-4)
    lp2 = np.empty((B, T))
    head_log_probs(y_in, wp, bias, tgt, lp2, 1, scratch)        # scratch reused, 1 thread
    np.testing.assert_array_equal(lp, lp2)
    nll = np.empty(T * B)                                       # the training loss's bits
    z = np.empty((T * B, V), np.float32)
    from charrnn.kernels.matmul import matmul
    matmul(y_in, wp, z, bias=bias, threads=threads)
    K._softmax_xent(z, tgt, 1.0, 0, z, nll)
    np.testing.assert_array_equal(lp, -nll.reshape(T, B).T)
