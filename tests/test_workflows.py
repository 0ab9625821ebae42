"""Everyday and unattended use, driven as users drive it: the README's crontab line over
several nights of a growing corpus, fine-tuning and resume, deadlines, signals, run
directories that cannot be used, --publish and --log-file (issue 28)."""
from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_text, run_cli

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = ["--layers", "1", "--hidden", "16", "--batch-size", "4", "--seq-len", "16"]


def _errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("Error: ")]


def _info(path) -> dict:
    r = run_cli("info", path, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _append(path: Path, n: int, seed: int) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(make_text(n, seed=seed))


@pytest.fixture
def charrnn_env(tmp_path):
    """An environment whose PATH has a `charrnn` that runs this checkout's package, as
    a shell (cron) would find it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "charrnn"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m charrnn "$@"\n')
    exe.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    env.setdefault("CHARRNN_THREADS", "2")
    return env


# ---------------------------------------------------------------------- cron

def _readme_cron_line() -> str:
    m = re.search(r"^30 2 \* \* \*\s+(cd /srv/lm && charrnn train .*)$", README.read_text(),
                  re.M)
    assert m, "README.md has no crontab line of the form '30 2 * * *  cd /srv/lm && ...'"
    return m.group(1)


def test_readme_cron_line_trains_further_every_night(tmp_path, charrnn_env):
    """The README's line, unchanged but for its folder, on a corpus that grows every
    night: each night trains (its 50 minutes scaled down to 3 s by the test hook),
    latest and the published model follow the corpus, stderr stays empty (--quiet),
    and the log gets every night's summary."""
    srv = tmp_path / "srv"
    srv.mkdir()
    line = _readme_cron_line().replace("/srv/lm", str(srv))
    env = dict(charrnn_env, CHARRNN_TEST_TIME_SCALE="1000")        # 50m -> 3 s
    corpus = srv / "corpus.txt"
    iterations, published = [], []
    for night in range(3):
        _append(corpus, 15_000, seed=night)
        if night == 1:                           # a character the model has not seen
            with open(corpus, "a", encoding="utf-8") as f:
                f.write("Ω")
        r = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "" and r.stderr == ""
        info = _info(srv / "run" / "latest.safetensors")
        latest = info["training"]
        assert latest["data_chars"] == 15_000 * (night + 1) + (night >= 1)   # its corpus
        assert ("Ω" in info["vocab"]["preview"]) == (night >= 1)
        iterations.append(latest["iteration"])
        published.append(_info(srv / "model.safetensors")["training"]["iteration"])
    assert iterations[0] > 0 and iterations[0] < iterations[1] < iterations[2]
    assert published[2] > published[0]
    log = (srv / "train.log").read_text()
    assert log.count("reached --max-time") == 3
    assert log.count("corpus changed") == 2
    assert "nothing to do" not in log and "Error" not in log


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A tiny trained run (5 iterations) and its corpus."""
    d = tmp_path_factory.mktemp("base")
    corpus = d / "corpus.txt"
    corpus.write_text(make_text(6000, seed=1), encoding="utf-8")
    r = run_cli("train", corpus, "-o", d / "run", *TINY, "--max-iters", "5")
    assert r.returncode == 0, r.stderr
    return corpus, d / "run"


def _copy_run(base_run, tmp_path):
    """A run of its own, trained as base_run was (a copied run would see its corpus at
    another path: a changed corpus)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(base_run[0].read_text(encoding="utf-8"), encoding="utf-8")
    r = run_cli("train", corpus, "-o", tmp_path / "run", *TINY, "--max-iters", "5")
    assert r.returncode == 0, r.stderr
    return corpus, tmp_path / "run"


def test_startup_line_names_model_data_and_threads(base_run, tmp_path):
    corpus, run = _copy_run(base_run, tmp_path)
    r = run_cli("train", corpus, "-o", run, "--max-iters", "6")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^model LSTM 1x16 \([\d,]+ parameters, float32\); data 5,700 training "
                     r"chars \(an epoch is \d+ iterations of 4x16\), 300 validation, "
                     r"vocabulary \d+; 2 thread\(s\)$", r.stderr, re.M), r.stderr


