"""Conventions shared with other command-line tools (issue 28, items 16-18), each driven
through the CLI in a real subprocess:

* ``sample --temperature 0`` is greedy; ``--greedy`` with ``--temperature`` is a usage
  error; ``--top-k``/``--top-p`` change nothing when greedy.
* ``sample`` without ``--seed`` draws a fresh seed each run and reports it (``-v`` on
  stderr, ``"seed"`` in ``--json``); ``--seed N`` gives that run back.
* ``eval`` without INPUT scores piped stdin (as wc and grep do), the run's val split at a
  terminal or with an explicit ``--split``, and refuses an empty stdin.
"""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest

from charrnn.config import DataConfig, ModelConfig, SampleConfig
from charrnn.errors import ConfigError
from charrnn.model.network import Model

from conftest import make_text, run_cli
from charrnn.store.checkpoint import load_model, save_model

EMPTY_STDIN = ("Error: nothing to score: standard input is empty; give text on stdin, "
               "INPUT files, or --split val / --data DIR to score prepared data\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory as training leaves it: a small model (random weights: the
    conventions do not depend on training) and the prepared data it names."""
    from charrnn.store.dataset import Dataset
    from charrnn.store.prepare import prepare

    root = tmp_path_factory.mktemp("conventions")
    src = root / "corpus.txt"
    src.write_text(make_text(6000, seed=4), encoding="utf-8")
    d = root / "run" / "data"
    prepare([str(src)], d, DataConfig(val_frac=0.2), show_progress=False)
    ds = Dataset(d)
    m = Model.from_config(ModelConfig(vocab_size=len(ds.vocab), hidden_size=16,
                                      num_layers=1), 5)
    m.vocab = ds.vocab
    save_model(root / "run" / "best.safetensors", m,
           train_state={"data_dir": "data", "train_config": {"batch_size": 2, "seq_len": 64}})
    return root / "run"


@pytest.fixture(scope="module")
def val_chars(run):
    from charrnn.store.dataset import Dataset

    return len(Dataset(run / "data").split("val"))


def _err(r) -> str:
    """stderr without the one-time notice of a first run on a fresh numba cache."""
    return "".join(line for line in r.stderr.splitlines(keepends=True)
                   if not line.startswith("charrnn: compiling numerical kernels"))


def _run(*args, stdin):
    """`python -m charrnn ARGS` with the given stdin (a file descriptor or DEVNULL)."""
    env = dict(os.environ)
    env.setdefault("CHARRNN_THREADS", "2")
    return subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)], stdin=stdin,
                          capture_output=True, text=True, env=env, timeout=300)


def _run_at_terminal(*args):
    """The same with stdin a pseudo-terminal (nothing is typed into it)."""
    master, slave = pty.openpty()
    try:
        return _run(*args, stdin=slave)
    finally:
        os.close(slave)
        os.close(master)


# ---------------------------------------------------------------------- 16: temperature 0

def test_temperature_zero_is_greedy_and_ignores_top_k_top_p(run):
    zero = run_cli("sample", run, "-n", "80", "--temperature", "0", "--seed", "1")
    assert zero.returncode == 0 and _err(zero) == "", zero.stderr
    assert len(zero.stdout) == 80
    greedy = run_cli("sample", run, "-n", "80", "--greedy", "--seed", "2")
    assert greedy.returncode == 0 and greedy.stdout == zero.stdout
    filtered = run_cli("sample", run, "-n", "80", "--temperature", "0", "--top-k", "3",
                       "--top-p", "0.5")
    assert filtered.returncode == 0 and filtered.stdout == zero.stdout
    # the argmax of the model itself, through the library
    from charrnn.sampling import sample_text

    model = load_model(run)
    assert zero.stdout == sample_text(model, 80, greedy=True)[0].text
    assert zero.stdout == sample_text(model, 80, temperature=0.0, seed=9)[0].text
    # temperature 0 is not read as "the default": a drawn sample is another text
    drawn = run_cli("sample", run, "-n", "80", "--temperature", "1", "--seed", "1")
    assert drawn.returncode == 0 and len(drawn.stdout) == 80 and drawn.stdout != zero.stdout


def test_greedy_with_an_explicit_temperature_is_a_usage_error(run):
    for t in ("0", "1", "0.7"):
        r = run_cli("sample", run, "-n", "5", "--greedy", "--temperature", t)
        assert r.returncode == 2 and r.stdout == "", t
        assert r.stderr.endswith("Error: give --greedy or --temperature, not both "
                                 "(--temperature 0 is greedy)\n"), r.stderr
    r = run_cli("sample", run, "-n", "5", "--temperature", "-0.5")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.endswith("Error: Invalid value for '--temperature': -0.5 is not in the "
                             "valid range (must be >= 0).\n"), r.stderr
    h = run_cli("sample", "--help")
    text = " ".join(h.stdout.split())
    assert h.returncode == 0
    assert "0 = greedy (the most likely character, as --greedy)" in text
    assert "--top-k and --top-p then change nothing" in text
    assert "(0 = off; no effect when greedy)" in text
    assert "(1 = off; no effect when greedy)" in text


def test_sample_config_accepts_temperature_zero_and_a_missing_seed():
    assert SampleConfig().seed is None                  # None: a fresh seed each run
    SampleConfig(temperature=0.0).validate()
    SampleConfig(seed=2**63 - 1).validate()
    for bad, msg in ((dict(temperature=-1.0), "temperature must be >= 0 (got -1.0; 0 = greedy)"),
                     (dict(temperature=float("nan")), "temperature must be >= 0"),
                     (dict(seed=-1), "seed must be None (fresh each run) or in [0, 2**63-1] "
                                     "(got -1)"),
                     (dict(seed=2**63), "seed must be None")):
        with pytest.raises(ConfigError) as ei:
            SampleConfig(**bad).validate()
        assert msg in str(ei.value)


# ---------------------------------------------------------------------- 17: fresh seeds

def _seed_line(r) -> int:
    stderr = _err(r)
    assert stderr.startswith("seed ") and stderr.endswith("\n") and stderr.count("\n") == 1, \
        stderr
    n = int(stderr[len("seed "):-1])
    assert 0 <= n <= 2**63 - 1
    return n


def test_each_run_draws_a_fresh_seed_and_reports_it(run):
    a = run_cli("sample", run, "-n", "100", "-v")
    b = run_cli("sample", run, "--length", "100", "--verbose")
    assert a.returncode == 0 and b.returncode == 0
    assert len(a.stdout) == len(b.stdout) == 100
    sa, sb = _seed_line(a), _seed_line(b)
    assert sa != sb and a.stdout != b.stdout
    again = run_cli("sample", run, "-n", "100", "--seed", sa)      # that run, exactly
    assert again.returncode == 0 and again.stdout == a.stdout and _err(again) == ""
    quiet = run_cli("sample", run, "-n", "10")                     # no -v: nothing on stderr
    assert quiet.returncode == 0 and _err(quiet) == "" and len(quiet.stdout) == 10


def test_every_json_object_carries_the_seed(run):
    r = run_cli("sample", run, "-n", "40", "--num-samples", "3", "--json")
    assert r.returncode == 0 and _err(r) == ""
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(recs) == 3 and [x["sample"] for x in recs] == [0, 1, 2]
    seeds = {x["seed"] for x in recs}
    assert len(seeds) == 1
    seed = seeds.pop()
    assert isinstance(seed, int) and 0 <= seed <= 2**63 - 1
    again = run_cli("sample", run, "-n", "40", "--num-samples", "3", "--json", "--seed", seed)
    assert again.returncode == 0 and again.stdout == r.stdout
    fixed = run_cli("sample", run, "-n", "40", "--json", "--seed", "5", "-v")
    fixed2 = run_cli("sample", run, "-n", "40", "--json", "--seed", "5")
    assert fixed.returncode == 0 and _err(fixed) == "seed 5\n"
    assert json.loads(fixed.stdout)["seed"] == 5 and fixed2.stdout == fixed.stdout
    h = run_cli("sample", "--help")
    assert "[default: a fresh seed each run, shown by -v and in --json]" in \
        " ".join(h.stdout.split())


# ---------------------------------------------------------------------- 18: eval reads a pipe

def test_eval_scores_piped_text_like_a_file(run, tmp_path):
    text = make_text(3000, seed=11)
    f = tmp_path / "notes.txt"
    f.write_text(text, encoding="utf-8")
    piped = run_cli("eval", run, "--json", input=text)
    assert piped.returncode == 0, piped.stderr
    rec = json.loads(piped.stdout)
    assert rec["inputs"] == ["-"] and rec["chars"] == len(text) and "split" not in rec
    from_file = run_cli("eval", run, f, "--json")
    assert from_file.returncode == 0
    assert {**json.loads(from_file.stdout), "inputs": ["-"]} == rec
    plain = run_cli("eval", run, input=text)
    assert plain.returncode == 0 and plain.stdout.startswith("loss ")
    assert plain.stdout.endswith(f"  chars {len(text)}\n")
    streams = run_cli("eval", run, "--streams", "2", "--json", input=text)
    assert streams.returncode == 0, streams.stderr
    srec = json.loads(streams.stdout)
    assert srec["streams"] == 2 and srec["chars"] == len(text)
    assert srec["loss"] == pytest.approx(rec["loss"], rel=0.01)


def test_eval_scores_the_split_at_a_terminal_or_when_asked(run, val_chars):
    tty = _run_at_terminal("eval", run, "--json")
    assert tty.returncode == 0, tty.stderr
    rec = json.loads(tty.stdout)
    assert rec["split"] == "val" and rec["chars"] == val_chars - 1
    asked = run_cli("eval", run, "--json", "--split", "val", input="ignored text\n")
    assert asked.returncode == 0 and json.loads(asked.stdout) == rec
    train = run_cli("eval", run, "--json", "--split", "train", input="ignored text\n")
    assert train.returncode == 0 and json.loads(train.stdout)["split"] == "train"
    data = run_cli("eval", run, "--json", "--data", run / "data", input="ignored text\n")
    assert data.returncode == 0 and json.loads(data.stdout)["chars"] == val_chars - 1


def test_eval_refuses_an_empty_stdin(run):
    for r in (_run("eval", run, stdin=subprocess.DEVNULL),           # not a terminal, empty
              run_cli("eval", run, input=""),
              run_cli("eval", run, "-", "--json", input="")):
        assert r.returncode == 1 and r.stdout == ""
        assert _err(r) == EMPTY_STDIN
    for r in (_run("eval", run, "--lines", stdin=subprocess.DEVNULL),
              run_cli("eval", run, "--lines", "--json", input="")):
        assert r.returncode == 1 and r.stdout == ""
        assert _err(r) == ("Error: nothing to score: standard input is empty; give text on "
                            "stdin or INPUT files\n")


def test_eval_lines_blank_lines_and_empty_files(run, tmp_path):
    blank = run_cli("eval", run, "--lines", input="\n\n")
    assert blank.returncode == 0 and blank.stdout.count("\n") == 2
    assert "nan" not in blank.stderr
    assert _err(blank) == "total: no characters scored (the lines are empty)\n"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = run_cli("eval", run, "--lines", empty)
    assert r.returncode == 1 and r.stdout == ""
    assert _err(r) == "Error: nothing to score: the input is empty\n"
    ok = run_cli("eval", run, "--lines", input="the fox\n")
    assert ok.returncode == 0 and ok.stdout.endswith("\t7\tthe fox\n")
    assert _err(ok).startswith("total: loss ") and ok.stderr.endswith("  chars 7\n")


def test_eval_split_with_text_input_is_a_usage_error(run, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("the fox\n")
    r = run_cli("eval", run, f, "--split", "val")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.endswith("Error: give INPUT files or --split, not both\n"), r.stderr
    r = run_cli("eval", run, "--lines", "--split", "test", input="the fox\n")
    assert r.returncode == 2
    assert r.stderr.endswith("Error: --lines scores text INPUT, not --data or --split\n")
    h = run_cli("eval", "--help")
    text = " ".join(h.stdout.split())
    assert "without INPUT, text piped to stdin (cat notes.txt | charrnn eval run/)" in text
    assert "without INPUT at a terminal, the val split of the data the run was trained on" \
        in text
    assert "An empty stdin is an error." in text
