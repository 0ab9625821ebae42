"""Training: learning, determinism, exact resume (in-process and after SIGKILL), lock,
signals, limits, early stopping, divergence, option conflicts, changed corpus, --json."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from charrnn.store.checkpoint import read_checkpoint
from charrnn.model.network import Model

from conftest import run_main as invoke
from conftest import make_text, run_cli
from charrnn.store.checkpoint import load_model

SMALL = ["--cell", "lstm", "--layers", "1", "--hidden", "16", "--batch-size", "4",
         "--seq-len", "16", "--eval-every", "5"]


def params(run, name="latest.safetensors"):
    return load_model(run / name).flat.copy()


def test_loss_decreases_and_run_dir_layout(text_file, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = invoke(["train", text_file, "-o", run, *SMALL, "--max-iters", "60",
                             "--json"], capsys)
    assert code == 0, err
    recs = [json.loads(line) for line in out.splitlines()]
    evals = [r for r in recs if r["event"] == "eval"]
    assert [r["iter"] for r in evals] == list(range(5, 61, 5))
    assert recs[-1]["event"] == "done" and recs[-1]["stopped"] == "max_iters"
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.3
    assert evals[-1]["val_loss"] < math.log(len(load_model(run).vocab))
    assert abs(evals[-1]["val_bpc"] - evals[-1]["val_loss"] / math.log(2)) < 1e-5
    for name in ("latest.safetensors", "best.safetensors", "metrics.jsonl", "data/meta.json"):
        assert (run / name).exists(), name
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["iter"] for m in metrics] == [r["iter"] for r in evals]
    ck = read_checkpoint(run / "latest.safetensors")
    assert ck.kind == "training" and ck.train_state["iteration"] == 60
    assert ck.vocab is not None and ck.config.hidden_size == 16
    assert "optim.exp_avg" in ck.tensors and "state.c" in ck.tensors
    assert "reached --max-iters: iteration 60" in err
    assert not list(run.glob(".*tmp*")) and not (run / ".lock").exists()


def test_deterministic(text_file, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        code, _, err = invoke(["train", text_file, "-o", run, *SMALL, "--max-iters", "12",
                               "--dropout", "0.2", "--layers", "2"], capsys)
        assert code == 0, err
    assert np.array_equal(params(a), params(b))
    assert np.array_equal(params(a, "best.safetensors"), params(b, "best.safetensors"))


@pytest.mark.parametrize("extra", [
    [],
    ["--cell", "gru", "--optimizer", "sgd", "--dropout", "0.3", "--layers", "2"],
    ["--optimizer", "rmsprop", "--warmup-iters", "3", "--embed", "8", "--residual", "--layers", "2"],
])
def test_resume_equals_uninterrupted(text_file, tmp_path, capsys, extra):
    """Stop at 9 (mid-epoch, carried state) and resume to 23 == straight to 23."""
    full, part = tmp_path / "full", tmp_path / "part"
    args = [*SMALL, *extra, "--max-epochs", "0"]
    code, _, err = invoke(["train", text_file, "-o", full, *args, "--max-iters", "23"], capsys)
    assert code == 0, err
    code, _, err = invoke(["train", text_file, "-o", part, *args, "--max-iters", "9"], capsys)
    assert code == 0, err
    code, _, err = invoke(["train", text_file, "-o", part, *args, "--max-iters", "23"], capsys)
    assert code == 0, err
    assert f"resuming {part} from iteration 9" in err
    assert np.array_equal(params(full), params(part))
    ts_full = read_checkpoint(full / "latest.safetensors").train_state
    ts_part = read_checkpoint(part / "latest.safetensors").train_state
    for key in ("iteration", "epoch", "pos", "best_val_loss", "rng", "optimizer"):
        assert ts_full[key] == ts_part[key], key


def test_resume_takes_saved_options_and_refuses_conflicts(text_file, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, _ = invoke(["train", text_file, "-o", run, *SMALL, "--max-iters", "5"], capsys)
    assert code == 0
    # a plain command resumes with the saved configuration
    code, _, err = invoke(["train", text_file, "-o", run, "--max-iters", "10",
                           "--eval-every", "5"], capsys)
    assert code == 0, err
    assert load_model(run).config.hidden_size == 16
    code, out, err = invoke(["train", text_file, "-o", run, "--hidden", "32",
                             "--max-iters", "20"], capsys)
    assert code == 1 and out == ""
    assert err == (f"Error: {run} was trained with --hidden 16, but this command asks for "
                   "--hidden 32; drop the option to resume, or add --restart to start a "
                   "new run\n")
    code, _, err = invoke(["train", text_file, "-o", run, *SMALL, "--hidden", "32",
                           "--max-iters", "5", "--restart"], capsys)
    assert code == 0, err
    assert load_model(run).config.hidden_size == 32


def test_low_memory_trains_alike_and_can_be_toggled_on_resume(text_file, tmp_path, capsys):
    """--low-memory recomputes the gates in backward: the losses are the same and the
    weights agree to rounding; a run may resume with it on or off."""
    plain, low = tmp_path / "plain", tmp_path / "low"
    args = [*SMALL, "--layers", "2", "--seq-len", "20", "--max-epochs", "0", "--json"]
    code, out_p, err = invoke(["train", text_file, "-o", plain, *args, "--max-iters", "10"],
                              capsys)
    assert code == 0, err
    code, out_l, err = invoke(["train", text_file, "-o", low, *args, "--max-iters", "5",
                               "--low-memory"], capsys)
    assert code == 0, err
    code, out_l2, err = invoke(["train", text_file, "-o", low, *args, "--max-iters", "10",
                                "--no-low-memory"], capsys)
    assert code == 0, err
    ev_p = [json.loads(x) for x in out_p.splitlines() if '"eval"' in x]
    ev_l = [json.loads(x) for x in (out_l + out_l2).splitlines() if '"eval"' in x]
    assert [r["iter"] for r in ev_p] == [r["iter"] for r in ev_l] == [5, 10]
    for a, b in zip(ev_p, ev_l):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    np.testing.assert_allclose(params(plain), params(low), rtol=1e-4, atol=1e-6)
    ts = read_checkpoint(low / "latest.safetensors").train_state
    assert ts["train_config"]["low_memory"] is False


def test_too_little_memory_turns_on_low_memory_or_refuses(text_file, tmp_path, capsys,
                                                          monkeypatch):
    import charrnn.training.memory as T
    from charrnn.config import ModelConfig, TrainConfig

    args = ["--layers", "1", "--hidden", "16", "--batch-size", "128", "--seq-len", "32",
            "--eval-every", "5", "--max-iters", "3"]
    mcfg = ModelConfig(cell="lstm", num_layers=1, hidden_size=16, vocab_size=40)
    tcfg = TrainConfig(batch_size=128, seq_len=32)         # chunks of 8 steps
    full = T.estimate_memory(mcfg, tcfg)
    low = T.estimate_memory(mcfg, tcfg.replace(low_memory=True))
    assert low < full
    run = tmp_path / "run"
    monkeypatch.setattr(T, "_available_memory", lambda: int((low + full) / 2 / 0.9))
    code, _, err = invoke(["train", text_file, "-o", run, *args], capsys)
    assert code == 0, err
    assert "training with --low-memory" in err
    ts = read_checkpoint(run / "latest.safetensors").train_state
    assert ts["train_config"]["low_memory"] is True
    monkeypatch.setattr(T, "_available_memory", lambda: int(low / 2))
    code, out, err = invoke(["train", text_file, "-o", tmp_path / "r2", *args], capsys)
    assert code == 1 and out == ""
    last = err.splitlines()[-1]
    assert last.startswith("Error: this model and batch need about ") and \
        last.endswith(" MiB is available; lower --batch-size, --seq-len or --hidden") and \
        "MiB of memory (with --low-memory) but only " in last and "Traceback" not in err


def test_corrupt_latest_is_refused(text_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert invoke(["train", text_file, "-o", run, *SMALL, "--max-iters", "5"], capsys)[0] == 0
    latest = run / "latest.safetensors"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    code, out, err = invoke(["train", text_file, "-o", run, "--max-iters", "10"], capsys)
    assert code == 1 and out == ""
    assert err.startswith(f"Error: {latest}: ") and err.count("\n") == 1


def test_lock_refuses_second_run_with_exit_75(text_file, tmp_path, capsys):
    from charrnn.training.lock import RunLock
    run = tmp_path / "run"
    with RunLock(run):
        code, _, err = invoke(["train", text_file, "-o", run, *SMALL, "--max-iters", "5"],
                              capsys)
    assert code == 75
    assert err.startswith(f"Error: {run} is in use by another charrnn train (pid ")
    assert not (run / "latest.safetensors").exists()


def test_max_time_stops_with_checkpoint(text_file, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = invoke(["train", text_file, "-o", run, *SMALL, "--max-epochs", "0",
                             "--max-time", "2s", "--json"], capsys)
    assert code == 0, err
    done = json.loads(out.splitlines()[-1])
    assert done["stopped"] == "max_time" and done["seconds"] < 30
    assert read_checkpoint(run / "latest.safetensors").train_state["iteration"] == \
        done["iteration"]


def test_early_stopping(text_file, tmp_path, capsys, monkeypatch):
    from charrnn.training import loop as T
    losses = iter([3.0, 2.0, 2.5, 2.1, 2.2, 1.0, 1.0])
    monkeypatch.setattr(T.Trainer, "evaluate", lambda self, *a, **kw: next(losses))
    run = tmp_path / "run"
    code, out, err = invoke(["train", text_file, "-o", run, *SMALL, "--eval-every", "1",
                             "--patience", "3", "--max-iters", "100", "--json"], capsys)
    assert code == 0, err
    done = json.loads(out.splitlines()[-1])
    assert done["stopped"] == "patience" and done["iteration"] == 5
    assert done["best_val_loss"] == 2.0 and done["best_iteration"] == 2
    assert "early stopping: no improvement in 3 evaluations" in err


def test_divergence_keeps_last_good_checkpoint(text_file, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert invoke(["train", text_file, "-o", run, *SMALL, "--max-iters", "5"], capsys)[0] == 0
    before = params(run)
    real = Model.forward_backward

    def nan_after_two(self, *a, **kw):
        loss, st = real(self, *a, **kw)
        if nan_after_two.warming:
            return loss, st                    # the trainer's kernel warm-up, not a step
        nan_after_two.calls += 1
        return (float("nan") if nan_after_two.calls > 2 else loss), st
    nan_after_two.calls, nan_after_two.warming = 0, False
    import charrnn.training.loop as T

    real_warm = T.Trainer._warm_up

    def warm(self):
        nan_after_two.warming = True
        try:
            real_warm(self)
        finally:
            nan_after_two.warming = False
    monkeypatch.setattr(T.Trainer, "_warm_up", warm)
    monkeypatch.setattr(Model, "forward_backward", nan_after_two)
    code, _, err = invoke(["train", text_file, "-o", run, "--max-iters", "50"], capsys)
    assert code == 1
    assert err.splitlines()[-1] == (f"Error: loss became nan at iteration 8; the last good checkpoint "
                   f"{run / 'latest.safetensors'} is kept; try a lower --lr (it was 0.002)")
    assert np.array_equal(params(run), before)


def test_init_from_refuses_unknown_characters(text_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert invoke(["train", text_file, "-o", run, *SMALL, "--max-iters", "5"], capsys)[0] == 0
    other = tmp_path / "other.txt"
    other.write_text(make_text(5000, seed=3) + "Ünïcode €\n", encoding="utf-8")
    code, _, err = invoke(["train", other, "-o", tmp_path / "ft", "--init-from", run,
                           "--max-iters", "5", "--batch-size", "4", "--seq-len", "16"], capsys)
    assert code == 1
    assert err.splitlines()[-1] == (
        "Error: the training data has characters not in the model's vocabulary: 'Ü', 'ï', "
        "'€'; use --grow-vocab to extend the vocabulary, or prepare the data with the "
        "model's vocabulary")
    assert not (tmp_path / "ft" / "latest.safetensors").exists()
    # fine-tuning on text the vocabulary covers works and starts from those weights
    same = tmp_path / "same.txt"
    same.write_text(make_text(5000, seed=4), encoding="utf-8")
    code, _, err = invoke(["train", same, "-o", tmp_path / "ft2", "--init-from", run,
                           "--max-iters", "5", "--batch-size", "4", "--seq-len", "16"], capsys)
    assert code == 0, err
    assert f"initialised from {run / 'best.safetensors'}" in err


def test_corpus_change_continues_and_grows_vocab(tmp_path, capsys):
    corpus = tmp_path / "log.txt"
    corpus.write_text(make_text(12_000, seed=1), encoding="utf-8")
    run = tmp_path / "run"
    assert invoke(["train", corpus, "-o", run, *SMALL, "--max-iters", "10"], capsys)[0] == 0
    old = load_model(run / "latest.safetensors")
    # unchanged corpus: nothing re-prepared, plain resume
    code, _, err = invoke(["train", corpus, "-o", run, "--max-iters", "15"], capsys)
    assert code == 0 and "corpus changed" not in err
    # the corpus grows, with a new character
    with open(corpus, "a", encoding="utf-8") as f:
        f.write(make_text(6000, seed=2) + "~ tilde ~\n")
    code, _, err = invoke(["train", corpus, "-o", run, "--max-iters", "20"], capsys)
    assert code == 1
    assert "'~'" in err and "--grow-vocab" in err
    code, _, err = invoke(["train", corpus, "-o", run, "--max-iters", "20", "--grow-vocab"],
                          capsys)
    assert code == 0, err
    assert "corpus changed: 12,000 -> 18,010 chars; continuing from iteration 15 on the new " \
           "data" in err
    assert "vocabulary grown by 1 character(s) ('~')" in err
    new = load_model(run / "latest.safetensors")
    V = old.config.vocab_size
    assert new.config.vocab_size == V + 1 and new.vocab.chars[:V] == old.vocab.chars
    ts = read_checkpoint(run / "latest.safetensors").train_state
    assert ts["iteration"] == 20


def _wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def _popen(*args):
    env = dict(os.environ, CHARRNN_THREADS="2")
    return subprocess.Popen([sys.executable, "-m", "charrnn", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_sigkill_then_resume_is_bit_exact(text_file, tmp_path):
    args = [*SMALL, "--max-epochs", "0", "--max-iters", "4000", "--save-every", "7"]
    ref = run_cli("train", text_file, "-o", tmp_path / "ref", *args)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "run"
    proc = _popen("train", text_file, "-o", run, *args)
    _wait_for(run / "latest.safetensors", proc)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    killed_at = read_checkpoint(run / "latest.safetensors").train_state["iteration"]
    assert 0 < killed_at < 4000
    res = run_cli("train", text_file, "-o", run, *args)
    assert res.returncode == 0, res.stderr
    assert f"resuming {run} from iteration {killed_at}" in res.stderr
    assert np.array_equal(params(run), params(tmp_path / "ref"))


def test_sigterm_saves_and_exits_143(text_file, tmp_path):
    run = tmp_path / "run"
    proc = _popen("train", text_file, "-o", run, *SMALL, "--max-epochs", "0",
                  "--max-iters", "100000", "--eval-every", "1000")
    _wait_for(run / ".lock", proc)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    it = read_checkpoint(run / "latest.safetensors").train_state["iteration"]
    assert err.endswith(f"Error: stopped by SIGTERM at iteration {it}; saved "
                        f"{run / 'latest.safetensors'} (run the same command again to "
                        "resume)\n")
    assert out == ""


def test_an_ignored_sigint_stays_ignored(text_file, tmp_path):
    """`charrnn train ... &` in a script (or nohup) starts with SIGINT ignored: a Ctrl-C
    meant for the shell does not stop it, as with other Unix tools; SIGTERM still does."""
    run = tmp_path / "run"
    env = dict(os.environ, CHARRNN_THREADS="2")
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(text_file), "-o",
                             str(run), *map(str, SMALL), "--max-epochs", "0", "--max-iters",
                             "100000", "--eval-every", "20"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        for _ in range(2):                      # at start-up, then while training
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
        _wait_for(run / "latest.safetensors", proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, err
    assert "SIGINT" not in err


def test_thread_count_change_on_one_numba_cache(text_file, tmp_path):
    """Kernels cached by a 1-thread process load and run in a 2-thread one (and back):
    train with --threads 1, resume with --threads 2, then sample and eval with each."""
    run = tmp_path / "run"
    r = run_cli("train", text_file, "-o", run, *SMALL, "--max-iters", "5", "--threads", "1",
                "--dropout", "0.1", "--layers", "2")
    assert r.returncode == 0, r.stderr
    r = run_cli("train", text_file, "-o", run, "--max-iters", "10", "--threads", "2")
    assert r.returncode == 0, r.stderr
    for n in ("2", "1"):
        s = run_cli("sample", run, "-n", "50", "--seed", "3", "--threads", n)
        assert s.returncode == 0 and len(s.stdout) >= 50, s.stderr
        e = run_cli("eval", run, "--split", "val", "--threads", n)
        assert e.returncode == 0 and e.stdout.startswith("loss "), e.stderr
