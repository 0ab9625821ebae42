"""Optimizers: numpy reference, torch.optim, clipping, weight decay, determinism, state."""
from __future__ import annotations

import json

import numpy as np
import pytest

from charrnn.config import TrainConfig
from charrnn.errors import CheckpointError, ConfigError
from charrnn.model.optim import Optimizer, grad_norm, make_optimizer

OPTS = ("adam", "adamw", "sgd", "rmsprop")
N = 8192 * 2 + 37          # spans three chunks of the norm kernel


def _cfg(opt, **kw):
    base = dict(optimizer=opt, lr=1e-2, clip=1.0, clip_value=0.0, weight_decay=0.0,
                momentum=0.9, rmsprop_alpha=0.95, beta1=0.9, beta2=0.999, eps=1e-8)
    base.update(kw)
    return TrainConfig(**base)


def _data(n, dtype, steps, seed=0, gscale=0.05):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)                                    # (n,)
    gs = [(rng.standard_normal(n) * gscale).astype(dtype) for _ in range(steps)]  # steps x (n,)
    return p, gs


class RefOptimizer:
    """Plain-numpy float64 transcription of the documented formulas."""

    def __init__(self, cfg, n):
        self.cfg, self.t = cfg, 0
        self.m = np.zeros(n)   # (n,)
        self.v = np.zeros(n)   # (n,)

    def step(self, p, g, lr):
        c = self.cfg
        g = g.astype(np.float64)
        norm = float(np.sqrt(np.sum(g * g)))
        if c.clip > 0 and norm > c.clip:
            g = g * (c.clip / (norm + 1e-6))
        if c.clip_value > 0:
            g = np.clip(g, -c.clip_value, c.clip_value)
        self.t += 1
        t, wd = self.t, c.weight_decay
        if c.optimizer == "adamw":
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        if c.optimizer in ("adam", "adamw"):
            self.m = c.beta1 * self.m + (1 - c.beta1) * g
            self.v = c.beta2 * self.v + (1 - c.beta2) * g * g
            mhat = self.m / (1 - c.beta1 ** t)
            denom = np.sqrt(self.v) / np.sqrt(1 - c.beta2 ** t) + c.eps
            p = p - lr * mhat / denom
        elif c.optimizer == "sgd":
            if c.momentum > 0:
                self.m = c.momentum * self.m + g
                g = self.m
            p = p - lr * g
        else:
            self.v = c.rmsprop_alpha * self.v + (1 - c.rmsprop_alpha) * g * g
            p = p - lr * g / (np.sqrt(self.v) + c.eps)
        return p, norm


def _run_ours(cfg, p0, gs, lrs):
    p = p0.copy()
    opt = make_optimizer(cfg, p.size, p.dtype)
    norms = [opt.step(p, g, lr) for g, lr in zip(gs, lrs)]
    return p, norms, opt


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("opt", OPTS)
def test_matches_numpy_reference(opt, dtype):
    cfg = _cfg(opt, weight_decay=0.01, clip=20.0)
    p0, gs = _data(N, dtype, 3, seed=1)
    gs[1] *= 100.0                   # this step is clipped, the others are not
    lrs = [1e-2, 5e-3, 2e-3]
    p, norms, opt_obj = _run_ours(cfg, p0, gs, lrs)
    ref = RefOptimizer(cfg, N)
    q = p0.astype(np.float64)
    ref_norms = []
    for g, lr in zip(gs, lrs):
        q, nrm = ref.step(q, g, lr)
        ref_norms.append(nrm)
    assert opt_obj.step_count == 3
    assert p.dtype == dtype
    tight = dtype == np.float64
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-12 if tight else 1e-6)
    assert norms[1] > cfg.clip > norms[0]
    np.testing.assert_allclose(p, q, rtol=1e-10 if tight else 1e-5,
                               atol=1e-12 if tight else 1e-6)


