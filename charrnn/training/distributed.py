"""Synchronous data-parallel training over MPI (``mpirun -n N charrnn train ...``).

Each of the N ranks owns a contiguous share ``lo:hi`` of the B streams of every batch
(B must be divisible by N), runs forward and backward on its B/N streams, and the
gradients are summed with ONE in-place ``Allreduce`` on the flat gradient buffer per
step.  The model's loss is a mean over its own B/N*T positions, so each rank scales its
gradient by ``(B/N)/B`` before the sum: the result is exactly the gradient of the mean
over all B*T positions, up to the order of the float additions.  Every rank then applies
the same optimizer step to identical parameters, so they stay identical;
:meth:`Comm.check_sync` compares a checksum of the parameters every
``SYNC_CHECK_EVERY`` steps and fails loudly if they drift.

Dropout: every rank draws the masks of the WHOLE batch, (T, B, H) per layer, from the
shared generator (same seed, same state on every rank) and uses its streams' slice
``[:, lo:hi]``, so N ranks train exactly the model one process would.

Rank 0 alone takes the run lock, prepares data, writes checkpoints, metrics and logs
(the other ranks' console is quiet).  The carried hidden state is gathered into one
(L, B, H) array for a checkpoint (per stream, not per rank), so a run can resume with a
different N as long as N divides B.  The run directory must be on a filesystem every
rank can read (one host, or NFS for several): every rank reads the prepared data and,
on resume, ``latest.safetensors``.

Errors never leave the other ranks hanging in a collective:

* set-up steps run inside :meth:`Comm.together`: every rank finishes the step, the
  ranks exchange "ok / failed with this message", and if any failed, ALL ranks stop;
  each distinct message is printed once (``Error: ...``; prefixed ``MPI rank r of N``
  when it is not rank 0's) and every rank exits with the error's code;
* in the training loop, errors every rank raises at the same step (divergence, a
  signal, parameters drifting apart) are reported once by rank 0; any other error is a
  rank-local failure (a full disk on rank 0, ...): that rank prints its ``Error:`` line
  and calls ``MPI_Abort``, which ends every rank (see :meth:`Comm.guard`).

mpi4py is optional (``pip install 'charrnn[mpi]'``) and imported only when the process
was started by an MPI launcher (Open MPI's ``OMPI_COMM_WORLD_SIZE``, MPICH/Hydra's
``PMI_SIZE``, PMIx's ``PMIX_SIZE``) with more than one rank, or when ``--distributed``
asks for it.

Threads: ``--threads`` applies per rank.  The default is the cores a rank may run on:
Open MPI binds each rank to one core when there are at most as many ranks as cores, so
``mpirun -n C`` on C cores gives C ranks x 1 thread.  For R ranks x T threads on a host
with C = R*T cores, give each rank T cores and T threads, e.g. 16 cores, 4 ranks::

    mpirun -n 4 --map-by slot:PE=4 --bind-to core charrnn train ... --threads 4
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import zlib

import numpy as np

from ..errors import CharrnnError, ConfigError, DistributedError, Interrupted, TrainingDiverged
from .local import LOCAL, LocalComm

SYNC_CHECK_EVERY = 200
# How long a rank that raised an error every rank should raise at the same step waits
# for the others before it treats the error as its own and aborts the job.
COLLECTIVE_ERROR_TIMEOUT = 120.0
# Errors the trainer raises on every rank at the same step (identical inputs: the
# all-reduced loss and gradient, the agreed stop reason, the gathered checksums).
COLLECTIVE_ERRORS = (Interrupted, TrainingDiverged, DistributedError)

_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MPI_LOCALRANKID")

MPI_INSTALL_HINT = ("pip install 'charrnn[mpi]' (it needs an MPI library such as Open MPI: "
                    "`make install-mpi`, or apt-get install openmpi-bin libopenmpi-dev)")


def _env_int(names) -> int | None:
    for var in names:
        v = os.environ.get(var, "").strip()
        if v.isdigit():
            return int(v)
    return None


def launched_size() -> int:
    """The world size an MPI launcher announced in the environment (1 if none)."""
    n = _env_int(_SIZE_VARS)
    return 1 if n is None else n


def launched_rank() -> int:
    """This process's rank as the MPI launcher announced it (0 if none)."""
    r = _env_int(_RANK_VARS)
    return 0 if r is None else r


