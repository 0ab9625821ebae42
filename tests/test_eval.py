"""charrnn eval: loss/bpc/perplexity through the batched forward, state carried across
windows and reads, unknown characters, --lines (batched, long lines, --carry, streaming),
--data splits, and the exact error texts."""
from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from charrnn import evaluate as E
from charrnn.evaluate import lines as EL
from charrnn.config import ModelConfig
from charrnn.model.network import Model
from charrnn.store.vocab import Vocab
from charrnn.store.checkpoint import save_model

TEXT = "hello world, the quick brown fox.\nAnd more lines here!\n\nthe end\n"


def _model(dtype="float64", vocab=None, cell="lstm", **kw):
    v = vocab or Vocab.from_text(TEXT)
    m = Model.from_config(ModelConfig(cell=cell, vocab_size=len(v), hidden_size=8,
                                      num_layers=2, dtype=dtype, **kw), 3)
    m.vocab = v
    return m


@pytest.fixture
def ckpt(tmp_path):
    p = tmp_path / "m.safetensors"
    save_model(p, _model())
    return p


def _reference_loss(m, text):
    """loss_and_grad's loss on the text read after a newline."""
    ids = m.vocab.encode("\n" + text, what="text").astype(np.int64)
    loss, _ = m.loss_and_grad(ids[None, :-1], ids[None, 1:])
    return loss, len(ids) - 1


# ---------------------------------------------------------------------- library

def test_eval_loss_equals_loss_and_grad(ckpt, tmp_path, invoke):
    m = _model()
    f = tmp_path / "t.txt"
    f.write_text(TEXT, encoding="utf-8")
    ref, n = _reference_loss(m, TEXT)
    code, out, err = invoke(["eval", ckpt, f, "--json"])
    assert code == 0, err
    rec = json.loads(out)
    assert rec["chars"] == n == len(TEXT) and rec["unknown"] == 0
    assert rec["loss"] == pytest.approx(ref, abs=1e-6)
    assert rec["bpc"] == pytest.approx(ref / math.log(2), abs=1e-6)
    assert rec["perplexity"] == pytest.approx(math.exp(ref), rel=1e-5)
    code, out, err = invoke(["eval", ckpt, f])
    assert out == (f"loss {ref:.4f} nats/char  bpc {ref / math.log(2):.4f}  "
                   f"perplexity {math.exp(ref):.2f}  chars {n}\n")


def test_windows_and_reads_carry_the_state(tmp_path):
    m = _model(cell="gru")
    text = TEXT * 20
    one = E.evaluate_text(m, text, window=10_000)
    for window in (1, 7, 64):
        s = E.evaluate_text(m, text, window=window)
        assert s.chars == one.chars == len(text)
        assert s.nll == pytest.approx(one.nll, rel=1e-12)
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    pieces = E.StreamScorer(m, m.vocab.stoi["\n"], window=5)
    enc = E.Encoder(m.vocab)
    for chunk in E.iter_text([str(f)], read_bytes=13):
        pieces.feed(enc.encode(chunk, pieces.score))
    assert pieces.score.nll == pytest.approx(one.nll, rel=1e-12)
    assert E.evaluate_files(m, [str(f), str(f)]).chars == 2 * len(text)


def test_unknown_characters(tmp_path, invoke):
    m = _model()
    p = tmp_path / "m.safetensors"
    save_model(p, m)
    code, out, err = invoke(["eval", p, "-"], input="h\u00fcll\u20aco\n")
    assert code == 0
    ref, _ = _reference_loss(m, "hllo\n")
    assert out == (f"loss {ref:.4f} nats/char  bpc {ref / math.log(2):.4f}  "
                   f"perplexity {math.exp(ref):.2f}  chars 5  unknown 2\n")
    assert ("Warning: 2 character(s) not in the model's vocabulary ('\u00fc', '\u20ac') "
            "were left out of the score") in err
    v = Vocab.from_text(TEXT, min_count=2)
    mu = _model(vocab=v)
    pu = tmp_path / "u.safetensors"
    save_model(pu, mu)
    code, out, err = invoke(["eval", pu, "-", "--json"], input="hello \u00fc")
    rec = json.loads(out)
    ids = mu.vocab.encode("\nhello \u00fc", what="t").astype(np.int64)
    assert ids[-1] == v.unk_id
    loss, _ = mu.loss_and_grad(ids[None, :-1], ids[None, 1:])
    assert rec["chars"] == 7 and rec["unknown"] == v.count_unknown("hello \u00fc") >= 1
    assert rec["loss"] == pytest.approx(loss, abs=1e-6)
    assert "were scored as the unknown symbol" in err


# ---------------------------------------------------------------------- --lines

LINES = ["hello world", "", "the quick brown fox. " * 3, "And more", "x" * 3 + " end"]


