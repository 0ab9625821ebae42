"""Reduced-precision weights (``sample --weights``, ``eval --weights``): int8 and bfloat16
quantization and its bounds, the row products against numpy, sampling (float32 as
before, int8/bf16 deterministic and independent of chunking, streams and threads),
scoring through the sampler's kernel, and the command line in real subprocesses."""
from __future__ import annotations

import json

import numpy as np
import pytest

from charrnn.config import ModelConfig
from charrnn.kernels import quant as Q
from charrnn.kernels.modes import Precision, Product
from charrnn.model.network import Model
from charrnn.sampling import Sampler, sample_text
from charrnn.sampling.reduced import ReducedModel, reduced_model
from charrnn.store.checkpoint import save_model
from charrnn.store.vocab import Vocab
from tests.conftest import make_text, run_cli

TEXT = "hello world, the quick brown fox.\nAnd more lines here!\n"
NOTICE = "charrnn: compiling numerical kernels"


def _model(cell="lstm", dtype="float32", L=2, H=8, seed=1, text=TEXT, **kw):
    v = Vocab.from_text(text)
    m = Model.from_config(ModelConfig(cell=cell, vocab_size=len(v), hidden_size=H,
                                      num_layers=L, dtype=dtype, **kw), seed)
    m.vocab = v
    return m


def _stderr(res) -> str:
    """stderr without the one-time compilation notice of a cold numba cache."""
    return "\n".join(ln for ln in res.stderr.splitlines() if not ln.startswith(NOTICE))


# ---------------------------------------------------------------------- quantization

