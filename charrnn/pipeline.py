"""Layer pipelining: the layers of a stack run at the same time on successive chunks of
time steps, one thread per layer.

Within one layer the time steps are sequential, and at B ~ 50 each step's recurrent
product is too small for two BLAS threads to share well.  Across layers there is slack:
layer k's steps in chunk c need only layer k-1's outputs for chunk c, so while layer k
works on chunk c, layer k-1 already works on chunk c+1 (backward: the same, from the last
chunk down and from the top layer down).  Each layer thread runs its chunk as one numba
kernel call that makes its products through single-threaded BLAS without the GIL
(charrnn.kernels.steps), so an L-layer stack keeps L cores busy and no thread pool
fights another.  (Sharing the product between two layers over a chunk, half of its
columns in each thread, to balance the stages measured no faster: not done.)

Measured on 2 cores, training step with Adam, B=50, T=50, chars/s, three alternating
fresh processes each (benchmarks/_worker.py; sequential -> pipelined): LSTM 2x128
84-92k -> 89-118k; LSTM 2x256 38-39k -> 40-43k; RNN 2x256 112-114k -> 135-143k; GRU
2x256 45-47k -> 37-50k; LSTM 2x512 (T=100) 13.0k -> 11.9k.  For H >= 512 two BLAS threads
on one product win (they split the weights between two cores' caches), so
``CHARRNN_PIPELINE=auto`` keeps the sequential order there; forward-only passes
(evaluation) are never pipelined (charrnn.model).

The results equal the sequential order's up to float rounding, not bit for bit: OpenBLAS
itself rounds differently with one and with two threads, and for a product over a chunk
of rows and over all rows.  For a given thread count and T the chunks are fixed, so a
run is deterministic (the same seed gives the same model, and a resumed run continues
bit for bit).

``CHARRNN_PIPELINE`` chooses: ``auto`` (the default) pipelines training passes of
stacks of L >= 2 layers at most MAX_HIDDEN wide when threads >= 2; ``1`` pipelines
wherever it can run (L >= 2, threads >= 2); ``0`` never.  ``CHARRNN_PIPELINE_CHUNKS``
sets the number of chunks (default 5).

(A first version bound the time loops to the first OpenBLAS that threadpoolctl listed.
When that was scipy's, loaded by numba for np.dot, whose threads --threads does not
limit, two layer threads each ran a two-thread product and about one process in three
trained 10-15x slower; perf showed scipy's OpenBLAS threads spinning in inner_thread.
kernels.blas now binds numpy's own library.)
"""
from __future__ import annotations

import concurrent.futures
import os
import threading

from . import runtime

MAX_HIDDEN = 256          # pipeline layers at most this wide (see the module docstring)
DEFAULT_CHUNKS = 5


def plan(num_layers: int, hidden: int, T: int) -> list[tuple[int, int]] | None:
    """The chunks (t0, t1) to pipeline a pass over T steps in, or None to run the layers
    one after another (each over all T steps, with BLAS on all threads)."""
    mode = os.environ.get("CHARRNN_PIPELINE", "").strip() or "auto"
    if mode not in ("1", "auto") or num_layers < 2 or T < 2 or runtime.threads() < 2:
        return None
    if mode == "auto" and hidden > MAX_HIDDEN:
        return None
    try:
        n = int(os.environ.get("CHARRNN_PIPELINE_CHUNKS", "") or DEFAULT_CHUNKS)
    except ValueError:
        n = DEFAULT_CHUNKS
    n = max(2, min(n, T))
    bounds = [T * i // n for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n)]


class _Failed(Exception):
    """A stage stopped because another one failed."""


class Pipeline:
    """A pool of stage threads; :meth:`run` runs ``work(stage, t0, t1)`` for every stage
    and chunk, stage s on chunk c only after stage s-1 has finished chunk c."""

    def __init__(self):
        self._pool = None
        self._size = 0

    def _executor(self, n: int):
        if self._pool is None or self._size < n:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=n, thread_name_prefix="charrnn-layer")
            self._size = n
        return self._pool

    def run(self, stages: list, chunks: list[tuple[int, int]], work) -> None:
        cv = threading.Condition()
        done = [0] * len(stages)            # chunks finished, per stage
        failed: list[BaseException] = []

        def stage(i: int) -> None:
            for c, (t0, t1) in enumerate(chunks):
                with cv:
                    while i > 0 and done[i - 1] <= c and not failed:
                        cv.wait()
                    if failed:
                        raise _Failed()
                try:
                    work(stages[i], t0, t1)
                except BaseException as e:
                    with cv:
                        failed.append(e)
                        cv.notify_all()
                    raise
                with cv:
                    done[i] = c + 1
                    cv.notify_all()

        pool = self._executor(len(stages))
        with runtime.blas_single_thread():
            futures = [pool.submit(stage, i) for i in range(len(stages))]
            try:
                concurrent.futures.wait(futures)
            except BaseException:                 # e.g. KeyboardInterrupt while waiting
                with cv:
                    failed.append(RuntimeError("interrupted"))
                    cv.notify_all()
                concurrent.futures.wait(futures)  # never leave a stage writing buffers
                raise
        errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None and not isinstance(e, _Failed):
                raise e


__all__ = ["Pipeline", "plan"]