def test_nothing_to_do_is_one_line_and_records_a_new_corpus(base_run, tmp_path):
    corpus, run = _copy_run(base_run, tmp_path)
    before = (run / "latest.safetensors").read_bytes()
    r = run_cli("train", corpus, "-o", run, "--max-iters", "5")
    assert r.returncode == 0, r.stderr
    todo = [ln for ln in r.stderr.splitlines() if ln.startswith("nothing to do")]
    assert len(todo) == 1 and re.fullmatch(
        rf"nothing to do: {re.escape(str(run))} is at iteration 5, epoch 0\.\d\d, and has "
        r"reached --max-iters 5; give --max-time, --max-iters or a higher --max-epochs to "
        r"train further", todo[0]), r.stderr
    assert "saved" not in r.stderr and "model LSTM" not in r.stderr
    assert (run / "latest.safetensors").read_bytes() == before     # nothing rewritten
    _append(corpus, 3000, seed=7)
    r = run_cli("train", corpus, "-o", run, "--max-iters", "5", "--json")
    assert r.returncode == 0, r.stderr
    assert "; the new corpus is recorded in latest" in r.stderr and "saved" not in r.stderr
    done = json.loads(r.stdout.splitlines()[-1])
    assert done["iterations_this_run"] == 0 and done["nothing_to_do"] is True
    assert _info(run / "latest.safetensors")["training"]["data_chars"] == 9000


def test_after_a_corpus_change_val_and_best_use_the_new_split(base_run, tmp_path):
    corpus, run = _copy_run(base_run, tmp_path)
    corpus.write_text(make_text(6000, seed=1) + make_text(3000, seed=9), encoding="utf-8")
    r = run_cli("train", corpus, "-o", run, "--max-iters", "6", "--json")
    assert r.returncode == 0, r.stderr
    rescored = float(re.search(r"re-scored best.safetensors on the new validation split: "
                               r"loss ([\d.]+)", r.stderr).group(1))
    done = json.loads(r.stdout.splitlines()[-1])
    val, best = done["val_loss"], done["best_val_loss"]
    assert best == pytest.approx(min(val, rescored), abs=1e-4)
    # the validation split of the new data: the val scored at iteration 6 is the new one
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["iter"] == 6 and metrics[-1]["val_loss"] == pytest.approx(val, abs=1e-6)


# ---------------------------------------------------------------------- places

def _dangling(tmp_path):
    p = tmp_path / "run"
    p.symlink_to(tmp_path / "nowhere")
    return p


def _lock_dir(tmp_path):
    (tmp_path / "run" / ".lock").mkdir(parents=True)
    return tmp_path / "run"


