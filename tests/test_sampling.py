"""charrnn sample: the jitted generation kernel (parity with the batched forward for every
cell and option, chunking, determinism, greedy/top-k/top-p/temperature) and the command
(streaming, --stop, --json, errors)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from charrnn.config import ModelConfig
from charrnn.model.network import Model
from charrnn.sampling import (Sampler, _StopScanner, draw_from_logits,
                              sample_text, seed_streams)
from charrnn.store.vocab import Vocab
from charrnn.store.checkpoint import save_model

TEXT = "hello world, the quick brown fox.\nAnd more lines here!\n"


def _model(cell="lstm", dtype="float64", L=2, H=8, vocab=None, seed=1, **kw):
    v = vocab or Vocab.from_text(TEXT)
    m = Model.from_config(ModelConfig(cell=cell, vocab_size=len(v), hidden_size=H,
                                      num_layers=L, dtype=dtype, **kw), seed)
    m.vocab = v
    return m


@pytest.fixture
def ckpt(tmp_path):
    p = tmp_path / "m.safetensors"
    save_model(p, _model(dtype="float32"))
    return p


OPTIONS = [
    ("lstm", {}), ("lstm", dict(peepholes=True)), ("lstm", dict(residual=True, embed_size=3)),
    ("gru", {}), ("gru", dict(gru_reset="before")), ("gru", dict(residual=True, embed_size=4)),
    ("rnn", {}), ("rnn", dict(nonlinearity="relu", residual=True)),
]


# ---------------------------------------------------------------------- kernel parity

@pytest.mark.parametrize("cell,opts", OPTIONS)
@pytest.mark.parametrize("L", [1, 3])
def test_step_kernel_log_probs_equal_batched_forward(cell, opts, L):
    m = _model(cell, L=L, H=6, **opts)
    V = m.config.vocab_size
    seq = np.random.default_rng(L).integers(0, V, (3, 15))                 # (N, S)
    ref, _ = m.log_probs(seq[:, :-1], seq[:, 1:])                          # (N, S-1)
    for blas in (False, True):
        lp = Sampler(m, 3, blas=blas).score_streams(seq)
        np.testing.assert_allclose(lp, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell,opts", [("lstm", {}), ("gru", dict(gru_reset="before"))])
def test_one_stream_through_the_packed_kernel_equals_batched_forward(cell, opts):
    """One stream with blas=True takes the packed-weight product (Product.PACKED)."""
    from charrnn.kernels.modes import Product

    m = _model(cell, L=2, H=6, **opts)
    seq = np.random.default_rng(5).integers(0, m.config.vocab_size, (1, 15))  # (1, S)
    ref, _ = m.log_probs(seq[:, :-1], seq[:, 1:])                          # (1, S-1)
    s = Sampler(m, 1, blas=True)
    assert s.product == Product.PACKED
    np.testing.assert_allclose(s.score_streams(seq), ref, rtol=1e-10, atol=1e-12)


def test_sampling_needs_no_scipy():
    """No product mode needs scipy (not a dependency): with scipy made unimportable (numba
    imports it by itself where it is installed), sampling in every mode, compiled afresh
    and then from cached kernels, runs and draws the same characters as with it allowed."""
    code = ("import sys, os\n"
            "if os.environ['BLOCK'] == '1': sys.modules['scipy'] = None\n"
            "from tests.test_sampling import _model\n"
            "from charrnn.sampling import Sampler\n"
            "m = _model()\n"
            "for n, blas in ((1, False), (4, True), (1, True)):\n"
            "    print(Sampler(m, n, blas=blas, seed=3).generate(5)[0].tolist())\n")
    outs = []
    for block in ("1", "1", "0"):     # the second with every kernel cached
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(os.environ, CHARRNN_THREADS="2", BLOCK=block),
                             timeout=300,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert res.returncode == 0, res.stderr
        outs.append(res.stdout)
    assert len(outs[0].splitlines()) == 3
    assert outs[0] == outs[1] == outs[2]


def test_step_kernel_float32_close_to_forward():
    m = _model("lstm", dtype="float32", peepholes=True)
    seq = np.random.default_rng(0).integers(0, m.config.vocab_size, (2, 30))
    ref, _ = m.log_probs(seq[:, :-1], seq[:, 1:])
    lp = Sampler(m, 2).score_streams(seq)
    np.testing.assert_allclose(lp, ref, rtol=1e-4, atol=1e-5)


def test_prime_then_generate_continues_the_forward_state():
    """The first draw is from the distribution after the last prime character."""
    m = _model("gru")
    ids = m.vocab.encode("the quick", what="prime").astype(np.int64)
    s = Sampler(m, 1, greedy=True)
    s.prime(ids)
    out, lp = s.generate(1)
    logits, _ = m.forward(ids[None])                                       # (1, P, V)
    z = logits[0, -1]
    assert out[0, 0] == int(np.argmax(z))
    ref = z[out[0, 0]] - (z.max() + np.log(np.exp(z - z.max()).sum()))
    assert lp[0, 0] == pytest.approx(ref, abs=1e-10)


# ---------------------------------------------------------------------- determinism, chunks

def test_chunking_never_changes_the_result():
    m = _model(dtype="float32")
    full, lp_full = Sampler(m, 2, seed=5, temperature=0.9, top_k=10).generate(100)
    for chunk in (1, 7, 64):
        s = Sampler(m, 2, seed=5, temperature=0.9, top_k=10)
        parts = [s.generate(min(chunk, 100 - i)) for i in range(0, 100, chunk)]
        assert np.array_equal(np.concatenate([p[0] for p in parts], axis=1), full)
        assert np.array_equal(np.concatenate([p[1] for p in parts], axis=1), lp_full)
    a = sample_text(m, 300, prime="the", seed=3, chunk=256)
    b = sample_text(m, 300, prime="the", seed=3, chunk=1)
    assert a[0].text == b[0].text and len(a[0].text) == 300


def test_same_seed_same_text_different_seed_different_text():
    m = _model(dtype="float32")
    a = sample_text(m, 200, seed=11)[0].text
    assert a == sample_text(m, 200, seed=11)[0].text
    assert a != sample_text(m, 200, seed=12)[0].text


def test_streams_have_their_own_generators():
    rng = seed_streams(7, 3)
    assert rng.dtype == np.uint64 and rng.shape == (3, 4)
    assert np.array_equal(seed_streams(7, 2, first=1), rng[1:])
    m = _model(dtype="float64")
    one = Sampler(m, 1, seed=4, blas=False).generate(80)[0]
    three = Sampler(m, 3, seed=4, blas=False).generate(80)[0]
    assert np.array_equal(three[0], one[0])          # stream 0 is the single sample
    assert not np.array_equal(three[1], three[0])


@pytest.mark.parametrize("cell,kw", [("lstm", dict(peepholes=True)), ("gru", {}),
                                     ("gru", dict(gru_reset="before", residual=True)),
                                     ("rnn", dict(embed_size=3))])
def test_packed_streams_split_between_threads_change_nothing(cell, kw, monkeypatch):
    """Several streams use the packed-weight kernel in groups on numba's threads: the
    same ids and log-probs for any number of groups, stream i the same for any N, and
    the numbers of the loops to rounding."""
    from charrnn.kernels import runtime
    from charrnn import sampling
    from charrnn.kernels.modes import Product

    m = _model(cell, dtype="float64", **kw)
    monkeypatch.setattr(sampling, "STREAMS_PER_THREAD", 1)
    out = {}
    for groups in (1, 2, 3):
        monkeypatch.setattr(runtime, "numba_threads", lambda: groups)
        s = Sampler(m, 7, seed=3, blas=True)
        assert s.product == Product.PACKED and s.groups == groups
        s.prime_streams(np.tile(m.vocab.encode("hel", what="prime"), (7, 1)))
        out[groups] = s.generate(60)
    for groups in (2, 3):
        np.testing.assert_array_equal(out[groups][0], out[1][0])
        np.testing.assert_array_equal(out[groups][1], out[1][1])
    two = Sampler(m, 2, seed=3, blas=True)
    two.prime_streams(np.tile(m.vocab.encode("hel", what="prime"), (2, 1)))
    ids, lp = two.generate(60)
    np.testing.assert_array_equal(ids, out[1][0][:2])
    loops = Sampler(m, 7, seed=3, blas=False)
    assert loops.product == Product.ROWS
    seq = np.tile(m.vocab.encode(TEXT[:40], what="text"), (7, 1))
    np.testing.assert_allclose(Sampler(m, 7, blas=True).score_streams(seq),
                               loops.score_streams(seq), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- greedy, top-k, temperature

def test_greedy_equals_argmax_of_batched_forward():
    m = _model("lstm", peepholes=True)
    prime = m.vocab.encode("hello", what="prime").astype(np.int64)
    s = Sampler(m, 1, greedy=True)
    s.prime(prime)
    gen, _ = s.generate(40)
    seq = np.concatenate([prime, gen[0]])
    logits, _ = m.forward(seq[None, :-1])                                  # (1, S-1, V)
    pred = logits[0].argmax(axis=1)
    assert np.array_equal(pred[len(prime) - 1:], gen[0])


def test_top_k_1_equals_greedy_and_top_k_limits_the_choice():
    m = _model(dtype="float32")
    g = sample_text(m, 100, prime="And", greedy=True)[0].text
    assert sample_text(m, 100, prime="And", top_k=1, seed=9)[0].text == g
    assert sample_text(m, 100, prime="And", top_p=1e-9, seed=9)[0].text == g
    z = np.array([0.5, 2.0, -1.0, 1.5, 1.9, 0.0])
    draws = draw_from_logits(z, 3000, top_k=3, seed=1)
    assert set(np.unique(draws)) == {1, 3, 4}
    assert set(np.unique(draw_from_logits(z, 50, greedy=True))) == {1}


def test_top_p_keeps_the_smallest_nucleus():
    z = np.log(np.array([0.5, 0.05, 0.3, 0.15]))
    assert set(np.unique(draw_from_logits(z, 3000, top_p=0.75, seed=2))) == {0, 2}
    assert set(np.unique(draw_from_logits(z, 3000, top_p=0.79, seed=2))) == {0, 2}
    assert set(np.unique(draw_from_logits(z, 3000, top_p=0.81, seed=2))) == {0, 2, 3}


def _chi2_ok(counts, p, n):
    """Pearson chi-square below the 0.999 quantile (fixed seeds: deterministic)."""
    from math import sqrt

    exp = p * n
    keep = exp > 5
    stat = float((((counts - exp) ** 2)[keep] / exp[keep]).sum())
    df = int(keep.sum()) - 1
    return stat < df + 4.5 * sqrt(2 * df) + 10, stat


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0])
def test_draws_match_softmax_at_temperature(T):
    z = np.array([1.0, 0.2, -0.5, 2.0, 0.7, -1.5, 0.0])
    n = 40_000
    counts = np.bincount(draw_from_logits(z, n, temperature=T, seed=3), minlength=len(z))
    p = np.exp(z / T) / np.exp(z / T).sum()
    ok, stat = _chi2_ok(counts, p, n)
    assert ok, stat


def test_whole_kernel_first_draw_matches_softmax_of_forward():
    """N streams from one prime: their first characters follow softmax(logits / T)."""
    m = _model(dtype="float64", H=6)
    prime = m.vocab.encode("fox", what="prime").astype(np.int64)
    T, N = 0.7, 20_000
    s = Sampler(m, N, temperature=T, seed=21)
    s.prime(prime)
    first, _ = s.generate(1)
    logits, _ = m.forward(prime[None])
    z = logits[0, -1] / T
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    ok, stat = _chi2_ok(np.bincount(first[:, 0], minlength=len(p)), p, N)
    assert ok, stat


# ---------------------------------------------------------------------- stop strings

def test_stop_scanner_holds_back_only_a_possible_start():
    sc = _StopScanner("\n\n")
    assert sc.feed("ab\n") == ("ab", False)
    assert sc.feed("c") == ("\nc", False)
    assert sc.feed("d\n") == ("d", False)
    assert sc.feed("\nxyz") == ("", True)
    sc = _StopScanner("abcab")
    assert sc.feed("xxabca") == ("xx", False)
    assert sc.feed("bzz") == ("", True)


def test_stop_gives_the_prefix_of_the_unstopped_run():
    m = _model(dtype="float32")
    full = sample_text(m, 400, seed=2, num_samples=3)
    stopped = sample_text(m, 400, seed=2, num_samples=3, stop="e ", chunk=5)
    hit = 0
    for f, s in zip(full, stopped):
        pos = f.text.find("e ")
        if pos >= 0:
            hit += 1
            assert s.stopped and s.text == f.text[:pos]
            assert len(s.logprobs) == pos
            assert s.logprobs == f.logprobs[:pos]
        else:
            assert not s.stopped and s.text == f.text
    assert hit >= 1


def test_mean_logprob_is_minus_the_loss_of_the_text():
    m = _model(dtype="float64")
    r = sample_text(m, 60, prime="the ", seed=1)[0]
    ids = m.vocab.encode("the " + r.text, what="t").astype(np.int64)
    lp, _ = m.log_probs(ids[None, :-1], ids[None, 1:])
    assert r.mean_logprob == pytest.approx(lp[0, 3:].mean(), abs=1e-9)


# ---------------------------------------------------------------------- command

def test_cli_sample_basic_echo_and_seed(ckpt, invoke):
    code, out, err = invoke(["sample", str(ckpt), "-n", "50", "--prime", "the", "--seed", "4"])
    assert code == 0, err
    assert out.startswith("the") and len(out) == 53
    code2, out2, _ = invoke(["sample", str(ckpt), "-n", "50", "--prime", "the", "--seed", "4",
                             "--no-echo"])
    assert code2 == 0 and out2 == out[3:]
    code3, out3, _ = invoke(["sample", str(ckpt), "-n", "50", "--prime", "the", "--seed", "4",
                             "--stream", "--no-echo"])
    assert out3 == out2


def test_cli_num_samples_separator_and_json(ckpt, invoke):
    code, out, err = invoke(["sample", str(ckpt), "-n", "20", "--num-samples", "3",
                             "--separator", "|SEP|", "--seed", "1", "--prime", "he",
                             "--no-echo"])
    assert code == 0, err
    parts = out.split("|SEP|")
    assert len(parts) == 3 and all(len(p) == 20 for p in parts)
    code, out, err = invoke(["sample", str(ckpt), "-n", "20", "--num-samples", "3",
                             "--json", "--seed", "1", "--prime", "he"])
    recs = [json.loads(line) for line in out.splitlines()]
    assert [r["sample"] for r in recs] == [0, 1, 2]
    assert [r["text"] for r in recs] == parts
    assert all(r["chars"] == 20 and r["prime"] == "he" and r["mean_logprob"] < 0
               for r in recs)


def test_cli_prime_file_and_stdin(ckpt, invoke, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("hello", encoding="utf-8")
    a = invoke(["sample", str(ckpt), "-n", "10", "--seed", "0", "--prime-file", str(f)])
    b = invoke(["sample", str(ckpt), "-n", "10", "--seed", "0", "--prime-file", "-"],
               input="hello")
    c = invoke(["sample", str(ckpt), "-n", "10", "--seed", "0", "--prime", "hello"])
    assert a[0] == 0 and a[1] == b[1] == c[1] and a[1].startswith("hello")
    code, out, err = invoke(["sample", str(ckpt), "--prime", "x", "--prime-file", str(f)])
    assert code == 2 and "give --prime or --prime-file, not both" in err


def test_cli_prime_outside_vocabulary(ckpt, invoke, tmp_path):
    code, out, err = invoke(["sample", str(ckpt), "--prime", "h\u00fcll\u20aco"])
    assert code == 1 and out == ""
    assert err == ("Error: prime text has characters not in the model's vocabulary: "
                   "'\u00fc', '\u20ac'\n")
    v = Vocab.from_text(TEXT, min_count=2)
    assert v.unk is not None
    p = tmp_path / "unk.safetensors"
    save_model(p, _model(vocab=v, dtype="float32"))
    code, out, err = invoke(["sample", str(p), "-n", "5", "--prime", "h\u00fcll\u20aco"])
    assert code == 0 and out.startswith("h\u00fcll\u20aco") and len(out) == 11
    assert ("Warning: prime text has 2 character(s) not in the model's vocabulary "
            "('\u00fc', '\u20ac'); they are read as the unknown symbol") in err


def test_cli_bad_options_and_checkpoints(ckpt, invoke, tmp_path):
    code, _, err = invoke(["sample", str(ckpt), "--temperature", "-0.5"])
    assert code == 2 and "--temperature" in err and "must be >= 0" in err
    code, _, err = invoke(["sample", str(ckpt), "--top-p", "1.5"])
    assert code == 2
    code, _, err = invoke(["sample", str(tmp_path / "none.safetensors")])
    assert code == 1 and err.startswith("Error: ") and "no such file or directory" in err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(ckpt.read_bytes()[:200])
    code, _, err = invoke(["sample", str(bad)])
    assert code == 1 and err.startswith("Error: ") and err.count("\n") == 1


def _env():
    env = dict(os.environ)
    env.setdefault("CHARRNN_THREADS", "2")
    return env


def test_streaming_in_a_real_pipeline(ckpt):
    """Output arrives while generation is still running, and a closed pipe ends quietly."""
    p = subprocess.Popen([sys.executable, "-m", "charrnn", "sample", str(ckpt), "-n",
                          "100000000", "--stream", "--seed", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        first = p.stdout.read(20)
        assert len(first) == 20
        time.sleep(0.2)
        assert p.poll() is None          # still generating: the text was streamed
    finally:
        p.stdout.close()
        err = p.stderr.read()
        p.wait(timeout=60)
        p.stderr.close()
    assert b"Error" not in err and b"Traceback" not in err
    assert p.returncode == 141          # like `yes | head`: 128 + SIGPIPE
    head = subprocess.run(f'"{sys.executable}" -m charrnn sample "{ckpt}" -n 1000000 '
                          f'| head -c 10', shell=True, capture_output=True, env=_env(),
                          timeout=120)
    assert len(head.stdout) == 10 and head.stderr == b""


@pytest.mark.parametrize("unbuffered", ["1", ""])
@pytest.mark.parametrize("extra", [["--json"], ["--json", "--num-samples", "2"], []])
def test_a_reader_that_leaves_early_is_exit_141(ckpt, extra, unbuffered):
    """`sample -n 300000 [--json] | head -c 10`: one large write into a pipe whose reader
    exits; also under PYTHONUNBUFFERED, whose raw stdout used to drop the rest of the
    partial write and exit 0 with the output cut."""
    env = dict(_env(), PYTHONUNBUFFERED=unbuffered)
    p = subprocess.Popen([sys.executable, "-m", "charrnn", "sample", str(ckpt), "-n", "300000",
                          "--seed", "1", *extra], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    try:
        assert len(p.stdout.read(10)) == 10
    finally:
        p.stdout.close()
        err = p.stderr.read()
        p.wait(timeout=120)
        p.stderr.close()
    assert p.returncode == 141 and b"Error" not in err and b"Traceback" not in err, err


def test_unbuffered_stdout_is_written_whole(ckpt):
    env = dict(_env(), PYTHONUNBUFFERED="1")
    args = [sys.executable, "-m", "charrnn", "sample", str(ckpt), "-n", "200000", "--seed",
            "2", "--json"]
    a = subprocess.run(args, capture_output=True, env=env, timeout=120)
    b = subprocess.run(args, capture_output=True, env=dict(env, PYTHONUNBUFFERED=""),
                       timeout=120)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and len(json.loads(a.stdout)["text"]) == 200000


def test_a_shared_prime_is_run_once_and_copied():
    m = _model(dtype="float64", cell="gru")
    prime = m.vocab.encode("the quick", what="prime").astype(np.int64)
    a = Sampler(m, 3, seed=2, blas=False)
    a.prime(prime)
    b = Sampler(m, 3, seed=2, blas=False)
    b.prime_streams(np.repeat(prime[None], 3, axis=0))
    np.testing.assert_allclose(a.h, b.h, atol=1e-14)
    assert np.array_equal(a.cur, b.cur)
    assert np.array_equal(a.generate(50)[0], b.generate(50)[0])


def test_same_text_with_one_or_two_threads(ckpt, invoke):
    outs = []
    for threads in ("1", "2", "1"):
        code, out, err = invoke(["sample", ckpt, "-n", "300", "--num-samples", "4",
                                 "--seed", "8", "--threads", threads, "--json"])
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1] == outs[2]


def test_run_directory_best_or_latest(tmp_path, invoke):
    run = tmp_path / "run"
    save_model(run / "best.safetensors", _model(dtype="float32", seed=1), train_state={"iteration": 1})
    save_model(run / "latest.safetensors", _model(dtype="float32", seed=2), train_state={"iteration": 2})
    best = invoke(["sample", run, "-n", "40", "--seed", "3"])
    latest = invoke(["sample", run, "-n", "40", "--seed", "3", "--latest"])
    direct = invoke(["sample", run / "latest.safetensors", "-n", "40", "--seed", "3"])
    assert best[0] == latest[0] == 0 and latest[1] == direct[1] != best[1]