def exit_code_of(exc: BaseException) -> int:
    """The exit status ``charrnn``'s main() gives an exception."""
    if isinstance(exc, CharrnnError):
        return int(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, SystemExit):
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 1


def error_message(exc: BaseException) -> str:
    """The text of the ``Error:`` line main() would print for ``exc`` (one line)."""
    if isinstance(exc, CharrnnError):
        msg = str(exc)
    elif isinstance(exc, KeyboardInterrupt):
        msg = "interrupted"
    elif isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        msg = f"{exc.strerror or exc}{where}"
    elif isinstance(exc, MemoryError):
        msg = "out of memory (try a smaller --batch-size, --seq-len or --hidden)"
    else:
        msg = (f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the "
               "traceback, and please report it)")
    return " ".join(msg.split("\n")).strip()


class PeerExit(SystemExit):
    """Leave quietly with this exit code: another rank failed and reported the error."""


def _prefix_error(exc: BaseException, prefix: str) -> None:
    """Put ``prefix`` in front of a CharrnnError's message (in place)."""
    if isinstance(exc, CharrnnError) and exc.args:
        exc.args = (prefix + str(exc.args[0]),) + tuple(exc.args[1:])


class Comm:
    """The few collective operations the trainer needs (one object per rank)."""

    # Other processes take part in every collective: a pass (a validation, a timing)
    # must run to its end on every rank, never stop part-way on one.
    alone = False

    def __init__(self, mpi_comm):
        from mpi4py import MPI

        self._MPI = MPI
        self.c = mpi_comm
        self.rank = mpi_comm.Get_rank()
        self.size = mpi_comm.Get_size()
        # A private communicator for error agreement, so that a failing rank's barrier
        # can never match a barrier a healthy rank is waiting in.
        self._errc = mpi_comm.Dup()
        self.host = socket.gethostname()
        # Ranks sharing this host (MPI-3 shared-memory split) and the distinct hosts.
        node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = node.Get_size()
        node.Free()
        self.hosts = sorted(set(mpi_comm.allgather(self.host)))
        # Seconds spent in the gradient Allreduce (including waiting for slower ranks),
        # and how many steps; the benchmark reads them.
        self.reduce_seconds = 0.0
        self.reduce_calls = 0

    def __repr__(self) -> str:
        return f"Comm(rank={self.rank}, size={self.size}, host={self.host!r})"

    def default_threads(self) -> int:
        """Threads per rank when neither --threads nor CHARRNN_THREADS says: this host's
        cores shared among its ranks, and no more than the cores the launcher bound
        this rank to (Open MPI binds to one core for up to 2 ranks, to a socket above)."""
        from ..kernels.runtime import available_cores

        return max(1, min(available_cores(), (os.cpu_count() or 1) // self.local_size))

    def describe(self, B: int, threads: int) -> str:
        share = f"{B // self.size} of {B} streams each" if B % self.size == 0 else \
            f"{B} streams"
        hosts = len(self.hosts)
        return (f"MPI: {self.size} ranks on {hosts} host{'s' if hosts > 1 else ''}, "
                f"{threads} thread{'s' if threads > 1 else ''} per rank (rank 0), {share}")

    @property
    def where(self) -> str:
        return f"MPI rank {self.rank} of {self.size} ({self.host})"

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        self.c.Barrier()

    def bcast(self, obj, root: int = 0):
        return self.c.bcast(obj, root=root)

    def stream_range(self, B: int) -> tuple[int, int]:
        """This rank's streams ``lo:hi`` of a batch of B (contiguous, B/N each)."""
        return stream_range(B, self.rank, self.size)

    def dropout_masks(self, model, B: int, T: int, rng) -> list:
        """This rank's streams of the whole batch's dropout masks, drawn from the
        generator every rank shares, so N ranks train what one process would."""
        lo, hi = self.stream_range(B)
        full = model.dropout_masks(B, T, rng)                      # L x (T, B, H)
        return [np.ascontiguousarray(m[:, lo:hi]) for m in full]  # L x (T, b, H)

    def reduce_grad(self, grad_flat: np.ndarray, loss: float, B_local: int, B: int) -> float:
        """Sum the B_local/B-weighted gradients of all ranks in place (ONE Allreduce on
        the flat buffer); return the mean loss over all B streams."""
        w = B_local / B
        grad_flat *= grad_flat.dtype.type(w)
        t0 = time.perf_counter()
        self.c.Allreduce(self._MPI.IN_PLACE, grad_flat, op=self._MPI.SUM)
        self.reduce_seconds += time.perf_counter() - t0
        self.reduce_calls += 1
        return float(self.c.allreduce(loss * w, op=self._MPI.SUM))

    def allreduce_sum(self, value: float) -> float:
        """The sum of every rank's ``value``, added in rank order on every rank, so all
        ranks get the very same float (decisions such as "best so far" depend on it)."""
        return float(sum(self.c.allgather(float(value))))

    def gather_state(self, state, B: int):
        """Each rank's (L, B/N, H) carried state -> the (L, B, H) state on every rank."""
        out = []
        for s in state:
            parts = self.c.allgather(np.ascontiguousarray(s))
            full = np.concatenate(parts, axis=1)                  # (L, B, H)
            if full.shape[1] != B:
                raise DistributedError(f"gathered state has {full.shape[1]} streams, "
                                       f"expected {B}")
            out.append(full)
        return tuple(out)

    def check_sync(self, iteration: int, flat: np.ndarray, force: bool = False) -> None:
        """Every SYNC_CHECK_EVERY iterations (or ``force``): all ranks' parameters must
        have the same CRC-32, else DistributedError on every rank."""
        if iteration % SYNC_CHECK_EVERY and not force:
            return
        sums = self.c.allgather(param_checksum(flat))
        if len(set(sums)) != 1:
            raise DistributedError(
                f"MPI ranks' parameters drifted apart at iteration {iteration} (CRC-32 per "
                f"rank: {', '.join(f'{s:08x}' for s in sums)}); the run is stopped. The last "
                "checkpoint is kept; check that every rank runs the same charrnn, numpy "
                "and numba versions")

    def agree_stop(self, stopped):
        """Every rank stops at the same step: the first reason any rank has (a signal
        or a time limit may reach only some ranks)."""
        return first_reason(self.c.allgather(stopped))

    # ------------------------------------------------------------------ errors
    @contextlib.contextmanager
    def together(self):
        """Run a step on every rank; if it failed on any rank, stop on every rank.

        The ranks exchange their outcome when the block ends (a collective: the block
        itself must not use ``self.c``, or a failed rank would leave the others waiting).
        A rank that failed re-raises its error, unless a lower rank had the same message;
        ranks that did not fail (or had a duplicate) raise :class:`PeerExit`."""
        err = None
        try:
            yield
        except PeerExit:
            raise
        except (Exception, KeyboardInterrupt) as e:
            err = e
        mine = None if err is None else (error_message(err), exit_code_of(err))
        outcomes = self.c.allgather(mine)
        decision = decide_failure(outcomes, self.rank)
        if decision is None:
            return
        action, code = decision
        if action == "report":
            err._charrnn_collective = True
            if self.rank != 0:
                _prefix_error(err, f"{self.where}: ")
            raise err
        raise PeerExit(code)

    @contextlib.contextmanager
    def guard(self):
        """Wrap a whole command on every rank (see the module docstring)."""
        try:
            yield
        except PeerExit:
            raise
        except BaseException as e:
            code = exit_code_of(e)
            if isinstance(e, SystemExit) and code == 0:
                raise
            if getattr(e, "_charrnn_collective", False):
                raise
            if isinstance(e, COLLECTIVE_ERRORS) and self._all_arrive(COLLECTIVE_ERROR_TIMEOUT):
                if self.rank == 0:
                    raise
                raise PeerExit(code) from None
            self.abort(e)

    def _all_arrive(self, timeout: float) -> bool:
        """A barrier on the error communicator, given up after ``timeout`` seconds."""
        req = self._errc.Ibarrier()
        deadline = time.monotonic() + timeout
        while not req.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def abort(self, exc: BaseException) -> None:
        """Print ``exc`` as this rank's Error line and end every rank (MPI_Abort)."""
        code = exit_code_of(exc) or 1
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        try:
            sys.stderr.write(f"Error: {self.where}: {error_message(exc)}; stopping all "
                             f"{self.size} ranks\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        self.c.Abort(code)
        os._exit(code)          # pragma: no cover - Abort does not return


# ---------------------------------------------------------------------- pure logic
# (kept free of MPI so that it is unit-tested without mpirun)

def stream_range(B: int, rank: int, size: int) -> tuple[int, int]:
    """Streams ``lo:hi`` of rank ``rank`` among ``size`` for a batch of B."""
    if B % size:
        raise ConfigError(f"--batch-size {B} is not divisible by the {size} MPI ranks; use a "
                          f"batch size that is a multiple of {size}, or a number of ranks "
                          f"that divides {B}")
    share = B // size
    return rank * share, (rank + 1) * share


def first_reason(reasons):
    """The stop reason of the lowest rank that has one (None if no rank has)."""
    for r in reasons:
        if r is not None:
            return r
    return None


def decide_failure(outcomes, rank: int):
    """What rank ``rank`` does after a :meth:`Comm.together` step.

    ``outcomes[r]`` is None (rank r succeeded) or ``(message, exit_code)``.  Returns
    None when every rank succeeded, ``("report", code)`` when this rank prints its own
    error (the lowest rank with that message), else ``("quiet", code)``: exit with
    ``code`` without printing (the code of this rank's own error, or of the first
    failing rank's)."""
    failed = [(r, o) for r, o in enumerate(outcomes) if o is not None]
    if not failed:
        return None
    mine = outcomes[rank]
    if mine is None:
        return "quiet", failed[0][1][1]
    first_same = min(r for r, o in failed if o[0] == mine[0])
    return ("report" if first_same == rank else "quiet"), mine[1]


def param_checksum(flat: np.ndarray) -> int:
    """CRC-32 of a parameter buffer's bytes (bit-exact comparison across ranks)."""
    return zlib.crc32(np.ascontiguousarray(flat).view(np.uint8))


def from_environment(force: bool = False) -> Comm | None:
    """A :class:`Comm` when launched by an MPI launcher with N > 1 ranks (or ``force``,
    i.e. ``--distributed``), else None: the plain single-process path, mpi4py unused."""
    if launched_size() <= 1 and not force:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        how = ("--distributed asks for MPI" if force else
               f"this process was started by an MPI launcher ({launched_size()} ranks)")
        if launched_rank() != 0:
            raise PeerExit(1) from None     # rank 0 says it, once
        raise ConfigError(f"{how} but mpi4py is not installed: {MPI_INSTALL_HINT}") from None
    comm = Comm(MPI.COMM_WORLD)
    if comm.size == 1 and not force:
        return None
    return comm


def communicator(force: bool = False) -> Comm | LocalComm:
    """:func:`from_environment`'s Comm, or :data:`LOCAL` for a single process."""
    comm = from_environment(force)
    return LOCAL if comm is None else comm


__all__ = ["Comm", "LocalComm", "LOCAL", "PeerExit", "from_environment", "communicator", "launched_size", "launched_rank",
           "stream_range", "first_reason", "decide_failure", "param_checksum",
           "exit_code_of", "error_message", "SYNC_CHECK_EVERY", "COLLECTIVE_ERRORS",
           "MPI_INSTALL_HINT"]
