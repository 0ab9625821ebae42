"""The time loops of charrnn.kernels.steps: threads split the batch, and the numbers do
not depend on how (every product element is one chain of fused multiply-adds, every
step kernel works row by row), for every cell and option, forward and backward."""
import numpy as np
import pytest

from charrnn.model import cells
from charrnn.kernels import runtime
from charrnn.config import ModelConfig
from charrnn.model.network import Model

V = 7

OPTIONS = [
    dict(cell="lstm"),
    dict(cell="lstm", peepholes=True, residual=True, dropout=0.3),
    dict(cell="lstm", embed_size=4, num_layers=3),
    dict(cell="gru"),
    dict(cell="gru", gru_reset="before", residual=True, embed_size=3),
    dict(cell="rnn", nonlinearity="relu", dropout=0.2, num_layers=3),
    dict(cell="rnn", nonlinearity="tanh"),
]


def _run(model, x, y, state, masks):
    loss, final = model.forward_backward(x, y, state, train=True, masks=masks)
    lp, _ = model.log_probs(x, y, state)
    return loss, final, model.grad_flat.copy(), lp


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_batch_split_between_threads_gives_the_same_bits(opts, dtype, monkeypatch):
    kw = dict(vocab_size=V, hidden_size=6, num_layers=2, dtype=dtype)
    kw.update(opts)
    model = Model.from_config(ModelConfig(**kw), seed=3)
    rng = np.random.default_rng(0)
    B, T = 7, 5
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = tuple(s + rng.standard_normal(s.shape).astype(dtype)
                  for s in model.initial_state(B))
    masks = model.dropout_masks(B, T, rng) if model.config.dropout > 0 else None
    monkeypatch.setattr(cells, "ROWS_PER_THREAD", 1)
    out = {}
    for nth in (1, 2, 3):               # rows 7 / 4+3 / 2+2+3 (3 ranges on 2 cores too)
        monkeypatch.setattr(runtime, "numba_threads", lambda: nth)
        out[nth] = _run(model, x, y, state, masks)
    assert np.abs(out[1][2]).sum() > 0
    for nth in (2, 3):
        assert out[nth][0] == out[1][0]
        for a, b in zip(out[1][1], out[nth][1]):
            np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(out[nth][2], out[1][2])
        np.testing.assert_array_equal(out[nth][3], out[1][3])


def test_threads_of_a_time_loop(monkeypatch):
    """Each thread gets at least ROWS_PER_THREAD rows; one thread runs in the caller."""
    seen = []
    ws = cells.Workspace(B=50, T=3)

    def steps(nth, *args):
        seen.append(("steps", nth, args))

    def rows(r0, r1, *args):
        seen.append(("rows", r0, r1, args))

    for threads, want in [(1, ("rows", 0, 50, (1, 2))), (2, ("steps", 2, (1, 2))),
                          (16, ("steps", 50 // cells.ROWS_PER_THREAD, (1, 2)))]:
        monkeypatch.setattr(runtime, "numba_threads", lambda: threads)
        cells.Layer._run(ws, steps, rows, 1, 2)
        assert seen.pop() == want
    small = cells.Workspace(B=cells.ROWS_PER_THREAD + 1, T=3)
    cells.Layer._run(small, steps, rows, 1, 2)
    assert seen.pop() == ("rows", 0, cells.ROWS_PER_THREAD + 1, (1, 2))