def _lines_output(m, lines, carry=False, **kw):
    out = io.StringIO()
    E.evaluate_lines(m, [kw.pop("path")], out, carry=carry, **kw)
    return [row.split("\t") for row in out.getvalue().split("\n")[:-1]]


def test_lines_equal_scoring_each_line_alone(tmp_path, monkeypatch):
    m = _model()
    f = tmp_path / "l.txt"
    f.write_text("\n".join(LINES), encoding="utf-8")       # last line without a newline
    for long_line, read in ((8192, 1 << 16), (10, 7)):     # batched / pieces + tiny reads
        monkeypatch.setattr(EL, "LONG_LINE", long_line)
        monkeypatch.setattr(EL, "SPOOL_CHARS", 16)
        rows = _lines_output(m, LINES, path=str(f), read_bytes=read)
        assert [r[2] for r in rows] == LINES
        for (bpc, chars, line) in rows:
            alone = E.evaluate_text(m, line)
            assert int(chars) == alone.chars == len(line)
            if line:
                assert float(bpc) == pytest.approx(alone.bpc, abs=1e-4)
            else:
                assert bpc == "nan"


def _record_shapes(m) -> list:
    """Wraps m.log_probs so that each call's input shape (B, T) is appended to the
    returned list."""
    shapes = []
    full = m.log_probs

    def spy(x, y, state=None):
        shapes.append(np.shape(x))
        return full(x, y, state)
    m.log_probs = spy
    return shapes


def test_lines_batch_is_read_in_windows(tmp_path):
    """A batch of lines goes through the model in windows of at most WINDOW steps (the
    buffers of one forward over the longest line grew to gigabytes), with the same
    scores as each line alone."""
    m = _model()
    lines = ["the quick brown fox. " * 30, "hello", "x" * 300 + " end"]   # 630, 5, 304
    f = tmp_path / "l.txt"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    alone = [E.evaluate_text(m, line) for line in lines]
    shapes = _record_shapes(m)
    out = io.StringIO()
    E.evaluate_lines(m, [str(f)], out, as_json=True)
    assert E.WINDOW == 256 and shapes == [(3, 256), (3, 256), (3, 128)]   # 630 -> 640
    recs = [json.loads(r) for r in out.getvalue().splitlines()]
    assert len(recs) == len(lines) == len(alone)
    for rec, want, ref in zip(recs, lines, alone):
        assert rec["line"] == want and rec["chars"] == ref.chars == len(want)
        assert rec["bpc"] == pytest.approx(ref.bpc, abs=2e-6)


# ---------------------------------------------------------------------- --streams

STREAM_TEXT = (TEXT * 5).replace("\n\n", "\n")          # 300-odd characters


def _pieces(m, ids, streams, piece, warmup, feed=None):
    from charrnn.sampling import default_context

    ps = E.PieceScorer(m, default_context(m), streams, piece=piece, warmup=warmup)
    step = feed or len(ids)
    for lo in range(0, len(ids), step):
        ps.feed(ids[lo:lo + step])
    return ps.finish()


def test_streams_score_each_piece_after_its_warmup():
    """Every piece is scored once, from a fresh state after the warm-up ids before it
    (the context symbol and everything before it near the start), whatever the number
    of streams and however the ids are fed."""
    m = _model()
    ids = m.vocab.encode(STREAM_TEXT, what="t").astype(np.int64)
    n, piece, warmup = len(ids), 40, 10
    ctx = m.vocab.stoi["\n"]
    want = 0.0
    for s in range(0, n, piece):
        p = min(piece, n - s)
        w0 = s - warmup - 1
        seq = np.concatenate([[ctx], ids[:s + p]]) if w0 <= 0 else ids[w0:s + p]
        lp, _ = m.log_probs(seq[None, :-1], seq[None, 1:])
        want -= lp[0, -p:].sum()
    for streams, feed in ((1, None), (3, None), (3, 7), (20, 1)):
        sc = _pieces(m, ids, streams, piece, warmup, feed)
        assert sc.chars == n
        assert sc.nll == pytest.approx(want, rel=1e-12)


def test_streams_with_a_long_warmup_are_the_one_pass():
    m = _model()
    one = E.evaluate_text(m, STREAM_TEXT)
    ids = m.vocab.encode(STREAM_TEXT, what="t").astype(np.int64)
    sc = _pieces(m, ids, 4, 30, warmup=len(ids))
    assert sc.chars == one.chars and sc.nll == pytest.approx(one.nll, rel=1e-12)
    near = _pieces(m, ids, 4, 30, warmup=20)                  # differs, but not by much
    assert near.nll != one.nll and near.loss == pytest.approx(one.loss, rel=0.05)


