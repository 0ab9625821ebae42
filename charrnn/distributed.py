"""Synchronous data-parallel training over MPI (``mpirun -n N charrnn train ...``).

Each of the N ranks owns a contiguous share of the B streams of every batch (B must be
divisible by N), runs forward and backward on its B/N streams, and the gradients are
summed with ONE in-place ``Allreduce`` on the flat gradient buffer per step.  The model's
loss is a mean over its own B/N*T positions, so each rank scales its gradient by
``(B/N)/B`` before the sum: the result is exactly the gradient of the mean over all B*T
positions, up to the order of the float additions.  Every rank then applies the same
optimizer step to identical parameters, so they stay identical; :meth:`Comm.check_sync`
compares a checksum of the parameters every ``SYNC_CHECK_EVERY`` steps and fails loudly
if they drift.

Rank 0 alone writes checkpoints, metrics and logs.  The carried hidden state is
gathered to rank 0 for a checkpoint as one (L, B, H) array (per stream, not per rank),
so a run can resume with a different N.

mpi4py is optional (``pip install 'charrnn[mpi]'``) and imported only when the process
was started by an MPI launcher (Open MPI's ``OMPI_COMM_WORLD_SIZE``, MPICH/Hydra's
``PMI_SIZE``/``PMIX_RANK``) with more than one rank, or when ``--distributed`` asks.

Threads: ``--threads`` applies per rank.  On a host with C cores running R ranks, give
each rank ``--threads C/R`` (e.g. 16 cores, 4 ranks: ``mpirun -n 4 charrnn train ...
--threads 4``), so ranks x threads = cores.
"""
from __future__ import annotations

import os
import zlib

import numpy as np

from .errors import ConfigError, DistributedError

SYNC_CHECK_EVERY = 200


def launched_size() -> int:
    """The world size an MPI launcher announced in the environment (1 if none)."""
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE"):
        v = os.environ.get(var)
        if v and v.isdigit():
            return int(v)
    return 1


class Comm:
    """The few collective operations the trainer needs."""

    def __init__(self, mpi_comm):
        from mpi4py import MPI

        self._MPI = MPI
        self.c = mpi_comm
        self.rank = mpi_comm.Get_rank()
        self.size = mpi_comm.Get_size()

    def barrier(self) -> None:
        self.c.Barrier()

    def stream_range(self, B: int) -> tuple[int, int]:
        if B % self.size:
            raise ConfigError(f"--batch-size {B} is not divisible by the {self.size} MPI "
                              "ranks; choose a batch size that is")
        share = B // self.size
        return self.rank * share, (self.rank + 1) * share

    def reduce_grad(self, grad_flat: np.ndarray, loss: float, B_local: int, B: int) -> float:
        """Sum the B_local/B-weighted gradients of all ranks in place; return the mean
        loss over all B streams."""
        w = B_local / B
        grad_flat *= grad_flat.dtype.type(w)
        self.c.Allreduce(self._MPI.IN_PLACE, grad_flat, op=self._MPI.SUM)
        return float(self.c.allreduce(loss * w, op=self._MPI.SUM))

    def gather_state(self, state, B: int):
        """Each rank's (L, B/N, H) carried state -> the (L, B, H) state on every rank."""
        out = []
        for s in state:
            parts = self.c.allgather(np.ascontiguousarray(s))
            out.append(np.concatenate(parts, axis=1))            # (L, B, H)
        return tuple(out)

    def check_sync(self, iteration: int, flat: np.ndarray) -> None:
        if iteration % SYNC_CHECK_EVERY:
            return
        mine = zlib.crc32(flat.view(np.uint8))
        sums = self.c.allgather(mine)
        if len(set(sums)) != 1:
            raise DistributedError(f"MPI ranks' parameters drifted apart at iteration {iteration} "
                               f"(checksums {sums}); the run is stopped")

    def agree_stop(self, stopped):
        """Every rank stops at the same step: the first reason any rank has (a signal
        or a time limit may reach only some ranks)."""
        reasons = self.c.allgather(stopped)
        for r in reasons:
            if r is not None:
                return r
        return None


def from_environment(batch_size: int, force: bool = False) -> Comm | None:
    """A :class:`Comm` when launched by mpirun with N > 1 ranks (or ``force``), else None."""
    if launched_size() <= 1 and not force:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise ConfigError("this run was started by an MPI launcher (or with --distributed) "
                          "but mpi4py is not installed: pip install 'charrnn[mpi]' "
                          "(needs an MPI library such as Open MPI; see `make install-mpi`)"
                          ) from None
    comm = Comm(MPI.COMM_WORLD)
    if comm.size == 1 and not force:
        return None
    comm.stream_range(batch_size)          # divisible, or a clear error on every rank
    return comm


__all__ = ["Comm", "from_environment", "launched_size", "SYNC_CHECK_EVERY"]
