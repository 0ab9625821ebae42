"""The single process's communicator: Comm's interface, every collective the identity,
so the trainer has one code path for one process and for N MPI ranks."""
import inspect
from pathlib import Path

import numpy as np

from charrnn.training import distributed as D
from charrnn.training.local import LOCAL, LocalComm

TRAINING = Path(D.__file__).resolve().parent


def _public(cls):
    return {n for n, _ in inspect.getmembers(cls) if not n.startswith("_")}


def test_local_comm_has_every_method_of_comm_with_the_same_parameters():
    assert _public(D.Comm) <= _public(LocalComm)
    for name in _public(D.Comm):
        mpi, local = getattr(D.Comm, name), getattr(LocalComm, name)
        if callable(mpi) and not isinstance(mpi, type):
            assert list(inspect.signature(local).parameters) == \
                list(inspect.signature(mpi).parameters), name


def test_local_comm_collectives_are_identities():
    c = LocalComm()
    assert (c.rank, c.size, c.alone, D.Comm.alone) == (0, 1, True, False)
    assert c.stream_range(7) == (0, 7)
    grad = np.arange(5, dtype=np.float32)
    before = grad.copy()
    assert c.reduce_grad(grad, 1.25, 7, 7) == 1.25
    assert np.array_equal(grad, before)
    state = (np.ones((1, 3, 2)),)
    assert c.gather_state(state, 3) is state
    assert c.bcast({"a": 1}) == {"a": 1} and c.allreduce_sum(2) == 2.0
    assert c.agree_stop(None) is None and c.agree_stop("max_time") == "max_time"
    assert c.dropout_masks(None, 3, 4, None) is None and c.default_threads() is None
    c.check_sync(0, grad, force=True)
    c.barrier()
    with c.together(), c.guard():
        pass


def test_communicator_of_a_plain_process_is_local(monkeypatch):
    for var in D._SIZE_VARS + D._RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    assert D.communicator() is LOCAL


def test_score_tokens_with_local_comm_is_bit_identical_to_none():
    from charrnn.config import ModelConfig
    from charrnn.evaluate import score_tokens
    from charrnn.model.network import Model

    model = Model.from_config(ModelConfig(cell="gru", num_layers=1, hidden_size=8,
                                          vocab_size=11), seed=3)
    tokens = np.random.default_rng(0).integers(0, 11, 203).astype(np.int64)
    for steps in (None, 5):
        a = score_tokens(model, tokens, 4, 6, comm=None, max_steps=steps)
        b = score_tokens(model, tokens, 4, 6, comm=LOCAL, max_steps=steps)
        assert (a.nll, a.chars) == (b.nll, b.chars) and type(a.chars) is type(b.chars)


def test_training_has_no_single_process_branches():
    for name in ("loop.py", "runs.py", "resume.py", "checkpoints.py", "validation.py"):
        text = (TRAINING / name).read_text(encoding="utf-8")
        assert "comm is None" not in text and "comm is not None" not in text, name
    cli = (TRAINING.parent / "cli" / "train.py").read_text(encoding="utf-8")
    assert "comm is None" not in cli and "comm is not None" not in cli