def _lock_dangling(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(tmp_path / "nowhere")
    return tmp_path / "run"


def _under_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    return tmp_path / "afile" / "run"


def _a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    return tmp_path / "afile"


def _data_dir(tmp_path):
    from charrnn.config import DataConfig
    from charrnn.store.prepare import prepare

    (tmp_path / "t.txt").write_text("some text to prepare, some more text to prepare\n" * 40)
    prepare([str(tmp_path / "t.txt")], tmp_path / "data", DataConfig(), show_progress=False)
    return tmp_path / "data"


@pytest.mark.parametrize("make, message", [
    (_a_file, "afile: exists and is not a directory"),
    (_data_dir, "data is a prepared data directory, not a run directory"),
    (_under_file, "cannot create the run directory (a part of the path is a file, not a "
                  "folder)"),
    (lambda tmp_path: Path("/proc/charrnn-test-run"), "cannot create the run directory"),
    (_dangling, "is a symbolic link to"),
    (_lock_dir, ".lock is a directory, not a charrnn lock file"),
    (_lock_dangling, ".lock is a symbolic link, not a charrnn lock file"),
])
def test_unusable_run_directory_is_exit_1_not_75(make, message, tmp_path, base_run):
    run = make(tmp_path)
    t0 = time.monotonic()
    r = run_cli("train", base_run[0], "-o", run, *TINY, "--max-iters", "1", timeout=60)
    assert time.monotonic() - t0 < 30                  # no spinning on a dangling lock
    assert r.returncode == 1, r.stderr
    errors = _errors(r.stderr)
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------------- publish, log

def test_publish_is_checked_before_the_first_step(tmp_path, base_run):
    (tmp_path / "pubdir").mkdir()
    pub = tmp_path / "missing" / "model.safetensors"
    r = run_cli("train", base_run[0], "-o", tmp_path / "run", *TINY, "--max-iters", "3",
                "--publish", pub)
    assert r.returncode == 1
    assert _errors(r.stderr) == [f"Error: --publish {pub}: the folder {pub.parent} does not "
                                 "exist"], r.stderr
    assert not (tmp_path / "run" / "latest.safetensors").exists()   # no step ran
    # a folder where a file should be is a bad option value: a usage error
    r = run_cli("train", base_run[0], "-o", tmp_path / "run", *TINY, "--max-iters", "3",
                "--publish", tmp_path / "pubdir")
    assert r.returncode == 2 and "is a directory" in r.stderr, r.stderr
    assert not (tmp_path / "run" / "latest.safetensors").exists()


def test_failed_publish_keeps_latest_and_logs_the_error(tmp_path, base_run):
    """A publish that fails half-way (the disk fills) stops the run with one Error
    line, in the log file too (--quiet: stderr may go nowhere), names no temporary file,
    and leaves the run directory with its latest checkpoint."""
    pub_dir = tmp_path / "pub"
    pub_dir.mkdir()
    log = tmp_path / "train.log"
    r = run_cli("train", base_run[0], "-o", tmp_path / "run", *TINY, "--max-iters", "3",
                "--publish", pub_dir / "model.safetensors", "--log-file", log, "--quiet",
                env={"CHARRNN_TEST_ENOSPC": "model.safetensors"})
    assert r.returncode == 1, r.stderr
    errors = _errors(r.stderr)
    assert len(errors) == 1 and "model.safetensors: no space left on device" in errors[0]
    assert ".tmp-" not in r.stderr
    assert errors[0] in log.read_text()
    assert (tmp_path / "run" / "latest.safetensors").is_file()
    assert list(pub_dir.iterdir()) == []                   # no temporary left behind


def test_log_file_that_cannot_be_written_is_an_error(tmp_path, base_run):
    log = tmp_path / "missing" / "train.log"
    r = run_cli("train", base_run[0], "-o", tmp_path / "run", *TINY, "--max-iters", "1",
                "--log-file", log)
    assert r.returncode == 1
    assert _errors(r.stderr) == [f"Error: --log-file {log}: cannot append to it "
                                 "(No such file or directory)"]
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- fine-tuning, resume

def test_init_from_with_grow_vocab(tmp_path, base_run):
    corpus, run = base_run
    other = tmp_path / "other.txt"
    other.write_text(make_text(5000, seed=3) + "Ünïcode €\n", encoding="utf-8")
    r = run_cli("train", other, "-o", tmp_path / "ft", "--init-from", run, "--grow-vocab",
                "--max-iters", "3", "--batch-size", "4", "--seq-len", "16")
    assert r.returncode == 0, r.stderr
    assert "vocabulary grown by 3 character(s) ('Ü', 'ï', '€')" in r.stderr
    info = _info(tmp_path / "ft" / "latest.safetensors")
    assert info["vocab"]["size"] == _info(run / "latest.safetensors")["vocab"]["size"] + 3


def test_a_different_init_from_on_an_existing_run_is_refused(tmp_path, base_run):
    corpus, run = base_run
    ft = tmp_path / "ft"
    r = run_cli("train", corpus, "-o", ft, "--init-from", run / "latest.safetensors",
                "--max-iters", "2", "--batch-size", "4", "--seq-len", "16")
    assert r.returncode == 0, r.stderr
    # the same command again resumes
    r = run_cli("train", corpus, "-o", ft, "--init-from", run / "latest.safetensors",
                "--max-iters", "3", "--batch-size", "4", "--seq-len", "16")
    assert r.returncode == 0, r.stderr
    r = run_cli("train", corpus, "-o", ft, "--init-from", run / "best.safetensors",
                "--max-iters", "4")
    assert r.returncode == 1
    assert _errors(r.stderr) == [
        f"Error: {ft} already has a checkpoint and was started from "
        f"{(run / 'latest.safetensors').resolve()}; --init-from {run / 'best.safetensors'} "
        "would be ignored. Drop --init-from to resume, or add --restart to start over from "
        f"{run / 'best.safetensors'}"]


def test_optimizer_settings_may_change_on_resume(tmp_path, base_run):
    corpus, run = _copy_run(base_run, tmp_path)
    r = run_cli("train", corpus, "-o", run, "--max-iters", "7", "--lr", "0.001",
                "--schedule", "cosine", "--warmup-iters", "2", "--clip", "1",
                "--weight-decay", "0.01", "--dropout", "0.1")
    assert r.returncode == 0, r.stderr
    changed = [ln for ln in r.stderr.splitlines() if ln.startswith("changed on resume: ")]
    assert changed == ["changed on resume: --dropout 0.0 -> 0.1, --clip 5.0 -> 1.0, "
                       "--lr 0.002 -> 0.001, --max-iters 5 -> 7, --schedule constant -> "
                       "cosine, --warmup-iters 0 -> 2, --weight-decay 0.0 -> 0.01"], r.stderr
    info = _info(run / "latest.safetensors")
    assert info["config"]["dropout"] == 0.1
    assert info["training"]["train_config"]["lr"] == 0.001
    r = run_cli("train", corpus, "-o", run, "--max-iters", "8", "--hidden", "32")
    assert r.returncode == 1
    assert "add --restart" in _errors(r.stderr)[0]


# ---------------------------------------------------------------------- time, signals

@pytest.fixture(scope="module")
def big_val(tmp_path_factory):
    """Prepared data with a large validation split (a pass takes a few seconds)."""
    d = tmp_path_factory.mktemp("bigval")
    (d / "big.txt").write_text(make_text(400_000, seed=5), encoding="utf-8")
    r = run_cli("prepare", d / "big.txt", "-o", d / "data", "--val-frac", "0.9")
    assert r.returncode == 0, r.stderr
    return d / "data"


def test_max_time_includes_the_last_evaluation_and_save(tmp_path, big_val):
    r = run_cli("train", big_val, "-o", tmp_path / "run", "--layers", "1", "--hidden", "64",
                "--max-time", "4s", "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout.splitlines()[-1])
    assert done["stopped"] == "max_time" and done["iterations_this_run"] > 0
    assert done["seconds"] <= 4.0 + 1.0, r.stderr
    assert done["val_loss"] is not None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_a_validation_pass_stops_at_once(sig, tmp_path, big_val):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(big_val), "-o",
                          str(run), "--layers", "1", "--hidden", "128", "--eval-every", "1",
                          "--max-iters", "1000"], stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, CHARRNN_THREADS="2"))
    try:
        for line in p.stderr:                  # the first evaluation is done: the loop is
            if line.startswith("iter 1 "):     # now in step 2's validation pass
                break
        time.sleep(0.3)
        t0 = time.monotonic()
        p.send_signal(sig)
        rest = p.stderr.read()
        code = p.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
    assert code == 128 + sig, rest
    assert took < 3.0, rest
    assert _errors(rest) == [f"Error: stopped by {signal.Signals(sig).name} at iteration 2; "
                             f"saved {run / 'latest.safetensors'} (run the same command "
                             "again to resume)"], rest
    assert _info(run / "latest.safetensors")["training"]["iteration"] == 2


