"""The communicator of a single process: the interface of
:class:`charrnn.training.distributed.Comm` without MPI, so that the trainer has one code
path for one process and for N ranks."""
from __future__ import annotations

import contextlib
import socket

import numpy as np


class LocalComm:
    """The communicator of a single process: :class:`Comm`'s interface, where every
    collective is the identity and there is no one to wait for (rank 0 of 1)."""

    alone = True
    rank, size = 0, 1
    local_size = 1
    reduce_seconds, reduce_calls = 0.0, 0

    def __repr__(self) -> str:
        return "LocalComm()"

    @property
    def host(self) -> str:
        return socket.gethostname()

    @property
    def hosts(self) -> list[str]:
        return [self.host]

    def default_threads(self) -> None:
        """None: no other rank shares the host, the usual default applies."""
        return None

    def describe(self, B: int, threads: int) -> str:
        return f"one process, {threads} thread{'s' if threads > 1 else ''}, {B} streams"

    @property
    def where(self) -> str:
        return f"the only process ({self.host})"

    def barrier(self) -> None:
        pass

    def bcast(self, obj, root: int = 0):
        return obj

    def stream_range(self, B: int) -> tuple[int, int]:
        return 0, B

    def dropout_masks(self, model, B: int, T: int, rng) -> None:
        """None: the model draws its own masks (the same generator, the same draws)."""
        return None

    def reduce_grad(self, grad_flat: np.ndarray, loss: float, B_local: int, B: int) -> float:
        return loss

    def allreduce_sum(self, value: float) -> float:
        return float(value)

    def gather_state(self, state, B: int):
        return state

    def check_sync(self, iteration: int, flat: np.ndarray, force: bool = False) -> None:
        pass

    def agree_stop(self, stopped):
        return stopped

    @contextlib.contextmanager
    def together(self):
        yield

    @contextlib.contextmanager
    def guard(self):
        yield

    def abort(self, exc: BaseException) -> None:
        """Nothing else to end: the error goes up to main() as usual."""
        raise exc


# The single process's communicator (it holds no state, so one serves every caller).
LOCAL = LocalComm()

__all__ = ["LocalComm", "LOCAL"]