def test_streams_run_the_pieces_side_by_side():
    m = _model()
    shapes = _record_shapes(m)
    sc = E.PieceScorer(m, 0, 4, piece=50, warmup=10)
    sc.feed(np.arange(330) % len(m.vocab))                   # 200 + 130 ids
    assert [b for b, _ in shapes] == [4] and sc.score.chars == 200             # one full batch so far
    sc.finish()
    assert [b for b, _ in shapes] == [4, 3] and sc.score.chars == 330          # 50, 50, 30


def test_many_rows_are_read_in_shorter_windows():
    """B * window stays within CALL_STEPS (the model's buffers grow with it), the
    window a multiple of 32 and at least 32; the scores do not change."""
    m = _model()
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, len(m.vocab), 100) for _ in range(200)]
    alone = E.score_rows(m, rows[:1], [99])
    shapes = _record_shapes(m)
    nll = E.score_rows(m, rows, [99] * 200)
    assert E.CALL_STEPS == 64 * 256 and shapes == [(200, 64), (200, 64)]
    assert nll[0] == pytest.approx(alone[0], rel=1e-12)
    shapes.clear()
    E.score_rows(m, rows * 6, [99] * 1200)
    assert shapes == [(1200, 32)] * 4


def test_streams_cli(ckpt, tmp_path, invoke):
    code, out, _ = invoke(["eval", "--help"])           # its numbers are the module's
    assert code == 0 and f"piece of {E.PIECE} characters" in " ".join(out.split())
    assert f"reading the {E.WARMUP} before it" in " ".join(out.split())
    f = tmp_path / "t.txt"
    f.write_text(STREAM_TEXT * 40, encoding="utf-8")
    code, out, _ = invoke(["eval", str(ckpt), str(f), "--json", "--streams", "8"])
    assert code == 0
    rec = json.loads(out)
    assert rec["streams"] == 8 and rec["chars"] == len(STREAM_TEXT) * 40
    code, out1, _ = invoke(["eval", str(ckpt), str(f), "--json"])
    assert "streams" not in json.loads(out1)
    assert rec["loss"] == pytest.approx(json.loads(out1)["loss"], rel=0.01)
    code, _, err = invoke(["eval", str(ckpt), str(f), "--streams", "1025"])
    assert code == 2 and "1025 is not in the range 1<=x<=1024" in err
    for argv in (["--lines", str(f)], ["--split", "val"], ["--data", str(tmp_path)]):
        code, _, err = invoke(["eval", str(ckpt), *argv, "--streams", "2"])
        assert code == 2, argv
        assert ("Error: --streams scores text INPUT (files or -), not --lines or a data "
                "split" in err), err


def test_lines_carry_equals_the_whole_text(tmp_path):
    m = _model()
    f = tmp_path / "l.txt"
    f.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    rows = _lines_output(m, LINES, carry=True, path=str(f), read_bytes=5)
    whole = "\n".join(LINES) + "\n"
    ids = m.vocab.encode("\n" + whole, what="t").astype(np.int64)
    lp, _ = m.log_probs(ids[None, :-1], ids[None, 1:])
    lp = lp[0]
    pos = 0
    assert len(rows) == len(LINES)
    for (bpc, chars, line), want in zip(rows, LINES):
        assert line == want and int(chars) == len(want)
        if want:
            ref = -lp[pos:pos + len(want)].mean() / math.log(2)
            assert float(bpc) == pytest.approx(ref, abs=1e-4)
        pos += len(want) + 1


def test_lines_cli_json_and_usage(ckpt, tmp_path, invoke, monkeypatch):
    code, out, err = invoke(["eval", ckpt, "--lines", "--json"], input="hello\nfox\n")
    assert code == 0
    recs = [json.loads(x) for x in out.splitlines()]
    assert [(r["line"], r["chars"]) for r in recs] == [("hello", 5), ("fox", 3)]
    monkeypatch.setattr(EL, "LONG_LINE", 3)          # long lines: pieces, spooled, escaped
    monkeypatch.setattr(EL, "SPOOL_CHARS", 4)
    lines = ['the "fox" \\ said', "", 'a"b']
    code, out, err = invoke(["eval", ckpt, "--lines", "--json"], input="\n".join(lines))
    recs = [json.loads(x) for x in out.splitlines()]
    assert [r["line"] for r in recs] == lines
    code, out, err = invoke(["eval", ckpt, "--carry"])
    assert code == 2 and "--carry needs --lines" in err


