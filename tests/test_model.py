"""Model API: layout, initialisation, state, chunking, dropout, validation."""
import numpy as np
import pytest

import naive
from charrnn.config import ModelConfig
from charrnn.errors import CharrnnError, ConfigError, InputError
from charrnn.model.network import Model

V, H = 7, 5


def _cfg(**kw):
    base = dict(vocab_size=V, hidden_size=H, num_layers=2, dtype="float64")
    base.update(kw)
    return ModelConfig(**base)


def _xy(B, T, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


@pytest.mark.parametrize("cell,G", [("lstm", 4), ("gru", 3), ("rnn", 1)])
def test_layout_names_and_shapes(cell, G):
    m = Model.from_config(_cfg(cell=cell, embed_size=3), seed=0)
    expect = [("embedding.weight", (V, 3))]
    for k, inp in ((0, 3), (1, H)):
        expect += [(f"rnn.weight_ih_l{k}", (G * H, inp)), (f"rnn.weight_hh_l{k}", (G * H, H)),
                   (f"rnn.bias_ih_l{k}", (G * H,)), (f"rnn.bias_hh_l{k}", (G * H,))]
    expect += [("head.weight", (V, H)), ("head.bias", (V,))]
    assert m.param_names == [n for n, _ in expect]
    assert [m.params[n].shape for n in m.param_names] == [s for _, s in expect]
    assert m.num_params == sum(int(np.prod(s)) for _, s in expect) == m.flat.size
    assert m.flat.flags.c_contiguous and m.flat.ndim == 1 and m.grad_flat.shape == m.flat.shape
    for n in m.param_names:          # views, not copies
        assert np.shares_memory(m.params[n], m.flat)
        assert np.shares_memory(m.grads[n], m.grad_flat)
    m.flat[:] = np.arange(m.num_params)
    assert m.params["head.bias"][-1] == m.num_params - 1


def test_onehot_and_peephole_shapes():
    m = Model.from_config(_cfg(cell="lstm", peepholes=True), seed=0)
    assert m.params["rnn.weight_ih_l0"].shape == (4 * H, V)
    assert m.params["rnn.weight_peephole_l1"].shape == (3, H)
    assert "embedding.weight" not in m.params


def test_same_seed_bit_identical_and_init_ranges():
    a = Model.from_config(_cfg(embed_size=3), seed=42)
    b = Model.from_config(_cfg(embed_size=3), seed=42)
    c = Model.from_config(_cfg(embed_size=3), seed=43)
    assert a.flat.tobytes() == b.flat.tobytes()
    assert not np.array_equal(a.flat, c.flat)
    x, y = _xy(2, 3)
    assert a.loss_and_grad(x, y)[0] == b.loss_and_grad(x, y)[0]
    bound = 1 / np.sqrt(H)
    for n in a.param_names:
        if n != "embedding.weight":
            assert np.abs(a.params[n]).max() <= bound
    emb = Model.from_config(_cfg(embed_size=200, vocab_size=50), seed=1).params["embedding.weight"]
    assert abs(emb.std() - 1) < 0.05 and abs(emb.mean()) < 0.05
    f32 = Model.from_config(_cfg(embed_size=3, dtype="float32"), seed=42)
    assert f32.flat.dtype == np.float32
    np.testing.assert_array_equal(f32.flat, a.flat.astype(np.float32))


def test_initial_state_and_final_state_shapes():
    for cell, n in (("lstm", 2), ("gru", 1), ("rnn", 1)):
        m = Model.from_config(_cfg(cell=cell, num_layers=3), seed=0)
        st = m.initial_state(4)
        assert len(st) == n and all(s.shape == (3, 4, H) and not s.any() for s in st)
        x, y = _xy(4, 2)
        loss, final = m.forward_backward(x, y, st)
        assert len(final) == n and all(s.shape == (3, 4, H) for s in final)
        # the returned state is new memory: a later call does not change it
        keep = [s.copy() for s in final]
        m.forward_backward(*_xy(4, 2, seed=9), final)
        for a, b in zip(final, keep):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_chunks_equal_the_whole(cell):
    cfg = _cfg(cell=cell, num_layers=2, embed_size=3, residual=True,
               **({"peepholes": True} if cell == "lstm" else {}))
    m = Model.from_config(cfg, seed=1)
    x, y = _xy(2, 12, seed=5)
    logits_all, final_all = m.forward(x)
    lp_all, _ = m.log_probs(x, y)
    loss_all = m.forward_backward(x, y, train=False)[0]
    state = None
    acc = {n: np.zeros_like(p) for n, p in m.params.items()}
    ref_acc = {n: np.zeros_like(p) for n, p in m.params.items()}
    losses, logits, lps = [], [], []
    for c in range(3):
        xs, ys = x[:, 4 * c:4 * c + 4], y[:, 4 * c:4 * c + 4]
        logits.append(m.forward(xs, state)[0])
        lps.append(m.log_probs(xs, ys, state)[0])
        ref = naive.run(cfg, m.params, xs, ys, state)
        loss, new_state = m.forward_backward(xs, ys, state, train=False)
        losses.append(loss)
        for n in acc:
            acc[n] += m.grads[n]
            ref_acc[n] += ref["grads"][n]
        state = new_state
    np.testing.assert_allclose(np.concatenate(logits, axis=1), logits_all, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.concatenate(lps, axis=1), lp_all, rtol=1e-12, atol=1e-13)
    assert np.mean(losses) == pytest.approx(loss_all, rel=1e-12)
    for a, b in zip(state, final_all):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    for n in acc:   # truncated BPTT: the sum of the chunk gradients, no flow across chunks
        np.testing.assert_allclose(acc[n], ref_acc[n], rtol=1e-9, atol=1e-13, err_msg=n)


def test_forward_backward_zeroes_and_accumulates():
    m = Model.from_config(_cfg(), seed=0)
    x, y = _xy(3, 4)
    m.grad_flat[:] = 123.0
    m.forward_backward(x, y)
    first = m.grad_flat.copy()
    m.forward_backward(x, y)
    np.testing.assert_array_equal(m.grad_flat, first)
    _, g = m.loss_and_grad(x, y)
    for n in m.param_names:
        np.testing.assert_array_equal(g[n], m.grads[n])
        assert not np.shares_memory(g[n], m.grad_flat)


def test_loss_follows_parameter_updates():
    """One-hot input keeps a transposed copy of W_ih: it must follow in-place updates."""
    m = Model.from_config(_cfg(), seed=0)
    x, y = _xy(2, 3)
    before = m.loss_and_grad(x, y)[0]
    m.params["rnn.weight_ih_l0"][:] += 0.5
    after = m.loss_and_grad(x, y)[0]
    assert after != before
    assert after == pytest.approx(naive.run(m.config, m.params, x, y)["loss"], rel=1e-12)


def test_dropout_train_vs_eval_and_rng():
    m = Model.from_config(_cfg(num_layers=2, dropout=0.5), seed=0)
    x, y = _xy(4, 6)
    eval_loss = m.forward_backward(x, y, train=False)[0]
    a = m.forward_backward(x, y, train=True, rng=np.random.default_rng(1))[0]
    b = m.forward_backward(x, y, train=True, rng=np.random.default_rng(1))[0]
    c = m.forward_backward(x, y, train=True, rng=np.random.default_rng(2))[0]
    assert a == b and a != c and a != eval_loss
    assert m.loss_and_grad(x, y)[0] == eval_loss          # loss_and_grad: dropout off
    logits, _ = m.forward(x)
    lp, _ = m.log_probs(x, y)
    assert -lp.mean() == pytest.approx(eval_loss, rel=1e-12)
    assert logits.shape == (4, 6, V)
    with pytest.raises(ConfigError):
        m.forward_backward(x, y, train=True)
    masks = m.dropout_masks(4, 6, np.random.default_rng(0))
    assert len(masks) == 2 and masks[0].shape == (6, 4, H)
    assert set(np.unique(masks[0])) <= {0.0, 2.0}


def test_cast_round_trip():
    m = Model.from_config(_cfg(dtype="float32"), seed=0)
    m.vocab = object()
    d = m.cast("float64")
    assert d.config.dtype == "float64" and d.flat.dtype == np.float64 and d.vocab is m.vocab
    np.testing.assert_array_equal(d.flat, m.flat.astype(np.float64))
    assert not np.shares_memory(d.flat, m.flat)
    assert d.cast(np.float32).flat.tobytes() == m.flat.tobytes()


def test_shapes_change_between_calls():
    m = Model.from_config(_cfg(cell="gru"), seed=0)
    results = {}
    for B, T in [(2, 3), (5, 1), (1, 7), (2, 3)]:
        x, y = _xy(B, T, seed=B * 10 + T)
        loss = m.forward_backward(x, y, train=False)[0]
        ref = naive.run(m.config, m.params, x, y)["loss"]
        assert loss == pytest.approx(ref, rel=1e-12)
        results.setdefault((B, T), []).append(loss)
    assert results[(2, 3)][0] == results[(2, 3)][1]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("residual,embed", [(False, 0), (True, 0), (False, H), (False, 3)])
def test_layers_share_buffers_and_stay_exact(cell, residual, embed):
    """The layers share one packed-weight store, and without residual paths one dy/dx
    buffer wherever a layer's input is H wide; the gradients still match the naive
    reference (a layer writes dx_t over its dy_t only after reading it)."""
    m = Model.from_config(_cfg(cell=cell, num_layers=3, residual=residual,
                               embed_size=embed), seed=1)
    x, y = _xy(3, 4, seed=2)
    loss, g = m.loss_and_grad(x, y)
    ref = naive.run(m.config, m.params, x, y)
    assert loss == pytest.approx(ref["loss"], rel=1e-12)
    for name, want in ref["grads"].items():
        np.testing.assert_allclose(g[name], want, rtol=1e-9, atol=1e-12, err_msg=name)
    buf = m._buffers[(3, 4, 0)]
    stores = [ws.pack_store for ws in buf.layers]
    assert all(np.shares_memory(stores[0], s) for s in stores[1:])
    shared = [getattr(ws, "dx", None) is buf.dy for ws in buf.layers]
    assert shared == [(not residual and embed == H), not residual, not residual]


@pytest.mark.parametrize("cell,opts", [("lstm", {}), ("lstm", {"peepholes": True}),
                                       ("gru", {}), ("gru", {"gru_reset": "before"}),
                                       ("rnn", {"nonlinearity": "relu"})])
@pytest.mark.parametrize("embed,residual,dropout", [(0, False, 0.0), (4, True, 0.3),
                                                    (H, False, 0.2)])
@pytest.mark.parametrize("per_step", [True, False])
def test_recompute_equals_keeping_the_gates(cell, opts, embed, residual, dropout, per_step,
                                            monkeypatch):
    """recompute_steps = k keeps only h (and c) and rebuilds each chunk's gates in
    backward: the loss and final state are the same bits, the gradients agree to
    rounding (their sums run chunk by chunk; the same bits with one chunk), for chunks
    that do and do not divide T, rebuilt in blocks of steps, with the dense input
    products inside the time loop or once per chunk."""
    import charrnn.model.cells as C

    monkeypatch.setattr(C, "PER_STEP_BYTES", 1 << 40 if per_step else 0)
    monkeypatch.setattr(C, "RECOMPUTE_ROWS", 8)     # blocks of 2 steps of 4 rows
    cfg = _cfg(cell=cell, num_layers=3, embed_size=embed, residual=residual,
               dropout=dropout, **opts)
    m = Model.from_config(cfg, seed=3)
    rng = np.random.default_rng(1)
    x, y = _xy(4, 7, seed=1)
    st = tuple(0.5 * rng.standard_normal(s.shape) for s in m.initial_state(4))
    loss, final = m.forward_backward(x, y, st, train=True, rng=np.random.default_rng(5))
    grads = m.grad_flat.copy()
    for k in (1, 3, 7, 50):
        m.recompute_steps = k
        loss2, final2 = m.forward_backward(x, y, st, train=True, rng=np.random.default_rng(5))
        assert loss2 == loss
        assert all(np.array_equal(a, b) for a, b in zip(final, final2))
        np.testing.assert_allclose(m.grad_flat, grads, rtol=1e-12, atol=1e-15)
        if k >= 7:                  # one chunk: the rebuilt gates are the same bits
            assert np.array_equal(m.grad_flat, grads)
        ws = m._buffers[(4, 7, min(k, 7))].layers[1]
        assert ws.xp.shape[0] == min(k, 7)                 # gates of one chunk only
        lp, _ = m.log_probs(x, y, st)                      # eval in the same mode
        ref = naive.run(m.config, m.params, x, y, st)
        np.testing.assert_allclose(lp, ref["logp"], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cell,opts", [("lstm", {"peepholes": True}), ("gru", {}),
                                       ("gru", {"gru_reset": "before"}), ("rnn", {})])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_input_products_per_step_or_per_pass_are_the_same_bits(cell, opts, dtype,
                                                               monkeypatch):
    """Dense-input layers make x W_ih^T + b_ih and d(pre) W_ih inside the time loop or
    as one product per pass (charrnn.model.cells.PER_STEP_BYTES): the same numbers."""
    import charrnn.model.cells as C

    cfg = _cfg(cell=cell, num_layers=3, embed_size=4, residual=True, dtype=dtype, **opts)
    x, y = _xy(20, 6, seed=4)                 # 20 rows: both threads get rows
    out = []
    for limit in (0, 1 << 40):
        monkeypatch.setattr(C, "PER_STEP_BYTES", limit)
        m = Model.from_config(cfg, seed=2)
        assert m._layers[1].per_step_inputs(m.dtype) == bool(limit)
        loss, final = m.forward_backward(x, y, train=False)
        out.append((loss, m.grad_flat.copy(), final))
        # one product per pass: W_ih and W_hh take turns in one place of the store
        ws = m._buffers[(20, 6, 0)].layers[1]
        assert ws.seq_packs == (not limit)
        assert np.shares_memory(ws.pack_fwd["w_ih_t"], ws.pack_fwd["w_hh_t"]) == (not limit)
        assert np.shares_memory(ws.pack_bwd["w_ih"], ws.pack_bwd["w_hh"]) == (not limit)
    assert out[0][0] == out[1][0]
    assert np.array_equal(out[0][1], out[1][1])
    assert all(np.array_equal(a, b) for a, b in zip(out[0][2], out[1][2]))