def _torch_run(torch, opt, cfg, p0, gs, lrs):
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    if opt == "adam":
        o = torch.optim.Adam([tp], lr=lrs[0], betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             weight_decay=cfg.weight_decay)
    elif opt == "adamw":
        o = torch.optim.AdamW([tp], lr=lrs[0], betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                              weight_decay=cfg.weight_decay)
    elif opt == "sgd":
        o = torch.optim.SGD([tp], lr=lrs[0], momentum=cfg.momentum,
                            weight_decay=cfg.weight_decay)
    else:
        o = torch.optim.RMSprop([tp], lr=lrs[0], alpha=cfg.rmsprop_alpha, eps=cfg.eps,
                                weight_decay=cfg.weight_decay)
    norms = []
    for g, lr in zip(gs, lrs):
        for group in o.param_groups:
            group["lr"] = lr
        tp.grad = torch.from_numpy(g.copy())
        norms.append(float(torch.nn.utils.clip_grad_norm_([tp], max_norm=cfg.clip)))
        if cfg.clip_value > 0:
            torch.nn.utils.clip_grad_value_([tp], cfg.clip_value)
        o.step()
    return tp.detach().numpy(), norms


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("opt", OPTS)
def test_matches_torch_optim(opt, dtype):
    torch = pytest.importorskip("torch", reason="torch is needed to compare with torch.optim")
    cfg = _cfg(opt, weight_decay=0.05, clip=20.0, clip_value=0.1)
    p0, gs = _data(N, dtype, 4, seed=2)
    gs[2] *= 50.0                    # only this step is clipped by norm
    lrs = [3e-3, 1e-2, 1e-2, 4e-3]
    ours, norms = _run_ours(cfg, p0, gs, lrs)[:2]
    theirs, tnorms = _torch_run(torch, opt, cfg, p0, gs, lrs)
    tight = dtype == np.float64
    np.testing.assert_allclose(norms, tnorms, rtol=1e-10 if tight else 1e-5)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9 if tight else 1e-5,
                               atol=1e-12 if tight else 1e-6)


def test_weight_decay_adamw_is_decoupled_and_adam_is_l2():
    p0 = np.linspace(-1, 1, 11)          # (11,)
    g = np.zeros(11)                     # (11,)
    p = p0.copy()
    make_optimizer(_cfg("adamw", weight_decay=0.1), 11, np.float64).step(p, g, 0.5)
    np.testing.assert_allclose(p, p0 * (1 - 0.5 * 0.1), rtol=0, atol=1e-15)
    # adam: the decay goes through the moments: first step moves by ~lr*sign(p)
    p = p0.copy()
    make_optimizer(_cfg("adam", weight_decay=0.1), 11, np.float64).step(p, g, 0.01)
    nz = p0 != 0
    np.testing.assert_allclose(p[nz], p0[nz] - 0.01 * np.sign(p0[nz]), rtol=1e-6)
    # sgd without momentum: p - lr*(g + wd*p)
    p = p0.copy()
    g2 = np.full(11, 0.2)
    make_optimizer(_cfg("sgd", momentum=0.0, weight_decay=0.1, clip=0.0), 11,
                   np.float64).step(p, g2, 0.5)
    np.testing.assert_allclose(p, p0 - 0.5 * (g2 + 0.1 * p0), rtol=0, atol=1e-15)


def test_clip_by_value_and_clip_off():
    g = np.array([-3.0, -0.1, 0.0, 0.2, 7.0])   # (5,)
    p = np.zeros(5)                              # (5,)
    cfg = _cfg("sgd", momentum=0.0, clip=0.0, clip_value=0.5)
    norm = make_optimizer(cfg, 5, np.float64).step(p, g, 1.0)
    assert norm == pytest.approx(np.sqrt(np.sum(g * g)))
    np.testing.assert_array_equal(p, -np.clip(g, -0.5, 0.5))
    # clip=0: no norm clipping even for a huge gradient
    p = np.zeros(5)
    make_optimizer(_cfg("sgd", momentum=0.0, clip=0.0), 5, np.float64).step(p, g * 1e3, 1.0)
    np.testing.assert_array_equal(p, -g * 1e3)
    # clip=1: the update has norm 1/(1+1e-6)*|g|/|g|
    p = np.zeros(5)
    make_optimizer(_cfg("sgd", momentum=0.0, clip=1.0), 5, np.float64).step(p, g, 1.0)
    assert np.linalg.norm(p) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("opt", OPTS)
def test_bit_identical_for_one_and_two_threads(opt):
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here")
    rng = np.random.default_rng(7)
    before = numba.get_num_threads()
    try:
        for dtype in (np.float32, np.float64):
            g = (rng.standard_normal(8192 * 5 + 3) * 10).astype(dtype)   # (n,)
            cfg = _cfg(opt, weight_decay=0.01, clip_value=5.0, clip=50.0)
            numba.set_num_threads(1)
            n1 = grad_norm(g)
            p1, _, _ = _run_ours(cfg, g * 0.5, [g, g * 0.3], [1e-3, 2e-3])
            numba.set_num_threads(2)
            n2 = grad_norm(g)
            p2, _, _ = _run_ours(cfg, g * 0.5, [g, g * 0.3], [1e-3, 2e-3])
            assert n1 == n2           # bit-identical, not approximately equal
            np.testing.assert_array_equal(p1, p2)
            assert n1 == pytest.approx(float(np.linalg.norm(g.astype(np.float64))), rel=1e-12)
    finally:
        numba.set_num_threads(before)


