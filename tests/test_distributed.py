"""MPI data-parallel training (charrnn.training.distributed).

The first part needs no MPI: the pure decision logic of the Comm layer, the launcher
detection, the clear error when mpi4py is missing, and the arithmetic data-parallel
training relies on (B/N-stream gradients with sliced dropout masks, weighted and summed,
== the full-batch gradient), simulated in one process.

The second part runs ``mpirun -n 2 charrnn train ...`` for real and is skipped, with the
reason, when ``mpirun`` or mpi4py is missing or ``mpirun -n 2`` does not work here
(``make install-mpi`` installs both).
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from charrnn.training import distributed as D
from charrnn.store.checkpoint import read_checkpoint
from charrnn.cli.app import main
from charrnn.config import ModelConfig
from charrnn.errors import ConfigError, Interrupted, LockError, TrainingDiverged
from charrnn.model.network import Model

from conftest import ROOT, make_text, run_cli
from charrnn.store.checkpoint import load_model

SMALL = ["--cell", "lstm", "--layers", "2", "--hidden", "16", "--batch-size", "4",
         "--seq-len", "16", "--eval-every", "5", "--dropout", "0.3", "--threads", "1"]
# float32 parameters after a few Adam steps: the ranks' gradient sum adds the same
# terms in another order than one process's matmuls do
RTOL, ATOL = 2e-4, 2e-6


# ---------------------------------------------------------------------- no MPI needed

def test_stream_range_splits_contiguously_and_refuses_indivisible():
    assert [D.stream_range(8, r, 4) for r in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert D.stream_range(5, 0, 1) == (0, 5)
    with pytest.raises(ConfigError) as ei:
        D.stream_range(50, 1, 4)
    assert str(ei.value) == ("--batch-size 50 is not divisible by the 4 MPI ranks; use a batch "
                             "size that is a multiple of 4, or a number of ranks that divides 50")


def test_first_reason_is_the_lowest_ranks():
    assert D.first_reason([None, None]) is None
    assert D.first_reason([None, "signal", "max_time"]) == "signal"


def test_decide_failure():
    ok = [None, None, None]
    assert D.decide_failure(ok, 1) is None
    lock = [("run is in use", 75), None, None]
    assert D.decide_failure(lock, 0) == ("report", 75)
    assert D.decide_failure(lock, 1) == ("quiet", 75)
    # the same error on every rank is printed once, by the lowest rank
    same = [None, ("bad data", 1), ("bad data", 1)]
    assert D.decide_failure(same, 0) == ("quiet", 1)
    assert D.decide_failure(same, 1) == ("report", 1)
    assert D.decide_failure(same, 2) == ("quiet", 1)
    # different errors are each printed (each rank exits with its own code)
    diff = [("a", 1), ("b", 75)]
    assert D.decide_failure(diff, 0) == ("report", 1)
    assert D.decide_failure(diff, 1) == ("report", 75)


def test_error_message_and_exit_code_match_main():
    assert D.error_message(LockError("x\ny")) == "x y"
    assert D.exit_code_of(LockError("x")) == 75
    assert D.exit_code_of(Interrupted("stopped", 143)) == 143
    assert D.exit_code_of(KeyboardInterrupt()) == 130
    assert D.exit_code_of(ValueError("boom")) == 1
    assert D.error_message(FileNotFoundError(2, "No such file or directory", "a.txt")) == \
        "No such file or directory: a.txt"
    assert D.error_message(ValueError("boom")).startswith("internal error: ValueError: boom")
    assert issubclass(D.PeerExit, SystemExit)
    assert TrainingDiverged in D.COLLECTIVE_ERRORS


def test_param_checksum_sees_one_bit():
    a = np.linspace(-1, 1, 101, dtype=np.float32)
    b = a.copy()
    b.view(np.uint32)[50] ^= 1
    assert D.param_checksum(a) == D.param_checksum(a.copy()) != D.param_checksum(b)


@pytest.mark.parametrize("env, size, rank", [
    ({}, 1, 0),
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}, 4, 3),
    ({"PMI_SIZE": "2", "PMI_RANK": "1"}, 2, 1),
    ({"PMIX_SIZE": "8", "PMIX_RANK": "5"}, 8, 5),
])
def test_launcher_detection(monkeypatch, env, size, rank):
    for var in D._SIZE_VARS + D._RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert (D.launched_size(), D.launched_rank()) == (size, rank)


def test_plain_run_does_not_import_mpi4py():
    code = ("import sys, os\n"
            "for v in list(os.environ):\n"
            "    if v.startswith(('OMPI_', 'PMI_', 'PMIX_')): del os.environ[v]\n"
            "from charrnn.training.distributed import from_environment\n"
            "assert from_environment() is None\n"
            "assert 'mpi4py' not in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def _hide_mpi4py(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)     # import mpi4py -> ImportError
    for var in D._SIZE_VARS + D._RANK_VARS:
        monkeypatch.delenv(var, raising=False)


def _invoke(argv, capsys):
    with pytest.raises(SystemExit) as ei:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return ei.value.code, out, err


def test_distributed_flag_without_mpi4py_says_how_to_install(tmp_path, capsys, monkeypatch,
                                                             text_file):
    _hide_mpi4py(monkeypatch)
    code, out, err = _invoke(["train", text_file, "-o", tmp_path / "run", "--distributed",
                              "--max-iters", "1"], capsys)
    assert code == 1 and out == ""
    assert err == ("Error: --distributed asks for MPI but mpi4py is not installed: pip install "
                   "'charrnn[mpi]' (it needs an MPI library such as Open MPI: `make "
                   "install-mpi`, or apt-get install openmpi-bin libopenmpi-dev)\n")
    assert not (tmp_path / "run").exists()


def test_launched_by_mpirun_without_mpi4py(monkeypatch):
    _hide_mpi4py(monkeypatch)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    with pytest.raises(ConfigError, match=r"^this process was started by an MPI launcher "
                                          r"\(2 ranks\) but mpi4py is not installed"):
        D.from_environment()
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")      # the other ranks leave quietly
    with pytest.raises(D.PeerExit) as ei:
        D.from_environment()
    assert ei.value.code == 1


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rank_shares_with_sliced_masks_sum_to_the_full_batch_gradient(cell):
    """What N ranks compute, simulated in one process: each rank's B/N streams with its
    slice of the full batch's dropout masks, gradient weighted by (B/N)/B, summed."""
    cfg = ModelConfig(cell=cell, num_layers=2, hidden_size=8, vocab_size=11, dropout=0.4,
                      dtype="float64")
    model = Model.from_config(cfg, seed=3)
    B, T, N = 6, 5, 3
    rng = np.random.default_rng(0)
    x = rng.integers(0, 11, (B, T))                              # (B, T)
    y = rng.integers(0, 11, (B, T))                              # (B, T)
    state = tuple(rng.standard_normal(s.shape) * 0.1 for s in model.initial_state(B))
    full_loss, full_state = model.forward_backward(x, y, state, rng=np.random.default_rng(7))
    full_grad = model.grad_flat.copy()
    masks = model.dropout_masks(B, T, np.random.default_rng(7))  # what forward_backward drew
    grad, loss, finals = np.zeros_like(full_grad), 0.0, []
    for r in range(N):
        lo, hi = D.stream_range(B, r, N)
        part = [np.ascontiguousarray(m[:, lo:hi]) for m in masks]   # (T, b, H) each
        st = tuple(s[:, lo:hi] for s in state)                      # (L, b, H)
        lr, fr = model.forward_backward(x[lo:hi], y[lo:hi], st, masks=part)
        grad += model.grad_flat * ((hi - lo) / B)
        loss += lr * (hi - lo) / B
        finals.append(fr)
    np.testing.assert_allclose(grad, full_grad, rtol=1e-10, atol=1e-13)
    assert loss == pytest.approx(full_loss, rel=1e-12)
    for i, s in enumerate(full_state):
        np.testing.assert_allclose(np.concatenate([f[i] for f in finals], axis=1), s,
                                   rtol=1e-12, atol=1e-14)