def test_int8_round_trip_is_within_half_a_step():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 96)).astype(np.float32) * rng.uniform(1e-3, 10, (40, 1))
    w[3] = 0                                                   # a row of zeros
    w[5, 7] = -50                                              # one large weight
    q, s = Q.quantize_int8(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (40,)
    assert q.min() >= -127 and s[3] == 0 and not q[3].any()
    nz = np.arange(40) != 3
    assert (np.abs(q[nz]).max(axis=1) == 127).all()           # each row uses its range
    back = np.empty_like(w)
    Q.dequantize(Precision.INT8, q, s, back)
    np.testing.assert_array_equal(back, q.astype(np.float32) * s[:, None])
    err = np.abs(back.astype(np.float64) - w)
    assert (err <= s[:, None] * (0.5 + 1e-6) + 1e-30).all()


def test_bf16_rounds_to_nearest_even_and_keeps_specials():
    rng = np.random.default_rng(1)
    w = (rng.standard_normal(5000) * 10.0 ** rng.integers(-30, 30, 5000)).astype(np.float32)
    b = Q.quantize_bf16(w)
    back = np.empty((1, w.size), np.float32)
    Q.dequantize(Precision.BF16, b[None], np.ones(1, np.float32), back)
    np.testing.assert_array_equal(back[0], (b.astype(np.uint32) << 16).view(np.float32))
    assert (np.abs(back[0] - w) <= np.abs(w) * 2.0 ** -8).all()
    # ties go to the even pattern; exact values stay; inf and NaN survive
    bits = np.array([0x3F808000, 0x3F818000, 0x3F800001, 0x3F80FFFF], np.uint32)
    assert Q.quantize_bf16(bits.view(np.float32)).tolist() == [0x3F80, 0x3F82, 0x3F80, 0x3F81]
    special = np.array([1.0, -2.5, np.inf, -np.inf, np.nan, 0.0], np.float32)
    out = (Q.quantize_bf16(special).astype(np.uint32) << 16).view(np.float32)
    assert out[:4].tolist() == [1.0, -2.5, np.inf, -np.inf] and np.isnan(out[4])


@pytest.mark.parametrize("prec", [Precision.INT8, Precision.BF16, Precision.FLOAT])
@pytest.mark.parametrize("N", [1, 3])
def test_row_products_equal_numpy_with_the_dequantized_weights(prec, N):
    rng = np.random.default_rng(2)
    R, C = 300, 200                       # R * C > PARALLEL_MIN: two threads share rows
    assert R * C >= Q.PARALLEL_MIN
    w = rng.standard_normal((R, C)).astype(np.float32)
    if prec == Precision.INT8:
        q, s = Q.quantize_int8(w)
    elif prec == Precision.BF16:
        q, s = Q.quantize_bf16(w), np.ones(R, np.float32)
    else:
        q, s = w, np.ones(R, np.float32)
    deq = np.empty((R, C), np.float32)
    Q.dequantize(prec, q, s, deq)
    X = rng.standard_normal((N, C)).astype(np.float32)
    ref = X.astype(np.float64) @ deq.T.astype(np.float64)
    outs = []
    for nth in (1, 2):
        Y = np.empty((N, R), np.float32)
        Q.rows_product(prec, nth, q, s, X, Y)
        np.testing.assert_allclose(Y, ref, rtol=1e-5, atol=1e-4)
        outs.append(Y)
    np.testing.assert_array_equal(outs[0], outs[1])          # threads change nothing
    one = np.empty((1, R), np.float32)
    Q.rows_product(prec, 1, q, s, X[:1], one)
    np.testing.assert_allclose(one[0], outs[0][0], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- sampling

def test_float32_weights_are_the_default_bit_for_bit():
    for cell, kw in (("lstm", {}), ("gru", dict(gru_reset="before"))):
        m = _model(cell, **kw)
        for N in (1, 5):
            a = Sampler(m, N, seed=7)
            b = Sampler(m, N, seed=7, weights="float32")
            assert a.product == b.product
            ia, la = a.generate(60)
            ib, lb = b.generate(60)
            np.testing.assert_array_equal(ia, ib)
            np.testing.assert_array_equal(la, lb)


@pytest.mark.parametrize("weights", ["int8", "bf16"])
def test_reduced_sampling_is_deterministic_and_chunk_free(weights):
    m = _model(H=16)
    ids, lp = Sampler(m, 1, seed=3, weights=weights).generate(80)
    again = Sampler(m, 1, seed=3, weights=weights)
    parts = [again.generate(k) for k in (1, 7, 40, 32)]
    np.testing.assert_array_equal(ids, np.concatenate([p[0] for p in parts], axis=1))
    np.testing.assert_array_equal(lp, np.concatenate([p[1] for p in parts], axis=1))
    three = Sampler(m, 3, seed=3, weights=weights).generate(80)[0]
    np.testing.assert_array_equal(three[0], ids[0])          # stream 0 whatever N


@pytest.mark.parametrize("cell,kw", [("lstm", dict(peepholes=True)), ("gru", {}),
                                     ("gru", dict(gru_reset="before")),
                                     ("rnn", dict(residual=True, embed_size=3))])
@pytest.mark.parametrize("weights", ["int8", "bf16"])
def test_reduced_scores_equal_the_forward_pass_with_dequantized_weights(cell, kw, weights):
    """The kernel with reduced weights computes the model whose matrices are the
    dequantized ones (float64 model: every other number exact)."""
    m = _model(cell, dtype="float64", L=3, H=12, **kw)
    ref = Model(m.config, m.flat.copy())
    prec = Precision.of(weights)
    names = [n for n in m.params if n.startswith("rnn.weight_hh_l") or n == "head.weight"
             or (n.startswith("rnn.weight_ih_l") and not n.endswith("_l0"))]
    for n in names:
        w = m.params[n]
        q, s = Q.quantize_int8(w) if prec == Precision.INT8 else \
            (Q.quantize_bf16(w), np.ones(w.shape[0], np.float32))
        deq = np.empty(w.shape, np.float64)
        Q.dequantize(prec, q, s, deq)
        ref.params[n][...] = deq
    seq = np.random.default_rng(4).integers(0, m.config.vocab_size, (3, 20))
    want, _ = ref.log_probs(seq[:, :-1], seq[:, 1:])
    got = Sampler(m, 3, weights=weights).score_streams(seq)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_reduced_model_log_probs_targets_state_and_windows():
    m = _model(H=16)
    rm = ReducedModel(m, "bf16")
    rng = np.random.default_rng(5)
    V = m.config.vocab_size
    x, y = rng.integers(0, V, (4, 30)), rng.integers(0, V, (4, 30))  # y not x shifted
    lp, st = rm.log_probs(x, y)
    ref, rst = m.log_probs(x, y)
    assert lp.shape == (4, 30)
    np.testing.assert_allclose(lp, ref, atol=0.02)
    np.testing.assert_allclose(st[0], rst[0], atol=0.02)
    a, s1 = rm.log_probs(x[:, :11], y[:, :11])               # windows carry the state
    b, _ = rm.log_probs(x[:, 11:], y[:, 11:], s1)
    np.testing.assert_array_equal(np.concatenate([a, b], axis=1), lp)
    assert reduced_model(m, "float32") is m


def _trained(steps=150, H=48):
    """A small LSTM trained briefly (plain Adam in numpy) on English-like text."""
    text = make_text(6000, seed=2)
    m = _model(dtype="float32", H=H, seed=0, text=text)
    ids = m.vocab.encode(text, what="text").astype(np.int64)
    rng = np.random.default_rng(0)
    mom, vel = np.zeros_like(m.flat), np.zeros_like(m.flat)
    for t in range(1, steps + 1):
        starts = rng.integers(0, len(ids) - 33, 16)
        x = np.stack([ids[s:s + 32] for s in starts])
        y = np.stack([ids[s + 1:s + 33] for s in starts])
        m.forward_backward(x, y, train=False)
        g = np.clip(m.grad_flat, -5, 5)
        mom[:] = 0.9 * mom + 0.1 * g
        vel[:] = 0.999 * vel + 0.001 * g * g
        m.flat -= 0.01 * (mom / (1 - 0.9 ** t)) / (np.sqrt(vel / (1 - 0.999 ** t)) + 1e-8)
    return m, make_text(3000, seed=9)


def test_eval_bpc_with_int8_and_bf16_close_to_float32():
    from charrnn.evaluate import evaluate_text

    m, held_out = _trained()
    f32 = evaluate_text(m, held_out).bpc
    assert f32 < 3.0                                         # it learned something
    for weights, tol in (("int8", 0.02), ("bf16", 0.02)):
        bpc = evaluate_text(ReducedModel(m, weights), held_out).bpc
        assert abs(bpc - f32) < tol, (weights, bpc, f32)


def test_non_finite_weights_cannot_be_reduced():
    from charrnn.errors import CheckpointError

    m = _model()
    m.params["rnn.weight_hh_l1"][0, 0] = np.nan
    with pytest.raises(CheckpointError, match="not all finite"):
        Sampler(m, 1, weights="int8")
    from charrnn.errors import ConfigError
    with pytest.raises(ConfigError, match="weights must be one of"):
        Sampler(_model(), 1, weights="int4")


def test_reduced_products_take_row_dots():
    m = _model(H=16)
    assert Sampler(m, 1, weights="int8").product == Product.THREADS
    assert Sampler(m, 9, weights="bf16").groups >= 1
    texts = sample_text(m, 40, num_samples=2, seed=1, weights="int8")
    assert [len(r.text) for r in texts] == [40, 40]


# ---------------------------------------------------------------------- command line

@pytest.fixture
def ckpt(tmp_path):
    p = tmp_path / "m.safetensors"
    save_model(p, _model(H=16))
    return p


def test_cli_sample_int8_is_deterministic_and_float32_is_the_default(ckpt):
    a = run_cli("sample", ckpt, "--weights", "int8", "-n", "50", "--seed", "1", "--no-echo")
    assert a.returncode == 0 and _stderr(a) == "", a.stderr
    assert len(a.stdout) == 50
    b = run_cli("sample", ckpt, "--weights", "int8", "-n", "50", "--seed", "1", "--no-echo")
    assert b.stdout == a.stdout
    f = run_cli("sample", ckpt, "--weights", "float32", "-n", "50", "--seed", "1")
    d = run_cli("sample", ckpt, "-n", "50", "--seed", "1")
    assert f.returncode == d.returncode == 0 and f.stdout == d.stdout
    beam = run_cli("sample", ckpt, "--weights", "bf16", "--beam", "3", "-n", "20", "--json")
    assert beam.returncode == 0, beam.stderr
    assert len([json.loads(ln) for ln in beam.stdout.splitlines()]) == 3


def test_cli_eval_bf16_and_a_bad_value(ckpt, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(TEXT * 3, encoding="utf-8")
    ref = run_cli("eval", ckpt, f, "--json")
    got = run_cli("eval", ckpt, f, "--json", "--weights", "bf16")
    assert ref.returncode == got.returncode == 0, got.stderr
    r, g = json.loads(ref.stdout), json.loads(got.stdout)
    assert g["chars"] == r["chars"] and abs(g["bpc"] - r["bpc"]) < 0.02
    bad = run_cli("eval", ckpt, f, "--weights", "int4")
    assert bad.returncode == 2 and bad.stdout == ""
    assert "Invalid value for '--weights'" in bad.stderr
    bad = run_cli("sample", ckpt, "--weights", "fp16")
    assert bad.returncode == 2 and "Invalid value for '--weights'" in bad.stderr


def test_thread_tuner_pieces_change_no_number():
    """One stream's steps run in pieces on 2 threads or 1, whichever is faster: the
    same characters and log-probabilities as one call on one thread."""
    from charrnn.sampling.tuning import PROBE, ThreadTuner

    m = _model(H=256, L=1)                   # W_hh 1024 x 256: rows shared by threads
    for weights in ("int8", "float32"):
        kw = dict(weights=weights) if weights != "float32" else dict(product=Product.THREADS)
        tuned = Sampler(m, 1, seed=2, **kw)
        if tuned.tuner is None:              # a one-core machine
            tuned.tuner = ThreadTuner(2)
        plain = Sampler(m, 1, seed=2, **kw)
        plain.tuner, plain.threads = None, 1
        a, b = tuned.generate(300), plain.generate(300)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert set(tuned.tuner.cost) == {2, 1} and PROBE < 300
        seq = a[0]
        np.testing.assert_array_equal(tuned.score_streams(seq), plain.score_streams(seq))