def test_lines_stream_in_a_real_pipe(ckpt):
    """Each line's score comes back before the next line is written."""
    env = dict(os.environ)
    env.setdefault("CHARRNN_THREADS", "2")
    p = subprocess.Popen([sys.executable, "-m", "charrnn", "eval", str(ckpt), "--lines"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in ("hello world", "the fox", "And more"):
            p.stdin.write(line + "\n")
            p.stdin.flush()
            got = p.stdout.readline()
            assert got.endswith(f"\t{len(line)}\t{line}\n")
        p.stdin.close()
        assert p.stdout.read() == ""
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
        p.stdout.close()
        p.stderr.close()


# ---------------------------------------------------------------------- --data, defaults, errors

def test_eval_data_split(tmp_path, invoke):
    from charrnn.store.batches import iter_eval_batches
    from charrnn.store.dataset import Dataset
    from charrnn.store.prepare import prepare
    src = tmp_path / "c.txt"
    src.write_text(TEXT * 40, encoding="utf-8")
    from charrnn.config import DataConfig

    prepare([str(src)], tmp_path / "d", DataConfig(val_frac=0.2), show_progress=False)
    ds = Dataset(tmp_path / "d")
    m = _model(vocab=ds.vocab)
    p = tmp_path / "m.safetensors"
    save_model(p, m)
    code, out, err = invoke(["eval", p, "--data", tmp_path / "d", "--json"])
    assert code == 0, err
    rec = json.loads(out)
    tok = np.asarray(ds.split("val"), np.int64)
    nll, rows, state = 0.0, None, None             # training's layout: B=50 streams, T=256
    for x, y in iter_eval_batches(tok, 50, 256):
        if x.shape[0] != rows:
            rows, state = x.shape[0], None
        lp, state = m.log_probs(x, y, state)
        nll -= lp.sum()
    assert rec["chars"] == len(tok) - 1 and rec["split"] == "val"
    assert rec["loss"] == pytest.approx(nll / (len(tok) - 1), abs=1e-6)
    # a training checkpoint that names its data: --split scores that split (the default
    # input at a terminal: tests/test_cli_conventions.py), laid out with its batch size
    # (1 here: one pass over the split)
    save_model(p, m, train_state={"data_dir": str(tmp_path / "d"),
                           "train_config": {"batch_size": 1, "seq_len": 17}})
    code, out2, err = invoke(["eval", p, "--json", "--split", "val"])
    lp, _ = m.log_probs(tok[None, :-1], tok[None, 1:])
    assert code == 0 and json.loads(out2)["loss"] == pytest.approx(-lp.mean(), abs=1e-6)


def test_score_tokens_one_process_and_shares_of_ranks():
    """comm=None is the LocalComm (this process alone); N ranks' shares of the streams (the
    trailing stream on rank 0) add up to the one process's score."""
    from charrnn.training.local import LocalComm

    m = _model()
    tok = m.vocab.encode(TEXT * 5, what="text").astype(np.int64)        # (n,)
    one = E.score_tokens(m, tok, 4, 16)
    local = E.score_tokens(m, tok, 4, 16, comm=LocalComm())
    assert (one.nll, one.chars) == (local.nll, local.chars) and one.chars == len(tok) - 1

    class Rank:                     # one rank of two, its total not yet summed
        size = 2

        def __init__(self, rank):
            self.rank = rank

        def allreduce_sum(self, value):
            return value

    shares = [E.score_tokens(m, tok, 4, 16, comm=Rank(r)) for r in (0, 1)]
    assert sum(s.chars for s in shares) == one.chars and shares[0].chars > shares[1].chars
    assert sum(s.nll for s in shares) == pytest.approx(one.nll, rel=1e-12)


def test_eval_errors(ckpt, tmp_path, invoke):
    code, out, err = invoke(["eval", ckpt, "--split", "val"])
    assert code == 1 and out == ""
    assert err == ("Error: no INPUT given and the checkpoint names no prepared data that "
                   "exists; give text on stdin, INPUT files (- for stdin), or --data "
                   "DATA_DIR\n")
    code, out, err = invoke(["eval", ckpt, tmp_path / "missing.txt"])
    assert code == 1 and err == f"Error: {tmp_path / 'missing.txt'}: no such file\n"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello \xff world")
    code, out, err = invoke(["eval", ckpt, bad])
    assert code == 1 and err == f"Error: {bad}: invalid utf-8 at byte 6\n"
    code, out, err = invoke(["eval", tmp_path / "nope", "-"], input="x")
    assert code == 1 and err.startswith("Error: ") and "no such file or directory" in err
    code, out, err = invoke(["eval", ckpt, "-"], input="")
    assert code == 1 and err == ("Error: nothing to score: standard input is empty; give "
                                 "text on stdin, INPUT files, or --split val / --data DIR "
                                 "to score prepared data\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, out, err = invoke(["eval", ckpt, empty])
    assert code == 1 and err == ("Error: nothing to score: the input is empty (or has only "
                                 "characters outside the vocabulary)\n")
    code, out, err = invoke(["eval", ckpt, bad, "--data", tmp_path])
    assert code == 2 and "give INPUT files or --data, not both" in err