def test_grad_norm_edge_cases():
    assert grad_norm(np.zeros(0, np.float32)) == 0.0
    assert grad_norm(np.array([3.0, 4.0])) == 5.0
    with pytest.raises(ConfigError, match="1-D"):
        grad_norm(np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="float32 or float64"):
        grad_norm(np.zeros(3, np.int64))


def test_nan_gradient_is_not_skipped():
    p = np.ones(4)
    g = np.array([1.0, np.nan, 0.0, 0.0])
    norm = make_optimizer(_cfg("adam"), 4, np.float64).step(p, g, 1e-3)
    assert np.isnan(norm)
    assert np.isnan(p).any()


@pytest.mark.parametrize("opt", OPTS)
def test_state_round_trip_resumes_exactly(opt):
    cfg = _cfg(opt, weight_decay=0.01)
    p0, gs = _data(300, np.float32, 5, seed=3)
    p_a, _, full = _run_ours(cfg, p0, gs, [1e-2] * 5)
    p_b, _, first = _run_ours(cfg, p0, gs[:2], [1e-2] * 2)
    meta = json.loads(json.dumps(first.state_dict()))
    tensors = {k: v.copy() for k, v in first.state_tensors().items()}
    tensors["head.weight"] = np.zeros(3, np.float32)   # other entries are ignored
    second = Optimizer(cfg, 300, "float32")
    second.load_state(tensors, meta)
    assert second.step_count == 2
    for g in gs[2:]:
        second.step(p_b, g, 1e-2)
    np.testing.assert_array_equal(p_a, p_b)
    expected = {"adam": {"optim.exp_avg", "optim.exp_avg_sq"},
                "adamw": {"optim.exp_avg", "optim.exp_avg_sq"},
                "sgd": {"optim.momentum_buffer"}, "rmsprop": {"optim.square_avg"}}[opt]
    assert set(full.state_tensors()) == expected
    assert meta["name"] == opt and meta["step_count"] == 2


def test_sgd_without_momentum_has_no_state():
    o = make_optimizer(_cfg("sgd", momentum=0.0), 10, "float64")
    assert o.state_tensors() == {}
    o.load_state({}, {"name": "sgd", "step_count": 4})
    assert o.step_count == 4


def test_load_state_rejects_mismatches():
    o = make_optimizer(_cfg("adam"), 10, "float32")
    good = {"optim.exp_avg": np.zeros(10, np.float32), "optim.exp_avg_sq": np.zeros(10, np.float32)}
    meta = o.state_dict()
    with pytest.raises(CheckpointError, match="'sgd' but this run uses 'adam'"):
        o.load_state(good, dict(meta, name="sgd"))
    with pytest.raises(CheckpointError, match="lacks tensor"):
        o.load_state({"optim.exp_avg": good["optim.exp_avg"]}, meta)
    with pytest.raises(CheckpointError, match="shape"):
        o.load_state(dict(good, **{"optim.exp_avg": np.zeros(11, np.float32)}), meta)
    with pytest.raises(CheckpointError, match="unexpected"):
        o.load_state(dict(good, **{"optim.square_avg": np.zeros(10, np.float32)}), meta)
    with pytest.raises(CheckpointError, match="step_count"):
        o.load_state(good, dict(meta, step_count=-1))
    with pytest.raises(CheckpointError, match="parameters"):
        o.load_state(good, dict(meta, n_params=11))
    assert o.step_count == 0            # nothing was half-loaded


def test_step_validates_buffers():
    o = make_optimizer(_cfg("adam"), 10, "float32")
    p = np.zeros(10, np.float32)
    with pytest.raises(ConfigError, match="dtype float64, expected float32"):
        o.step(p, np.zeros(10), 1e-3)
    with pytest.raises(ConfigError, match="11 elements, expected 10"):
        o.step(p, np.zeros(11, np.float32), 1e-3)
    with pytest.raises(ConfigError, match="contiguous"):
        o.step(p, np.zeros(20, np.float32)[::2], 1e-3)
    with pytest.raises(ConfigError, match="learning rate"):
        o.step(p, np.zeros(10, np.float32), float("nan"))
    with pytest.raises(ConfigError, match="different buffers"):
        o.step(p, p, 1e-3)
    with pytest.raises(ConfigError, match="float32 or float64"):
        make_optimizer(_cfg("adam"), 10, "float16")
    assert o.step_count == 0


def test_optimizer_from_model_like_object():
    class Stub:
        num_params = 6

        class config:
            dtype = "float64"

    o = Optimizer(_cfg("rmsprop"), Stub())
    assert o.n_params == 6 and o.dtype == np.float64
    assert o.state_tensors()["optim.square_avg"].dtype == np.float64