def test_a_final_evaluation_cut_by_a_signal_is_made_on_the_next_run(tmp_path, big_val):
    """Ctrl-C during the last validation pass; the same command again scores it, keeps
    best, writes the record, and the run then has nothing to do."""
    run = tmp_path / "run"
    cmd = ["train", str(big_val), "-o", str(run), "--layers", "1", "--hidden", "128",
           "--eval-every", "1", "--max-iters", "2"]
    p = subprocess.Popen([sys.executable, "-m", "charrnn", *cmd], stderr=subprocess.PIPE,
                         text=True, env=dict(os.environ, CHARRNN_THREADS="2"))
    try:
        for line in p.stderr:                  # step 2 (the last) is in its validation
            if line.startswith("iter 1 "):
                break
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        rest = p.stderr.read()
        code = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert code == 130, rest
    assert _info(run / "latest.safetensors")["training"]["iteration"] == 2
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1]

    r = run_cli(*cmd, "--json")
    assert r.returncode == 0, r.stderr
    assert "its final validation pass was interrupted; scoring it now" in r.stderr
    done = json.loads(r.stdout.splitlines()[-1])
    assert done["stopped"] == "max_iters" and done["iteration"] == 2
    assert done["val_loss"] is not None
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2]
    assert records[1]["train_loss"] is None and records[1]["val_loss"] == \
        pytest.approx(done["val_loss"], abs=1e-6)
    latest = _info(run / "latest.safetensors")["training"]
    assert latest["iteration"] == 2
    best = _info(run / "best.safetensors")["training"]
    assert best["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in records))

    r = run_cli(*cmd)
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stderr


_POISON = """
import sys
import numpy as np
from charrnn.model.network import Model
import charrnn.training.loop as T
real, real_warm = Model.forward_backward, T.Trainer._warm_up
calls, warming = [0], [False]
def warm(self):                                # the kernels' warm-up is not a step
    warming[0] = True
    try:
        real_warm(self)
    finally:
        warming[0] = False
def poisoned(self, *a, **kw):
    if not warming[0]:
        calls[0] += 1
        if calls[0] == 3:                      # weights become NaN before step 3
            self.flat[:] = np.nan
    return real(self, *a, **kw)
T.Trainer._warm_up = warm
Model.forward_backward = poisoned
from charrnn.cli.app import main
main(sys.argv[1:])
"""


def test_divergence_is_one_error_line_with_the_right_iteration(tmp_path, base_run):
    script = tmp_path / "poison.py"
    script.write_text(_POISON)
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, str(script), "train", str(base_run[0]), "-o",
                        str(run), *TINY, "--max-iters", "10", "--eval-every", "2"],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, CHARRNN_THREADS="2"))
    assert r.returncode == 1, r.stderr
    assert "RuntimeWarning" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert _errors(r.stderr) == [
        f"Error: loss became nan at iteration 3; the last good checkpoint "
        f"{run / 'latest.safetensors'} is kept; try a lower --lr (it was 0.002)"], r.stderr


