"""The files a training run writes in its directory: latest (everything needed to
resume exactly), best (the weights with the lowest validation loss), the --publish copy
of best, and metrics.jsonl (one record per evaluation, never ahead of latest)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..store.checkpoint import BEST_NAME, LATEST_NAME

METRICS_NAME = "metrics.jsonl"


class RunFiles:
    """Where a run's files are (see the module docstring)."""

    def __init__(self, run_dir, publish: Path | None = None):
        self.dir = Path(run_dir)
        self.latest = self.dir / LATEST_NAME
        self.best = self.dir / BEST_NAME
        self.metrics = self.dir / METRICS_NAME
        self.publish = publish              # the --publish copy of best, or None

    def remove_outputs(self) -> None:
        """--restart: the previous run's checkpoints and metrics go."""
        for p in (self.latest, self.best, self.metrics):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def append_metrics(self, rec: dict) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def trim_metrics(self, iteration: int) -> None:
        """Drop metrics.jsonl lines past the resumed ``iteration`` (written by a run that
        died before its next save), so a resumed run never repeats an iteration."""
        from ..store.fsutil import atomic_write_text

        try:
            lines = self.metrics.read_text(encoding="utf-8").splitlines(keepends=True)
        except (OSError, UnicodeDecodeError):
            return
        keep = []
        for line in lines:
            try:
                it = json.loads(line).get("iter")
            except (ValueError, AttributeError, RecursionError):
                it = None
            if isinstance(it, int) and it > iteration:
                continue
            keep.append(line)
        if len(keep) != len(lines):
            atomic_write_text(self.metrics, "".join(keep))

    def publish_best(self) -> None:
        from ..store.fsutil import publish_copy

        publish_copy(self.best, self.publish)


def train_state(tr, stopped: str | None = None) -> dict:
    """The ``train_state`` of trainer ``tr``'s checkpoints: everything besides the
    tensors that the loop needs to continue exactly where it stopped."""
    return {
        "iteration": tr.iteration,
        "epoch": tr.epoch,
        "pos": tr.pos,
        "batches_per_epoch": tr.bpe,
        "best_val_loss": None if not math.isfinite(tr.best_val) else tr.best_val,
        "best_iteration": tr.best_iter,
        "bad_evals": tr.bad_evals,
        "last_val_loss": tr.last_val,
        "elapsed": tr.elapsed,
        "chars_seen": tr.chars_seen,
        "rng": tr.rng.bit_generator.state,
        "optimizer": tr.opt.state_dict(),
        "train_config": tr.tcfg.to_dict(),
        "data_dir": str(Path(tr.opts.data_dir).resolve()),
        "data_sources": tr.dataset.meta.get("sources"),
        "data_chars": tr.data_chars(),
        "threads": tr.opts.threads,
        "world_size": tr.comm.size,
        "stopped": stopped,
        "init_from": tr.init_from,
    }


def _state_tensors(tr) -> dict[str, np.ndarray]:
    """The optimizer's moments and the carried state of all B streams (a collective
    under MPI: each rank holds its own streams)."""
    t = dict(tr.opt.state_tensors())
    state = tr.state if tr.state is not None else tr.model.initial_state(tr.hi - tr.lo)
    state = tr.comm.gather_state(state, tr.tcfg.batch_size)
    t["state.h"] = state[0]
    if len(state) > 1:
        t["state.c"] = state[1]
    return t


def save_latest(tr, stopped: str | None = None) -> None:
    """Write latest (rank 0); every MPI rank calls it."""
    from ..store.checkpoint import save_model

    # never save parameters the ranks disagree on
    tr.comm.check_sync(tr.iteration, tr.model.flat, force=True)
    tensors = _state_tensors(tr)
    if tr.rank0:
        save_model(tr.files.latest, tr.model, train_state=train_state(tr, stopped),
                   extra_tensors=tensors)
    tr.latest_saved = True


def save_best(tr) -> None:
    """Write best (rank 0); every MPI rank calls it, so the check comes first."""
    from ..store.checkpoint import save_model

    tr.comm.check_sync(tr.iteration, tr.model.flat, force=True)
    if tr.rank0:
        # weights plus the training state (for `charrnn info`); no optimizer tensors
        save_model(tr.files.best, tr.model, train_state=train_state(tr))
        tr.publish_pending = tr.files.publish is not None
