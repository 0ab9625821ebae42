"""Centred finite differences (float64) against the analytic gradient, for every
parameter tensor of every cell and option."""
import numpy as np
import pytest

from charrnn.config import ModelConfig
from charrnn.model.network import Model

B, T, H, V = 2, 3, 5, 7
EPS = 1e-5
ENTRIES = 8          # random entries checked per tensor (all of them when fewer)
# relative error uses max(|analytic|, |numeric|, FLOOR): entries whose gradient is below
# FLOOR are held to an absolute error of 1e-10 (the finite-difference noise level)
FLOOR = 1e-5

CONFIGS = [
    dict(cell="lstm"),
    dict(cell="lstm", peepholes=True),
    dict(cell="lstm", peepholes=True, residual=True, num_layers=3, embed_size=4),
    dict(cell="lstm", embed_size=3, num_layers=1),
    dict(cell="gru", gru_reset="after"),
    dict(cell="gru", gru_reset="before"),
    dict(cell="gru", gru_reset="before", residual=True, num_layers=3, embed_size=3),
    dict(cell="gru", gru_reset="after", embed_size=4, num_layers=1),
    dict(cell="rnn", nonlinearity="tanh"),
    dict(cell="rnn", nonlinearity="relu", residual=True, num_layers=3),
    dict(cell="rnn", nonlinearity="relu", embed_size=3, num_layers=1),
]


def _ids(cfg):
    return "-".join(f"{k}={v}" for k, v in cfg.items())


def _data(seed, model, carried):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, V, (B, T))
    y = rng.integers(0, V, (B, T))
    state = None
    if carried:
        state = tuple(0.5 * rng.standard_normal(s.shape) for s in model.initial_state(B))
    return x, y, state


def gradcheck(model, loss_fn, grads, seed=0):
    """Max relative error over ENTRIES random entries of every tensor."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for name in model.param_names:
        p = model.params[name].reshape(-1)
        g = grads[name].reshape(-1)
        picks = rng.choice(p.size, size=min(ENTRIES, p.size), replace=False)
        for i in picks:
            old = p[i]
            p[i] = old + EPS
            lp = loss_fn()
            p[i] = old - EPS
            lm = loss_fn()
            p[i] = old
            num = (lp - lm) / (2 * EPS)
            err = abs(num - g[i]) / max(abs(num), abs(g[i]), FLOOR)
            worst = max(worst, err)
            assert err < 1e-5, f"{name}[{i}]: analytic {g[i]:.10g} vs numeric {num:.10g}"
    return worst


@pytest.mark.parametrize("carried", [False, True], ids=["zero-state", "carried-state"])
@pytest.mark.parametrize("opts", CONFIGS, ids=_ids)
def test_gradcheck(opts, carried):
    opts = dict(opts)
    layers = opts.pop("num_layers", 2)
    cfg = ModelConfig(vocab_size=V, hidden_size=H, num_layers=layers, dtype="float64", **opts)
    model = Model.from_config(cfg, seed=3)
    x, y, state = _data(11, model, carried)
    loss, grads = model.loss_and_grad(x, y, state)
    assert np.isfinite(loss)
    assert all(np.any(g != 0) for g in grads.values())   # every tensor gets a gradient

    def loss_fn():
        return model.forward_backward(x, y, state, train=False)[0]
    gradcheck(model, loss_fn, grads)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_gradcheck_dropout_fixed_mask(cell):
    """Dropout forward with a fixed mask (the same rng seed every call) differentiates
    correctly, residual connections included."""
    cfg = ModelConfig(cell=cell, vocab_size=V, hidden_size=H, num_layers=3, dropout=0.4,
                      residual=True, dtype="float64")
    model = Model.from_config(cfg, seed=5)
    x, y, state = _data(2, model, True)

    def loss_fn():
        return model.forward_backward(x, y, state, train=True,
                                      rng=np.random.default_rng(99))[0]
    loss_fn()
    grads = {k: v.copy() for k, v in model.grads.items()}
    masks = model.dropout_masks(B, T, np.random.default_rng(99))
    assert any(np.any(m == 0) for m in masks)      # some units really are dropped
    gradcheck(model, loss_fn, grads)