# ---------------------------------------------------------------------- feedback

def _run_on_terminal(argv, cols: int) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal of ``cols`` columns (0: a terminal
    that reports no width); returns (exit code, what the terminal showed)."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "charrnn", *map(str, argv)], stdout=slave,
                         stderr=slave, stdin=subprocess.DEVNULL,
                         env=dict(os.environ, CHARRNN_THREADS="2"))
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    code = p.wait(timeout=300)
    os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize("cols", [0, 100])
def test_training_bar_shows_a_total_on_a_terminal(cols, tmp_path, base_run):
    code, screen = _run_on_terminal(["train", base_run[0], "-o", tmp_path / "run", *TINY,
                                     "--max-iters", "40", "--eval-every", "20"], cols)
    assert code == 0, screen
    assert re.search(r"\b40/40\b", screen), screen
    assert "Traceback" not in screen


def test_time_bar_for_max_time(tmp_path, base_run):
    code, screen = _run_on_terminal(["train", base_run[0], "-o", tmp_path / "run", *TINY,
                                     "--max-time", "3s"], 0)
    assert code == 0, screen
    assert re.search(r"\b[0-3]/3 ", screen), screen


# ---------------------------------------------------------------------- documents, text in

def test_readme_exit_code_table_lists_every_code():
    from charrnn.errors import ExitStatus

    text = README.read_text()
    table = text[text.index("| exit code | meaning |"):]
    table = table[:table.index("\n\n")]
    listed = {int(n) for row in re.findall(r"^\| ([\d /]+) \|", table, re.M)
              for n in row.split("/")}
    assert listed == {int(c) for c in ExitStatus}


