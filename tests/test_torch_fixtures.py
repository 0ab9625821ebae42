"""PyTorch parity on every run, without PyTorch: charrnn against stored torch results.

tests/fixtures/torch_parity.npz holds what PyTorch computed (in float64) for tiny models
and optimizer runs; tests/make_torch_fixtures.py wrote it, with torch installed:

* model cases, every cell (LSTM, GRU with the reset gate after the recurrent product,
  RNN tanh and relu) x 1 and 2 layers x one-hot input and an embedding, all with biases:
  the weights, inputs, targets and initial states (the fixture's own), and torch's
  logits, mean cross-entropy loss, final states and the gradient of the loss with
  respect to every parameter (nn.LSTM/GRU/RNN + nn.Embedding + nn.Linear);
* optimizer cases, adam, adamw, sgd (momentum) and rmsprop, each with clipping and weight
  decay off and with them on (clip by norm and by value, other betas, eps, momentum and
  alpha): the parameters after every step of torch.optim (+ clip_grad_norm_ /
  clip_grad_value_) from given gradients and learning rates, and the gradient norms.

The tests here build charrnn's side from those arrays and compare, so a change to
charrnn's math fails `make test` even where torch is not installed.  The live comparisons
(tests/test_torch_parity.py, tests/test_optim.py) still run where torch is.

The case names and their settings are defined HERE (the generator imports them): the file
must hold exactly these cases, so an empty, partial or stale fixture fails.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from charrnn.config import ModelConfig, TrainConfig
from charrnn.model.network import Model
from charrnn.model.optim import make_optimizer

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "torch_parity.npz"
FORMAT = 1

# sizes of every model case: vocabulary, embedding, hidden, batch, time steps
V, E, H, B, T = 7, 5, 6, 3, 4

CELLS = {
    "lstm": dict(cell="lstm"),
    "gru": dict(cell="gru", gru_reset="after"),
    "rnn_tanh": dict(cell="rnn", nonlinearity="tanh"),
    "rnn_relu": dict(cell="rnn", nonlinearity="relu"),
}
INPUTS = {"onehot": 0, "embed": E}


def _model_cases() -> dict[str, dict]:
    cases = {}
    for cname, cell in CELLS.items():
        for layers in (1, 2):
            for iname, embed in INPUTS.items():
                cases[f"{cname}-L{layers}-{iname}"] = dict(
                    cell, vocab_size=V, hidden_size=H, num_layers=layers, embed_size=embed)
    return cases


#: case name -> ModelConfig keywords (dtype aside)
MODEL_CASES = _model_cases()

OPTS = ("adam", "adamw", "sgd", "rmsprop")
N_PARAMS, N_STEPS = 37, 5
LRS = (3e-3, 1e-2, 1e-2, 4e-3, 2e-2)
BIG_STEP = 2            # its gradient is 50x the others: clipped where clipping is on
#: "plain": no clipping, no weight decay, charrnn's defaults (RMSProp alpha 0.95, eps 1e-8);
#: "clip_wd": clip by norm (1.0) and by value (0.1), weight decay, and other values of
#: every hyperparameter, with a large eps so that where it is added shows.
OPTIM_VARIANTS = {
    "plain": dict(clip=0.0, clip_value=0.0, weight_decay=0.0, beta1=0.9, beta2=0.999,
                  eps=1e-8, momentum=0.9, rmsprop_alpha=0.95),
    "clip_wd": dict(clip=1.0, clip_value=0.1, weight_decay=0.05, beta1=0.8, beta2=0.99,
                    eps=1e-3, momentum=0.7, rmsprop_alpha=0.9),
}


def _optim_cases() -> dict[str, dict]:
    return {f"{opt}-{vname}": dict(v, optimizer=opt)
            for opt in OPTS for vname, v in OPTIM_VARIANTS.items()}


#: case name -> TrainConfig keywords
OPTIM_CASES = _optim_cases()


def param_names(case: str) -> list[str]:
    """PyTorch's parameter names of a model case, in nn.Module order."""
    c = MODEL_CASES[case]
    names = ["embedding.weight"] if c["embed_size"] else []
    for k in range(c["num_layers"]):
        names += [f"rnn.{w}_l{k}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    return names + ["head.weight", "head.bias"]


def param_shapes(case: str) -> dict[str, tuple[int, ...]]:
    c = MODEL_CASES[case]
    G = {"lstm": 4, "gru": 3, "rnn": 1}[c["cell"]]
    shapes = {}
    for name in param_names(case):
        if name == "embedding.weight":
            shapes[name] = (V, E)
        elif name.startswith("rnn.weight_ih_l"):
            k = int(name.rsplit("_l", 1)[1])
            shapes[name] = (G * H, (c["embed_size"] or V) if k == 0 else H)
        elif name.startswith("rnn.weight_hh_l"):
            shapes[name] = (G * H, H)
        elif name.startswith("rnn.bias"):
            shapes[name] = (G * H,)
        elif name == "head.weight":
            shapes[name] = (V, H)
        else:
            shapes[name] = (V,)
    return shapes


def state_names(case: str) -> tuple[str, ...]:
    return ("h", "c") if MODEL_CASES[case]["cell"] == "lstm" else ("h",)


def expected_arrays() -> dict[str, tuple[tuple[int, ...], str]]:
    """Every array the fixture must hold (besides ``meta``): name -> (shape, dtype)."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for case, c in MODEL_CASES.items():
        L = c["num_layers"]
        out[f"{case}/x"] = ((B, T), "int64")
        out[f"{case}/y"] = ((B, T), "int64")
        for s in state_names(case):
            out[f"{case}/{s}0"] = ((L, B, H), "float64")
            out[f"{case}/{s}_final"] = ((L, B, H), "float64")
        out[f"{case}/logits"] = ((B, T, V), "float64")
        out[f"{case}/loss"] = ((), "float64")
        for name, shape in param_shapes(case).items():
            out[f"{case}/param/{name}"] = (shape, "float64")
            out[f"{case}/grad/{name}"] = (shape, "float64")
    for case in OPTIM_CASES:
        out[f"{case}/p0"] = ((N_PARAMS,), "float64")
        out[f"{case}/grads"] = ((N_STEPS, N_PARAMS), "float64")
        out[f"{case}/lrs"] = ((N_STEPS,), "float64")
        out[f"{case}/norms"] = ((N_STEPS,), "float64")
        out[f"{case}/params"] = ((N_STEPS, N_PARAMS), "float64")
    return out


def checksum(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every array but ``meta``: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for key in sorted(k for k in arrays if k != "meta"):
        a = np.asarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def load_fixture(path: Path = FIXTURE) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of the fixture file; pytest.fail (never skip) if it is missing."""
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `python tests/make_torch_fixtures.py` with torch "
                    f"installed and commit it")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if "meta" not in arrays:
        pytest.fail(f"{path} has no 'meta' entry")
    return json.loads(str(arrays["meta"])), arrays