@pytest.mark.parametrize("cell,opts", [("lstm", {}), ("gru", {"gru_reset": "before"}),
                                       ("rnn", {})])
def test_weight_gradients_go_straight_into_the_zeroed_gradient(cell, opts):
    """A training pass over all the steps writes each weight-gradient product straight
    into the gradient it zeroed (the scratch is never written, so never resident); the
    same bits as through the scratch, which recomputation still uses."""
    m = Model.from_config(_cfg(cell=cell, num_layers=2, embed_size=4, **opts), seed=4)
    x, y = _xy(3, 5, seed=6)
    m.forward_backward(x, y, train=False)
    buf = m._buffers[(3, 5, 0)]
    assert buf.dlogits is buf.logits                  # the loss writes its gradient over
    scratch = [ws.dw_hh for ws in buf.layers]
    for a in scratch:
        a.fill(np.nan)
    m.forward_backward(x, y, train=False)
    fresh = m.grad_flat.copy()
    assert all(np.isnan(a).all() for a in scratch)
    for layer in m._layers:                            # the other path, same numbers
        layer.run_backward = _not_fresh(layer.run_backward)
    m.forward_backward(x, y, train=False)
    assert not any(np.isnan(a).any() for a in scratch)
    assert np.array_equal(m.grad_flat, fresh)
    ref = naive.run(m.config, m.params, x, y)
    for name, want in ref["grads"].items():
        np.testing.assert_allclose(m.grads[name], want, rtol=1e-9, atol=1e-12, err_msg=name)


def _not_fresh(run_backward):
    def run(*args, **kw):
        kw["fresh"] = False
        return run_backward(*args, **kw)
    return run


def test_input_validation():
    m = Model.from_config(_cfg(), seed=0)
    x, y = _xy(2, 3)
    with pytest.raises(InputError, match="vocabulary"):
        m.forward_backward(np.full((2, 3), V), y)
    with pytest.raises(InputError, match="vocabulary"):
        m.log_probs(x, np.full((2, 3), -1))
    with pytest.raises(InputError, match="2-D"):
        m.forward(np.zeros(3, int))
    with pytest.raises(InputError, match="integers"):
        m.forward(np.zeros((2, 3)))
    with pytest.raises(InputError, match="differs"):
        m.forward_backward(x, y[:, :2])
    with pytest.raises(InputError, match="tuple of 2"):
        m.forward(x, (np.zeros((2, 2, H)),))
    with pytest.raises(InputError, match="shape"):
        m.forward(x, (np.zeros((2, 3, H)), np.zeros((2, 3, H))))
    with pytest.raises(ConfigError, match="vocab_size"):
        Model.from_config(ModelConfig(vocab_size=0))
    assert issubclass(InputError, CharrnnError)
