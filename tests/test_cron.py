"""Unattended retraining (issue: nightly cron runs on a growing corpus), played in real
subprocesses: three nights, a published model that is always loadable, exit codes."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np

from charrnn.store.checkpoint import read_checkpoint
from charrnn.model.network import Model

from conftest import make_text, run_cli
from charrnn.store.checkpoint import load_model

ARGS = ["--layers", "1", "--hidden", "16", "--batch-size", "4", "--seq-len", "16",
        "--eval-every", "5", "--max-epochs", "0"]


def test_three_nights(tmp_path):
    corpus, run, pub = tmp_path / "corpus.txt", tmp_path / "run", tmp_path / "pub.safetensors"
    corpus.write_text(make_text(10_000, seed=1), encoding="utf-8")

    # night 1
    r = run_cli("train", corpus, "-o", run, *ARGS, "--max-iters", "10", "--publish", pub)
    assert r.returncode == 0, r.stderr
    assert load_model(pub).vocab is not None
    v1 = load_model(run / "latest.safetensors")

    # night 2: the corpus grows with the same characters
    with open(corpus, "a", encoding="utf-8") as f:
        f.write(make_text(4_000, seed=2))
    r = run_cli("train", corpus, "-o", run, *ARGS, "--max-iters", "20", "--publish", pub)
    assert r.returncode == 0, r.stderr
    assert ("corpus changed: 10,000 -> 14,000 chars; continuing from iteration 10 on the "
            "new data") in r.stderr
    assert "re-scored best.safetensors on the new validation split" in r.stderr
    ts = read_checkpoint(run / "latest.safetensors").train_state
    assert ts["iteration"] == 20 and ts["data_chars"] == 14_000

    # night 3: new characters; refused, nothing written
    with open(corpus, "a", encoding="utf-8") as f:
        f.write("Grüße aus Köln\n" + make_text(2_000, seed=3))
    before = {p.name: p.read_bytes() for p in (run / "latest.safetensors", run / "best.safetensors",
                                               run / "data" / "meta.json", pub)}
    r = run_cli("train", corpus, "-o", run, *ARGS, "--max-iters", "30", "--publish", pub)
    assert r.returncode == 1
    err = r.stderr.splitlines()[-1]
    assert err.startswith("Error: ") and "'ß'" in err and "'ö'" in err and "'ü'" in err
    assert "--grow-vocab" in err
    after = {p.name: p.read_bytes() for p in (run / "latest.safetensors", run / "best.safetensors",
                                              run / "data" / "meta.json", pub)}
    assert before == after

    r = run_cli("train", corpus, "-o", run, *ARGS, "--max-iters", "30", "--publish", pub,
                "--grow-vocab")
    assert r.returncode == 0, r.stderr
    assert "vocabulary grown by 4 character(s) ('K', 'ß', 'ö', 'ü')" in r.stderr
    assert "re-scored best.safetensors on the new validation split" in r.stderr
    v3 = load_model(run / "latest.safetensors")
    assert v3.vocab.chars[:len(v1.vocab.chars)] == v1.vocab.chars
    assert load_model(pub).config.vocab_size == v3.config.vocab_size


def test_grow_keeps_every_existing_row():
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.model.optim import Optimizer
    from charrnn.training.runs import grow_model_vocab
    from charrnn.store.vocab import Vocab

    vocab = Vocab.from_text("abcdef \n")
    for embed in (0, 4):
        cfg = ModelConfig(vocab_size=len(vocab), hidden_size=5, num_layers=2, embed_size=embed)
        m = Model.from_config(cfg, seed=3)
        m.vocab = vocab
        opt = Optimizer(TrainConfig(), m)
        for buf in opt.state_tensors().values():
            buf[...] = np.arange(buf.size) + 1.0
        new_vocab = vocab.extend(["z", "é"])
        g, gopt = grow_model_vocab(m, new_vocab, seed=9, optimizer=opt)
        V = len(vocab)
        assert g.vocab.chars[:V] == vocab.chars
        for name in m.param_names:
            old, new = m.params[name], g.params[name]
            if name == "rnn.weight_ih_l0" and embed == 0:
                assert np.array_equal(new[:, :V], old) and new.shape[1] == V + 2
                assert np.abs(new[:, V:]).max() > 0
            elif name in ("embedding.weight", "head.weight", "head.bias"):
                assert np.array_equal(new[:V], old) and new.shape[0] == V + 2
            else:
                assert np.array_equal(new, old)
        for key, buf in gopt.state_tensors().items():
            ov, nv = m._views(opt.state_tensors()[key]), g._views(buf)
            assert np.array_equal(nv["head.weight"][:V], ov["head.weight"])
            assert not nv["head.weight"][V:].any() and not nv["head.bias"][V:].any()
        assert gopt.step_count == opt.step_count


def test_published_model_is_always_loadable(tmp_path):
    corpus, run, pub = tmp_path / "c.txt", tmp_path / "run", tmp_path / "pub.safetensors"
    corpus.write_text(make_text(15_000, seed=5), encoding="utf-8")
    env = dict(os.environ, CHARRNN_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "train", corpus, "-o", run,
                             *ARGS, "--eval-every", "1", "--max-iters", "60", "--publish", pub],
                            stderr=subprocess.PIPE, env=env, text=True)
    loads, errors = 0, []
    stop = threading.Event()

    def reader():
        nonlocal loads
        while not stop.is_set():
            if pub.exists():
                try:
                    load_model(pub)
                    loads += 1
                except Exception as e:      # any failure to read is a test failure
                    errors.append(repr(e))
    t = threading.Thread(target=reader)
    t.start()
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        stop.set()
        t.join()
    assert proc.returncode == 0, err
    assert errors == [] and loads > 0
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_max_time_is_success_for_cron(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(8_000), encoding="utf-8")
    t0 = time.time()
    r = run_cli("train", corpus, "-o", tmp_path / "run", *ARGS, "--max-time", "3s",
                "--log-file", tmp_path / "train.log")
    assert r.returncode == 0, r.stderr
    assert time.time() - t0 < 120
    assert (tmp_path / "run" / "latest.safetensors").exists()
    log = (tmp_path / "train.log").read_text()
    assert "reached --max-time" in log
    r = run_cli("train", corpus, "-o", tmp_path / "run", *ARGS, "--max-time", "1s", "--quiet")
    assert r.returncode == 0 and r.stderr == ""


def test_info_on_a_published_model_tells_a_monitor_what_it_needs(tmp_path):
    import hashlib
    import json
    corpus, run, pub = tmp_path / "c.txt", tmp_path / "run", tmp_path / "pub.safetensors"
    corpus.write_text(make_text(8_000, seed=9), encoding="utf-8")
    r = run_cli("train", corpus, "-o", run, *ARGS, "--max-iters", "10", "--publish", pub)
    assert r.returncode == 0, r.stderr
    r = run_cli("info", pub, "--json")
    assert r.returncode == 0, r.stderr
    tr = json.loads(r.stdout)["training"]
    assert tr["iteration"] == 10 and tr["best_val_bpc"] > 0 and tr["elapsed"] > 0
    assert tr["corpus_sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert tr["data_chars"] == 8_000