@pytest.fixture(scope="module")
def fx():
    return load_fixture()


# ---------------------------------------------------------------------------- integrity
def test_fixture_holds_every_case_and_nothing_else(fx):
    meta, arrays = fx
    assert meta["format"] == FORMAT
    assert meta["sizes"] == dict(V=V, E=E, H=H, B=B, T=T)
    assert meta["model_cases"] == MODEL_CASES
    assert meta["optim_cases"] == OPTIM_CASES
    assert meta["optim_sizes"] == dict(n=N_PARAMS, steps=N_STEPS)
    assert meta["torch_version"]
    for case in MODEL_CASES:
        assert meta["param_names"][case] == param_names(case), case
    want = expected_arrays()
    have = set(arrays) - {"meta"}
    assert sorted(set(want) - have) == [], "missing from the fixture"
    assert sorted(have - set(want)) == [], "unexpected in the fixture"
    for key, (shape, dtype) in want.items():
        a = arrays[key]
        assert a.shape == shape and a.dtype == np.dtype(dtype), (key, a.shape, a.dtype)
        assert np.all(np.isfinite(a)), key
    assert meta["sha256"] == checksum(arrays), "fixture arrays changed after they were written"


def test_fixture_cases_are_not_degenerate(fx):
    """Each case exercises what it claims: every gradient is non-zero, states move, the
    loss is plausible, the relu cells end with some units cut to 0 and some not, the
    inputs hold every symbol, and exactly the big step is clipped by norm."""
    meta, a = fx
    for case in MODEL_CASES:
        for name in param_names(case):
            assert np.abs(a[f"{case}/grad/{name}"]).max() > 1e-6, (case, name)
            assert np.abs(a[f"{case}/param/{name}"]).max() > 0.1, (case, name)
        for s in state_names(case):
            assert np.abs(a[f"{case}/{s}_final"] - a[f"{case}/{s}0"]).max() > 1e-2, case
        assert 0.5 < float(a[f"{case}/loss"]) < 5.0, case
        assert np.ptp(a[f"{case}/logits"]) > 0.1, case
        assert set(np.unique(a[f"{case}/x"])) <= set(range(V)), case
        assert len(np.unique(a[f"{case}/x"])) == V, case
        if MODEL_CASES[case].get("nonlinearity") == "relu":
            hT = a[f"{case}/h_final"]
            assert (hT == 0).any() and (hT > 0).any(), case
    for case, c in OPTIM_CASES.items():
        norms = a[f"{case}/norms"]
        np.testing.assert_allclose(norms, np.linalg.norm(a[f"{case}/grads"], axis=1),
                                   rtol=1e-12)
        big = np.arange(N_STEPS) == BIG_STEP
        assert (norms[big] > 1.0).all() and (norms[~big] < 1.0).all(), case
        np.testing.assert_array_equal(a[f"{case}/lrs"], LRS)
        moved = np.abs(np.diff(np.vstack([a[f"{case}/p0"], a[f"{case}/params"]]), axis=0))
        assert (moved.max(axis=1) > 1e-4).all(), case
        if c["clip_value"] > 0:   # clipping by value acts on some elements of some steps
            assert (np.abs(a[f"{case}/grads"][~big]) > c["clip_value"]).any(), case