def test_train_on_text_takes_prepares_data_options(tmp_path):
    corpus = tmp_path / "notes.txt"
    corpus.write_text(make_text(6000, seed=4).upper(), encoding="utf-8")
    r = run_cli("train", corpus, "-o", tmp_path / "run", *TINY, "--max-iters", "2",
                "--val-frac", "0.2", "--lowercase")
    assert r.returncode == 0, r.stderr
    assert "data 4,800 training chars" in r.stderr and "1,200 validation" in r.stderr
    assert not any(c.isupper() for c in _info(tmp_path / "run" / "best.safetensors")["vocab"]
                   ["preview"] if c.isalpha())
    # the same command resumes; a different data option needs --restart
    r = run_cli("train", corpus, "-o", tmp_path / "run", "--max-iters", "3",
                "--val-frac", "0.1")
    assert r.returncode == 1 and "add --restart" in _errors(r.stderr)[0], r.stderr


def test_a_failed_run_leaves_no_empty_run_directory(tmp_path, base_run):
    corpus, run = base_run
    data = run / "data"                              # prepared: nothing is written to RUN
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    r = run_cli("train", data, "-o", tmp_path / "new", "--init-from", bad, "--max-iters", "1")
    assert r.returncode == 1 and len(_errors(r.stderr)) == 1, r.stderr
    assert not (tmp_path / "new").exists()
    # a run directory given as DATA, and an empty -o, are told apart
    r = run_cli("train", run, "-o", tmp_path / "x", "--max-iters", "1")
    assert _errors(r.stderr) == [f"Error: {run} is a run directory, not data; its prepared "
                                 f"data is {run / 'data'}"]
    r = run_cli("train", corpus, "-o", "", "--max-iters", "1")
    assert r.returncode == 2 and "give a run directory, not an empty path" in r.stderr


def test_prepare_shows_no_bar_for_input_that_takes_under_a_second(tmp_path):
    """On a terminal, prepare's bar appears only once a second has passed (tqdm's
    delay): a small file prepares with its summary and no bar."""
    small = tmp_path / "small.txt"
    small.write_text(make_text(20_000, seed=3), encoding="utf-8")
    code, screen = _run_on_terminal(["prepare", small, "-o", tmp_path / "d"], 0)
    assert code == 0, screen
    assert "prepared" in screen and "counting" not in screen and "encoding" not in screen


def test_encodings_that_are_not_text_are_one_error_line(tmp_path, base_run):
    for enc, msg in (("rot13", "'rot13' is not a text encoding"),
                     ("hex", "'hex' is not a text encoding"),
                     ("utf-16", "cannot be decoded as utf-16")):
        r = run_cli("prepare", base_run[0], "-o", tmp_path / enc, "--encoding", enc)
        assert r.returncode == 1, r.stderr
        errors = _errors(r.stderr)
        assert len(errors) == 1 and msg in errors[0], r.stderr
        assert "internal error" not in r.stderr


def test_training_validation_and_eval_split_score_the_same_characters(tmp_path, base_run):
    """One definition of validation scoring (evaluate.score_tokens): the val loss the
    run logged for its last checkpoint is what `charrnn eval --split val` gives it."""
    run = tmp_path / "run"
    r = run_cli("train", base_run[0], "-o", run, *TINY, "--max-iters", "4", "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout.splitlines()[-1])
    e = run_cli("eval", run, "--latest", "--split", "val", "--json")
    assert e.returncode == 0, e.stderr
    score = json.loads(e.stdout)
    assert score["chars"] == 299                       # all n - 1 predictions of 300
    assert score["loss"] == pytest.approx(done["val_loss"], abs=2e-6)
