"""charrnn sample --beam: the beam-search kernel against a brute-force numpy search over
the model's forward (texts and scores), --beam 1 = greedy, --stop, the length penalty,
the N beams as one batch per kernel call, and the command (--json, conflicts)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from charrnn.sampling import default_context, sample_text
from charrnn.sampling.beam import BEAM_MAX, beam_search, stop_automaton
from charrnn.store.checkpoint import save_model
from tests.test_sampling import _model


# ---------------------------------------------------------------------- the reference

def reference_beam(m, length, N, prime="", stop=None, alpha=0.0):
    """Beam search in plain numpy, each beam's next distribution from the model's batched
    forward over the whole context (slow, obviously right): [(text, logprob, score,
    stopped)], best first, by the rules of charrnn.sampling.beam_search."""
    itos = m.vocab.itos
    V = len(itos)
    ctx = [int(i) for i in m.vocab.encode(prime, what="prime")] or [default_context(m)]

    def log_p(toks):
        z = m.forward(np.array([ctx + list(toks)]))[0][0, -1].astype(np.float64)   # (V,)
        mz = z.max()
        return (z - mz) - np.log(np.exp(z - mz).sum())

    def lp(n):
        return ((5 + n) / 6) ** alpha

    live = [((), 0.0)]
    finished = []                       # (key, order, tokens, score)
    order = 0
    for g in range(length):
        cands = []
        for b, (toks, s) in enumerate(live):
            lps = log_p(toks)
            for v in range(V):
                c, nt = s + lps[v], toks + (v,)
                if stop and "".join(itos[i] for i in nt).endswith(stop):
                    finished.append((c / lp(g + 1), order, nt, c))
                    order += 1
                else:
                    cands.append((c, b * V + v, nt))
        cands.sort(key=lambda x: (-x[0], x[1]))
        live = [(nt, c) for c, _, nt in cands[:N]]
        finished = sorted(finished, key=lambda f: (-f[0], f[1]))[:N]
        res = None
        if g + 1 == length:
            res = finished + [(c / lp(length), 0, nt, c) for nt, c in live]
        elif not live or (finished and finished[0][0] >= live[0][1]
                          / lp(length if alpha > 0 else g + 1)):
            res = finished
        if res is not None:
            res = sorted(res, key=lambda f: -f[0])[:N]
            out = []
            for key, _, toks, score in res:
                text = "".join(itos[i] for i in toks)
                done = bool(stop) and text.endswith(stop)
                out.append((text[:len(text) - len(stop)] if done else text, score, key, done))
            return out


def _same(found, ref):
    assert [r.text for r in found] == [x[0] for x in ref]
    assert [r.stopped for r in found] == [x[3] for x in ref]
    np.testing.assert_allclose([r.logprob for r in found], [x[1] for x in ref], rtol=0,
                               atol=1e-5)
    np.testing.assert_allclose([r.score for r in found], [x[2] for x in ref], rtol=0,
                               atol=1e-5)


@pytest.mark.parametrize("cell,kw", [("lstm", {}), ("gru", dict(gru_reset="before")),
                                     ("rnn", dict(residual=True))])
@pytest.mark.parametrize("N", [1, 3, 8])
def test_beam_search_equals_the_brute_force_reference(cell, kw, N):
    m = _model(cell, L=2, H=8, **kw)
    _same(beam_search(m, 12, beams=N, prime="the"), reference_beam(m, 12, N, "the"))


def _peaky():
    """A random model with weights scaled up, so that its distributions are peaked and
    beams finish at several lengths or run to -n beside finished ones."""
    m = _model("lstm", L=1, H=8, seed=3)
    m.flat[:] *= 6
    return m


@pytest.mark.parametrize("stop,alpha", [("e", 0.0), ("e", 1.5), (" ", 0.0), ("l", 0.0),
                                        ("o", 1.5), (" t", 0.6)])
def test_stop_and_length_penalty_equal_the_reference(stop, alpha):
    m = _peaky()
    for N in (2, 4):
        found = beam_search(m, 10, beams=N, stop=stop, length_penalty=alpha, chunk=3)
        _same(found, reference_beam(m, 10, N, stop=stop, alpha=alpha))


def test_the_reference_cases_cover_finished_and_live_beams():
    """The cases above hold beams finished at several lengths, live beams ranked with
    finished ones at -n, and a length penalty that ranks a longer beam first."""
    m = _peaky()
    mixed = beam_search(m, 10, beams=4, stop=" ")
    assert mixed[0].stopped and not mixed[1].stopped and mixed[1].length == 10
    assert len({r.length for r in beam_search(m, 10, beams=4, stop="l")}) > 1
    plain = beam_search(m, 10, beams=4, stop="e")
    longer = beam_search(m, 10, beams=4, stop="e", length_penalty=1.5)
    assert plain[0].text == "" and longer[0].text != "" and not longer[0].stopped
    assert longer[0].score == pytest.approx(longer[0].logprob / (15 / 6) ** 1.5)


def test_stop_finishes_beams_and_ends_the_search():
    m = _model("lstm", L=1, H=8, seed=3)
    found = beam_search(m, 200, beams=4, stop="e")
    assert found and all(r.stopped and "e" not in r.text for r in found)
    assert all(r.length == len(r.text) + 1 for r in found)
    assert [r.score for r in found] == sorted((r.score for r in found), reverse=True)
    # a stop string no symbol can make is no stop string
    never = beam_search(m, 15, beams=3, stop="e\u2603")
    assert not any(r.stopped for r in never)
    assert [r.text for r in never] == [r.text for r in beam_search(m, 15, beams=3)]


@pytest.mark.parametrize("prime", ["", "And more"])
def test_beam_1_is_greedy(prime):
    m = _model(dtype="float32")
    g = sample_text(m, 80, prime=prime, greedy=True)[0]
    b = beam_search(m, 80, beams=1, prime=prime)
    assert len(b) == 1 and b[0].text == g.text
    assert b[0].logprob == pytest.approx(sum(g.logprobs), abs=1e-6)


def test_chunking_never_changes_the_result():
    m = _model(dtype="float64")
    full = beam_search(m, 50, beams=6, prime="he", stop="o ")
    for chunk in (1, 7):
        part = beam_search(m, 50, beams=6, prime="he", stop="o ", chunk=chunk)
        assert [(r.text, r.logprob) for r in part] == [(r.text, r.logprob) for r in full]


def test_more_beams_than_symbols_and_edges():
    m = _model(dtype="float64")
    V = m.config.vocab_size
    found = beam_search(m, 3, beams=BEAM_MAX)
    assert len(found) == min(BEAM_MAX, V ** 3)
    assert len({r.text for r in found}) == len(found)          # no beam twice
    assert beam_search(m, 1, beams=BEAM_MAX)[0].length == 1
    assert len(beam_search(m, 1, beams=BEAM_MAX)) == V
    assert [r.text for r in beam_search(m, 0, beams=3)] == [""]
    from charrnn.errors import ConfigError
    for bad in (0, BEAM_MAX + 1):
        with pytest.raises(ConfigError):
            beam_search(m, 5, beams=bad)
    with pytest.raises(ConfigError):
        beam_search(m, 5, beams=2, length_penalty=-1.0)


def test_stop_automaton():
    itos = list("abc")
    dfa = stop_automaton("abab", itos)
    a, b, c = 0, 1, 2

    def run(text):
        j = 0
        for ch in text:
            j = dfa[j, "abc".index(ch)]
            if j == 4:
                return True
        return False

    assert run("cababab") and run("aabab") and not run("abaab") and not run("abacab")
    assert dfa.shape == (5, 3) and dfa[3, b] == 4 and dfa[3, a] == 1 and dfa[2, c] == 0
    assert stop_automaton(None, itos).shape == (1, 3)
    assert stop_automaton("ax", itos).shape == (1, 3)


def test_the_beams_go_through_the_kernel_as_one_batch(monkeypatch):
    """Every kernel call carries all N beams as one batch of streams, and each step is one
    forward_step of that batch (counted by running the kernel's Python body over the
    jitted helpers): N = 8 beams cost one layer pass per step, not eight."""
    from charrnn.kernels import beam as KB

    m = _model(dtype="float64")
    calls, steps = [], []
    fwd = KB.forward_step

    def count_forward(opts, wts, st, sc):
        steps.append(st.cur.shape[0])
        return fwd(opts, wts, st, sc)

    kernel = KB.beam_kernel.py_func

    def count_kernel(opts, wts, st, beams, bo, pool, t0, n, par, tok, flags):
        calls.append((st.h.shape[1], n))
        return kernel(opts, wts, st, beams, bo, pool, t0, n, par, tok, flags)

    monkeypatch.setattr(KB, "forward_step", count_forward)
    monkeypatch.setattr(KB, "beam_kernel", count_kernel)
    found = beam_search(m, 30, beams=8, chunk=7)
    assert calls == [(8, 7), (8, 7), (8, 7), (8, 7), (8, 2)]
    assert steps == [8] * 30
    monkeypatch.undo()
    assert [r.text for r in beam_search(m, 30, beams=8)] == [r.text for r in found]


# ---------------------------------------------------------------------- the command

@pytest.fixture
def ckpt(tmp_path):
    p = tmp_path / "m.safetensors"
    save_model(p, _model(dtype="float32"))
    return p


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "charrnn", "sample", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_cli_beam_json_greedy_and_conflicts(ckpt):
    from charrnn.store.checkpoint import load_model

    m = load_model(ckpt)
    r = _cli(ckpt, "-n", "40", "--beam", "1", "--prime", "the", "--no-echo")
    g = _cli(ckpt, "-n", "40", "--temperature", "0", "--prime", "the", "--no-echo")
    assert r.returncode == 0 and g.returncode == 0, r.stderr + g.stderr
    # nothing on stderr but, on a fresh kernel cache, the one-time compilation notice
    assert r.stdout == g.stdout and [line for line in r.stderr.splitlines()
                                     if not line.startswith("charrnn: compiling")] == []
    r = _cli(ckpt, "-n", "30", "--beam", "5", "--prime", "And", "--json", "--stop", "e",
             "--length-penalty", "0.5")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    ref = beam_search(m, 30, beams=5, prime="And", stop="e", length_penalty=0.5)
    assert [x["beam"] for x in recs] == list(range(len(ref))) and 1 <= len(recs) <= 5
    assert set(recs[0]) == {"beam", "prime", "text", "chars", "logprob", "bpc", "score",
                            "stopped"}
    assert [x["text"] for x in recs] == [b.text for b in ref]
    for x in recs:     # chars, logprob and bpc cover the same characters (stop included)
        assert x["chars"] == len(x["text"]) + (1 if x["stopped"] else 0)
        assert x["bpc"] == pytest.approx(-x["logprob"] / x["chars"] / math.log(2), abs=1e-5)
    assert [x["score"] for x in recs] == sorted((x["score"] for x in recs), reverse=True)
    best = _cli(ckpt, "-n", "30", "--beam", "5", "--prime", "And", "--stop", "e",
                "--length-penalty", "0.5")
    assert best.stdout == "And" + ref[0].text
    for bad in (["--temperature", "0.5"], ["--top-k", "3"], ["--top-p", "0.9"], ["--greedy"],
                ["--seed", "1"], ["--num-samples", "2"], ["--stream"]):
        r = _cli(ckpt, "-n", "5", "--beam", "3", *bad)
        assert r.returncode == 2 and r.stdout == "" and "--beam" in r.stderr, (bad, r.stderr)
    for bad in (["--beam", "0"], ["--beam", "65"], ["--beam", "2", "--length-penalty", "-1"],
                ["--length-penalty", "1"]):
        r = _cli(ckpt, "-n", "5", *bad)
        assert r.returncode == 2 and r.stdout == "", (bad, r.stderr)