# ---------------------------------------------------------------------------- models
# float64 is compared tightly.  float32 runs the other compiled kernels against the same
# float64 reference, so its bound is float32 rounding through a few steps.
TOL = {"float64": dict(rtol=1e-10, scale=1e-11), "float32": dict(rtol=2e-5, scale=4e-6)}


def _close(ours, ref, dtype, what, atol=0.0):
    """|ours - ref| <= rtol*|ref| + scale*max|ref| + atol elementwise (the scale term
    covers elements that cancel to almost nothing)."""
    t = TOL[dtype]
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    bound = t["rtol"] * np.abs(ref) + t["scale"] * max(np.abs(ref).max(), 1e-300) + atol
    err = np.abs(ours - ref)
    worst = int(np.argmax(err - bound))
    assert np.all(err <= bound), (f"{what}: |diff| {err.flat[worst]:.3e} > bound "
                                  f"{bound.flat[worst]:.3e} at flat index {worst} "
                                  f"(ours {ours.flat[worst]!r}, torch {ref.flat[worst]!r})")


def _model(case, dtype, a):
    cfg = ModelConfig(dtype=dtype, **MODEL_CASES[case])
    model = Model(cfg)
    assert model.param_names == param_names(case)
    for name in model.param_names:
        model.params[name][...] = a[f"{case}/param/{name}"]
    return model


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_model_matches_torch(fx, case, dtype):
    _, a = fx
    model = _model(case, dtype, a)
    x, y = a[f"{case}/x"], a[f"{case}/y"]
    snames = state_names(case)
    state = tuple(a[f"{case}/{s}0"].astype(dtype) for s in snames)

    loss, final_train = model.forward_backward(x, y, state, train=True)
    grads = {n: g.copy() for n, g in model.grads.items()}
    logits, final_eval = model.forward(x, state)
    logp, final_lp = model.log_probs(x, y, state)

    t = TOL[dtype]
    ref_loss = float(a[f"{case}/loss"])
    assert abs(loss - ref_loss) <= t["rtol"] * abs(ref_loss), \
        f"loss: ours {loss!r}, torch {ref_loss!r}"
    ref_logits = a[f"{case}/logits"]
    _close(logits, ref_logits, dtype, "logits")
    # log p(target) from torch's logits, by a stable log-softmax in float64
    z = ref_logits - ref_logits.max(axis=-1, keepdims=True)
    ref_logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    _close(logp, np.take_along_axis(ref_logp, y[..., None], -1)[..., 0], dtype, "log_probs")
    for final in (final_train, final_eval, final_lp):
        assert len(final) == len(snames)
        for s, ours in zip(snames, final):
            _close(ours, a[f"{case}/{s}_final"], dtype, f"final {s}")
    assert set(grads) == set(param_names(case))
    for name in param_names(case):
        _close(grads[name], a[f"{case}/grad/{name}"], dtype, f"grad {name}")


# ---------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(OPTIM_CASES))
def test_optimizer_matches_torch(fx, case, dtype):
    _, a = fx
    cfg = TrainConfig(lr=LRS[0], **OPTIM_CASES[case])
    cfg.validate()
    p = a[f"{case}/p0"].astype(dtype)
    opt = make_optimizer(cfg, N_PARAMS, dtype)
    t = TOL[dtype]
    for k in range(N_STEPS):
        g = a[f"{case}/grads"][k].astype(dtype)
        norm = opt.step(p, g, float(a[f"{case}/lrs"][k]))
        ref_norm = float(a[f"{case}/norms"][k])
        assert math.isclose(norm, ref_norm, rel_tol=t["rtol"]), (k, norm, ref_norm)
        ref = a[f"{case}/params"][k]
        # the displacement from the start, so that a wrong update size shows even where
        # it is small next to the parameter; the atol term is the rounding of p itself
        # (to the dtype at the start and after each step: nothing in float64)
        rounding = (k + 2) * np.finfo(dtype).eps * np.abs(ref)
        _close(p.astype(np.float64) - a[f"{case}/p0"], ref - a[f"{case}/p0"], dtype,
               f"{case} step {k + 1}: p - p0", atol=rounding)
        _close(p, ref, dtype, f"{case} step {k + 1}: p")
    assert opt.step_count == N_STEPS
