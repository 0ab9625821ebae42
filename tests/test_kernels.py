"""The jitted forward and backward against the slow reference (tests/naive.py), the
float32 activations, the softmax head, and the one-place-for-numba-flags rule."""
import pathlib
import re

import numpy as np
import pytest

import naive
from charrnn.config import ModelConfig
from charrnn.model.network import Model

B, T, H, V = 2, 4, 5, 7

OPTIONS = [
    dict(cell="lstm"),
    dict(cell="lstm", peepholes=True),
    dict(cell="gru", gru_reset="after"),
    dict(cell="gru", gru_reset="before"),
    dict(cell="rnn", nonlinearity="tanh"),
    dict(cell="rnn", nonlinearity="relu"),
]


def _ids(o):
    return "-".join(f"{k}={v}" for k, v in o.items())


@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["nodrop", "drop"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("embed", [0, 3], ids=["onehot", "embed"])
@pytest.mark.parametrize("opts", OPTIONS, ids=_ids)
def test_against_naive(opts, embed, residual, dropout):
    cfg = ModelConfig(vocab_size=V, hidden_size=H, num_layers=3, embed_size=embed,
                      residual=residual, dropout=dropout, dtype="float64", **opts)
    model = Model.from_config(cfg, seed=7)
    rng = np.random.default_rng(1)
    x = rng.integers(0, V, (B, T))
    y = rng.integers(0, V, (B, T))
    state = tuple(0.5 * rng.standard_normal(s.shape) for s in model.initial_state(B))
    masks = model.dropout_masks(B, T, np.random.default_rng(4)) if dropout else None
    loss, final = model.forward_backward(x, y, state, train=True,
                                         rng=np.random.default_rng(4))
    ref = naive.run(cfg, model.params, x, y, state, masks)
    assert loss == pytest.approx(ref["loss"], rel=1e-12)
    for name in model.param_names:
        np.testing.assert_allclose(model.grads[name], ref["grads"][name], rtol=1e-9,
                                   atol=1e-13, err_msg=name)
    for a, b in zip(final, ref["state"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    if not dropout:
        logits, final2 = model.forward(x, state)
        np.testing.assert_allclose(logits, ref["logits"], rtol=1e-12, atol=1e-13)
        lp, _ = model.log_probs(x, y, state)
        np.testing.assert_allclose(lp, ref["logp"], rtol=1e-12, atol=1e-13)
        for a, b in zip(final2, ref["state"]):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("opts", OPTIONS, ids=_ids)
def test_float32_close_to_float64(opts):
    """The float32 kernels (fast activations) agree with float64 to float32 accuracy."""
    cfg = ModelConfig(vocab_size=V, hidden_size=H, num_layers=2, dtype="float64", **opts)
    m64 = Model.from_config(cfg, seed=2)
    m32 = m64.cast("float32")
    rng = np.random.default_rng(3)
    x = rng.integers(0, V, (3, 6))
    y = rng.integers(0, V, (3, 6))
    l64, g64 = m64.loss_and_grad(x, y)
    l32, g32 = m32.loss_and_grad(x, y)
    assert l32 == pytest.approx(l64, rel=1e-5)
    for name in m64.param_names:
        scale = np.abs(g64[name]).max()
        assert np.abs(g32[name] - g64[name]).max() <= 1e-4 * scale + 1e-7, name


def test_float32_activations_accuracy():
    from charrnn.kernels.activations import exp_into, sigmoid_into, tanh_into

    x = np.concatenate([np.linspace(-90, 90, 20001), np.linspace(-0.5, 0.5, 2001),
                        [0.0, 1e-30, -1e-30, 1e-8, -1e-8]]).astype(np.float32)
    ref = x.astype(np.float64)
    out = np.empty_like(x)
    tanh_into(x, out)
    t = np.tanh(ref)
    assert np.all(np.abs(out - t) <= 4e-7 * np.abs(t) + 1e-37)
    sigmoid_into(x, out)
    s = 1 / (1 + np.exp(-ref))
    assert np.all(np.abs(out - s) <= 4e-7 * s + 1e-37)
    xs = np.linspace(-80, 80, 10001).astype(np.float32)
    out = np.empty_like(xs)
    total = exp_into(xs, np.float32(0.0), out)
    e = np.exp(xs.astype(np.float64))
    assert np.all(np.abs(out - e) <= 4e-7 * e)
    assert total == pytest.approx(e.sum(), rel=1e-6)
    # saturation, no overflow to inf/NaN
    big = np.array([-1e4, -200, 200, 1e4], np.float32)
    out = np.empty_like(big)
    tanh_into(big, out)
    assert out.tolist() == [-1.0, -1.0, 1.0, 1.0]
    sigmoid_into(big, out)
    assert np.all(np.isfinite(out)) and out[2] == 1.0 and out[0] < 1e-30


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_stable_for_large_logits(dtype):
    from charrnn.kernels import cells as K

    logits = np.array([[1000.0, 0.0, -1000.0], [5e3, 5e3, 5e3], [-3e3, -3e3 + 1, -3e3]],
                      dtype)
    tgt = np.array([1, 0, 1])
    d = np.empty_like(logits)
    nll = np.empty(3)
    K._softmax_xent(logits, tgt, 1.0, 1, d, nll)
    assert np.all(np.isfinite(nll)) and np.all(np.isfinite(d))
    assert nll[0] == pytest.approx(1000.0, rel=1e-6)
    assert nll[1] == pytest.approx(np.log(3), rel=1e-6)
    ref = np.log1p(2 * np.exp(-1.0))      # target is the largest logit by 1
    assert nll[2] == pytest.approx(ref, rel=1e-5)
    np.testing.assert_allclose(d.sum(axis=1), 0.0, atol=1e-6)


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_scatter_add_rows_matches_numpy_for_any_thread_count(nth):
    from charrnn.kernels import cells as K

    rng = np.random.default_rng(3)
    idx = rng.integers(0, 5, 40)                          # repeated rows
    src = rng.standard_normal((40, 7)).astype(np.float32)
    ref = np.zeros((5, 7), np.float32)
    for n in range(40):                                   # rows in order n = 0, 1, ...
        ref[idx[n]] += src[n]
    out = np.zeros((5, 7), np.float32)
    K._scatter_add_rows(nth, idx, src, out)
    assert np.array_equal(out, ref)
    assert K.scatter_threads(512, 2) == 1 and K.scatter_threads(2048, 2) == 2


def test_no_kernel_hard_codes_numba_flags():
    kdir = pathlib.Path(__file__).resolve().parent.parent / "charrnn" / "kernels"
    pattern = re.compile(r"njit\(|parallel\s*=|fastmath\s*=")
    offenders = []
    for path in sorted(kdir.glob("*.py")):
        if path.name in ("jit.py", "fastload.py"):   # the flags, and numba's cache loader
            continue
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.name}:{no}: {line.strip()}")
    assert not offenders, "numba flags outside jit.py:\n" + "\n".join(offenders)