def test_masks_argument_is_checked():
    model = Model.from_config(ModelConfig(num_layers=2, hidden_size=4, vocab_size=5,
                                          dropout=0.5), seed=0)
    x = np.zeros((2, 3), np.int64)
    with pytest.raises(Exception, match=r"masks must be 2 arrays of shape \(T, B, H\) = "
                                        r"\(3, 2, 4\)"):
        model.forward_backward(x, x, masks=[np.ones((3, 2, 4))])


# ---------------------------------------------------------------------- real mpirun

def _mpi_env() -> dict:
    env = dict(os.environ)
    env.update(CHARRNN_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    # root in a container: Open MPI refuses to run as root without these
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    # containers often forbid the cross-memory-attach single-copy path
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    return env


@functools.lru_cache(maxsize=None)
def _mpirun_flags() -> tuple[str, ...]:
    """Open MPI refuses more ranks than cores without --oversubscribe (MPICH's mpirun
    does not know the flag and does not need it)."""
    try:
        out = subprocess.run(["mpirun", "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return ("--oversubscribe",) if "Open MPI" in out else ()


def _mpirun(n: int, *cmd: str) -> list[str]:
    return ["mpirun", *_mpirun_flags(), "-n", str(n), *(cmd or (sys.executable, "-m",
                                                               "charrnn"))]


def _mpi_problem() -> str | None:
    if shutil.which("mpirun") is None:
        return "mpirun not found (install Open MPI: make install-mpi)"
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install 'charrnn[mpi]', or make install-mpi)"
    probe = ("from mpi4py import MPI; c = MPI.COMM_WORLD; "
             "assert c.allreduce(1) == c.Get_size() == 2")
    try:
        res = subprocess.run(_mpirun(2, sys.executable, "-c", probe), capture_output=True,
                             text=True, env=_mpi_env(), timeout=60)
    except subprocess.TimeoutExpired:
        return "mpirun -n 2 did not finish a trivial job in 60 s here"
    if res.returncode != 0:
        tail = " ".join((res.stderr or res.stdout).split())[-300:]
        return f"mpirun -n 2 does not work here: {tail}"
    return None


@pytest.fixture(scope="module")
def mpi():
    problem = _mpi_problem()
    if problem:
        pytest.skip(problem)


def mpirun_train(n, *args, timeout=180):
    return subprocess.run([*_mpirun(n), "train", *map(str, args)], capture_output=True,
                          text=True, env=_mpi_env(), timeout=timeout)


def params(run, name="latest.safetensors"):
    return load_model(Path(run) / name).flat.copy()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    p = tmp_path_factory.mktemp("mpi") / "corpus.txt"
    p.write_text(make_text(20_000), encoding="utf-8")
    return p



@pytest.mark.mpi
def test_two_ranks_equal_one_process(mpi, corpus, tmp_path):
    """2 ranks x B/2 streams == 1 process x B streams (dropout on, mid-epoch state)."""
    args = [*SMALL, "--max-iters", "12", "--json"]
    one = run_cli("train", corpus, "-o", tmp_path / "one", *args, env={"CHARRNN_THREADS": "1"})
    assert one.returncode == 0, one.stderr
    two = mpirun_train(2, corpus, "-o", tmp_path / "two", *args)
    assert two.returncode == 0, two.stderr
    np.testing.assert_allclose(params(tmp_path / "two"), params(tmp_path / "one"),
                               rtol=RTOL, atol=ATOL)
    ck1 = read_checkpoint(tmp_path / "one" / "latest.safetensors")
    ck2 = read_checkpoint(tmp_path / "two" / "latest.safetensors")
    assert ck2.train_state["world_size"] == 2 and ck1.train_state["world_size"] == 1
    for key in ("iteration", "epoch", "pos", "rng", "chars_seen"):
        assert ck1.train_state[key] == ck2.train_state[key], key
    # the carried state is saved per stream: (L, B, H), whatever N
    for name in ("state.h", "state.c"):
        assert ck2.tensors[name].shape == (2, 4, 16)
        np.testing.assert_allclose(ck2.tensors[name], ck1.tensors[name], rtol=RTOL, atol=1e-5)
    # rank 0 alone reports: the same JSON records, one copy of each log line
    assert [line[:40] for line in two.stdout.splitlines()] == \
        [line[:40] for line in one.stdout.splitlines()]
    assert two.stderr.count("reached --max-iters: iteration 12") == 1
    assert two.stderr.count("preparing ") == 1
    m1, m2 = ([json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
              for r in ("one", "two"))
    assert [m["iter"] for m in m2] == [m["iter"] for m in m1] == [5, 10, 12]
    for a, b in zip(m1, m2):       # validation is split over the ranks and summed
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5)
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
    assert not (tmp_path / "two" / ".lock").exists()


def _session_pids(sid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[3]) == sid:  # state, session id
                pids.append(int(d.name))
    return pids


def _kill_session(sid: int) -> None:
    """SIGKILL mpirun and every rank it started (each rank has its own process group,
    but they all stay in mpirun's session)."""
    for _ in range(50):
        pids = _session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


@pytest.mark.mpi
def test_killed_two_rank_run_resumes(mpi, corpus, tmp_path):
    args = [*SMALL, "--dropout", "0", "--layers", "1", "--max-epochs", "0",
            "--max-iters", "1500", "--save-every", "25", "--eval-every", "500"]
    ref = mpirun_train(2, corpus, "-o", tmp_path / "ref", *args)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "run"
    proc = subprocess.Popen([*_mpirun(2), "train", corpus, "-o", run, *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=_mpi_env(), start_new_session=True)
    try:
        t0 = time.time()
        while not (run / "latest.safetensors").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() - t0 < 120
            time.sleep(0.02)
        time.sleep(0.2)
    finally:
        _kill_session(proc.pid)
        proc.wait()
    killed_at = read_checkpoint(run / "latest.safetensors").train_state["iteration"]
    assert 0 < killed_at < 1500, "the run finished before it was killed"
    res = mpirun_train(2, corpus, "-o", run, *args)
    assert res.returncode == 0, res.stderr
    assert f"resuming {run} from iteration {killed_at}" in res.stderr
    assert read_checkpoint(run / "latest.safetensors").train_state["iteration"] == 1500
    # same N, same threads: the resumed run is the uninterrupted one, bit for bit
    assert np.array_equal(params(run), params(tmp_path / "ref"))


@pytest.mark.mpi
def test_resume_into_a_different_number_of_ranks(mpi, corpus, tmp_path):
    """2 ranks to 10 (mid-epoch), then 1 process to 20 == 1 process to 20; and back."""
    args = [*SMALL, "--max-epochs", "0"]
    ref = run_cli("train", corpus, "-o", tmp_path / "ref", *args, "--max-iters", "20",
                  env={"CHARRNN_THREADS": "1"})
    assert ref.returncode == 0, ref.stderr
    a = tmp_path / "a"
    r = mpirun_train(2, corpus, "-o", a, *args, "--max-iters", "10")
    assert r.returncode == 0, r.stderr
    r = run_cli("train", corpus, "-o", a, *args, "--max-iters", "20",
                env={"CHARRNN_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert f"resuming {a} from iteration 10" in r.stderr
    np.testing.assert_allclose(params(a), params(tmp_path / "ref"), rtol=RTOL, atol=ATOL)
    b = tmp_path / "b"
    r = run_cli("train", corpus, "-o", b, *args, "--max-iters", "10",
                env={"CHARRNN_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    r = mpirun_train(2, corpus, "-o", b, *args, "--max-iters", "20")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(params(b), params(tmp_path / "ref"), rtol=RTOL, atol=ATOL)


@pytest.mark.mpi
def test_batch_not_divisible_is_one_clear_error(mpi, corpus, tmp_path):
    r = mpirun_train(2, corpus, "-o", tmp_path / "run", *SMALL, "--batch-size", "5",
                     "--max-iters", "3", timeout=120)
    assert r.returncode == 1
    msg = ("Error: --batch-size 5 is not divisible by the 2 MPI ranks; use a batch size that "
           "is a multiple of 2, or a number of ranks that divides 5\n")
    assert r.stderr.count(msg) == 1, r.stderr
    assert not (tmp_path / "run" / "latest.safetensors").exists()


@pytest.mark.mpi
def test_lock_held_stops_every_rank(mpi, corpus, tmp_path):
    from charrnn.training.lock import RunLock

    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):
        r = mpirun_train(2, corpus, "-o", run, *SMALL, "--max-iters", "3", timeout=120)
    assert r.returncode == 75, r.stderr
    assert r.stderr.count("Error: ") == 1 and f"Error: {run} is in use by another " in r.stderr
    assert not (run / "latest.safetensors").exists()


@pytest.mark.mpi
def test_failure_on_one_rank_aborts_all(mpi, corpus, tmp_path):
    """Rank 0 cannot write metrics.jsonl mid-run: it says so and MPI_Abort ends rank 1
    (which would otherwise wait in the next Allreduce forever)."""
    run = tmp_path / "run"
    (run / "metrics.jsonl").mkdir(parents=True)
    r = mpirun_train(2, corpus, "-o", run, *SMALL, "--max-iters", "30", timeout=120)
    assert r.returncode != 0
    assert "Error: MPI rank 0 of 2 (" in r.stderr
    assert "metrics.jsonl; stopping all 2 ranks" in r.stderr


@pytest.mark.mpi
def test_distributed_flag_alone_is_a_one_rank_mpi_run(mpi, corpus, tmp_path):
    r = run_cli("train", corpus, "-o", tmp_path / "run", *SMALL, "--max-iters", "3",
                "--distributed", env=_mpi_env())
    assert r.returncode == 0, r.stderr
    ck = read_checkpoint(tmp_path / "run" / "latest.safetensors")
    assert ck.train_state["world_size"] == 1 and ck.train_state["iteration"] == 3


_FAULT = """
import os, sys
from charrnn.model import network as M

import charrnn.training.loop as T
orig, calls, warming = M.Model.forward_backward, [0], [False]
real_warm = T.Trainer._warm_up
rank = os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0"))

def warm(self):                           # the trainer's kernel warm-up is not a step
    warming[0] = True
    try:
        real_warm(self)
    finally:
        warming[0] = False

def faulty(self, *a, **k):
    loss, state = orig(self, *a, **k)
    if warming[0]:
        return loss, state
    calls[0] += 1
    if rank == "1" and calls[0] == 3:
        if os.environ["FAULT"] == "nan":
            loss = float("nan")           # one rank's loss: the all-reduced loss is NaN
        else:
            self.flat[0] += 1e-3          # one rank's parameters drift
    return loss, state

M.Model.forward_backward = faulty
T.Trainer._warm_up = warm
from charrnn.cli.app import main
main(sys.argv[1:])
"""


def _mpirun_faulty(tmp_path, fault, *args):
    script = tmp_path / "faulty.py"
    script.write_text(_FAULT)
    env = dict(_mpi_env(), FAULT=fault)
    return subprocess.run([*_mpirun(2, sys.executable, str(script)), "train", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=180)


@pytest.mark.mpi
def test_divergence_on_one_rank_stops_all_with_one_error(mpi, corpus, tmp_path):
    run = tmp_path / "run"
    r = _mpirun_faulty(tmp_path, "nan", corpus, "-o", run, *SMALL, "--max-iters", "20")
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error: ")]
    assert errors == ["Error: loss became nan at iteration 3; no checkpoint was written; try a "
                      "lower --lr (it was 0.002)"], r.stderr
    assert "MPI_ABORT" not in r.stderr


@pytest.mark.mpi
def test_parameters_drifting_apart_are_caught_before_saving(mpi, corpus, tmp_path):
    run = tmp_path / "run"
    r = _mpirun_faulty(tmp_path, "drift", corpus, "-o", run, *SMALL, "--max-iters", "20")
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and errors[0].startswith(
        "Error: MPI ranks' parameters drifted apart at iteration 5 (CRC-32 per rank: "), r.stderr
    assert not (run / "latest.safetensors").exists()      # nothing drifted was saved
    assert not (run / "best.safetensors").exists()
