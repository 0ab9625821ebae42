"""Training: truncated BPTT over a prepared dataset, with exact, atomic resume.

One call of :func:`train` runs one invocation of ``charrnn train``::

    lock RUN_DIR -> open data -> resume from latest (or init) -> loop:
        batch (B, T) from the B streams -> forward/backward -> clip + update
        every eval_every: validation loss, metrics.jsonl, best, latest
    -> final save -> summary

Run directory::

    RUN_DIR/latest.safetensors   weights + optimizer moments + carried state + train_state
    RUN_DIR/best.safetensors     weights with the lowest validation loss so far
    RUN_DIR/metrics.jsonl        one JSON object per evaluation (appended; survives resume)
    RUN_DIR/data/                the prepared data when train was given text
    RUN_DIR/.lock                held while training (charrnn.training.lock)

``train_state`` (JSON in latest's metadata) holds everything else the loop needs to
continue exactly where it stopped: iteration, epoch, position in the epoch, the dropout
generator's PCG64 state, best validation loss, patience counter, elapsed time and both
configs.  Resuming gives bit-identical parameters to a run that was never interrupted
(same threads: a BLAS reduction order may depend on the thread count).

The pieces around the step loop: :mod:`.options` (what a run is given, what a resumed
run may change), :mod:`.resume` (how a run starts), :mod:`.memory`, :mod:`.clock` (the
--max-time budget, signals, the progress bar), :mod:`.validation`, :mod:`.checkpoints`
and :mod:`.records` (what a run writes and says).  The trainer always holds a
communicator: MPI's ``Comm``, or a single process's ``LocalComm``.
"""
from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import numpy as np

from .. import console
from ..config import ModelConfig, TrainConfig
from ..errors import CheckpointError, Interrupted, TrainingDiverged
from ..store.checkpoint import read_checkpoint
from . import checkpoints, records, resume
from .checkpoints import RunFiles
from .clock import Clock, Signals, progress_bar, signals_deferred
from .memory import recompute_chunk
from .options import RunOptions
from .records import LN2
from .validation import EvalAbandoned, evaluate_split, plan_validation, rescore_best


class _Window:
    """The training loss and speed since the last evaluation."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.n, self.start = 0.0, 0, time.monotonic()

    def add(self, loss: float) -> None:
        self.loss_sum += loss
        self.n += 1

    def mean(self) -> float | None:
        return self.loss_sum / self.n if self.n else None

    def chars_per_sec(self, chars_per_step: int) -> float:
        span = time.monotonic() - self.start
        return self.n * chars_per_step / span if span > 0 else 0.0


def _warm_kernels(model, tcfg: TrainConfig, x, y) -> None:
    """Run every kernel a step uses once on a real batch ``x``, ``y`` (compiled, or
    loaded from the cache), touching no parameter, moment or random state."""
    from ..model.optim import Optimizer

    # the real batch shape and mode: some paths are chosen by size, and dropout's
    # only in training mode (a scratch generator: the run's own is not touched)
    v = np.zeros((x.shape[0], tcfg.seq_len), np.int64)          # validation's
    # Ctrl-C or SIGTERM while numba compiles would land inside its callbacks (lost,
    # or a half-built kernel): they wait until the kernels are ready, then act.
    # Each call twice: from a zero state, then from a carried one (other types).
    with signals_deferred(), np.errstate(over="ignore", invalid="ignore"):
        scratch_rng = np.random.Generator(np.random.PCG64(0))
        _, st = model.forward_backward(x, y, None, train=True, rng=scratch_rng)
        model.forward_backward(x, y, st, train=True, rng=scratch_rng)
        _, st = model.log_probs(v, v, None)
        model.log_probs(v, v, st)
        scratch = Optimizer(tcfg, 16, model.dtype)
        scratch.step(np.zeros(16, model.dtype), np.zeros(16, model.dtype), 0.0)


def _divergence(latest: Path, value: float, lr: float, iteration: int,
                what: str = "loss") -> TrainingDiverged:
    """The error of a run whose ``what`` stopped being finite."""
    kept = (f"the last good checkpoint {latest} is kept" if latest.exists()
            else "no checkpoint was written")
    return TrainingDiverged(f"{what} became {value} at iteration {iteration}; {kept}; "
                            f"try a lower --lr (it was {lr:g})")


class Trainer:
    """Holds the model, optimizer, data and loop state of one run; see module doc."""

    def __init__(self, mcfg: ModelConfig, tcfg: TrainConfig, opts: RunOptions):
        self.opts = opts
        self.files = RunFiles(opts.run_dir, opts.publish)
        self.comm = opts.comm
        self.rank0 = self.comm.rank == 0
        self.data_changed = False
        self.rescore_pending = False
        self.publish_pending = False
        self.val_steps: int | None = None    # positions per stream a validation scores
        resume.open_data(self, opts.data_dir)
        ck = None
        if not opts.restart and self.files.latest.exists():
            ck = read_checkpoint(self.files.latest)
            if ck.kind != "training":
                raise CheckpointError(f"{self.files.latest}: not a training checkpoint "
                                      "(it has no training state); use --restart")
        self.latest_saved = ck is not None       # a latest of this run exists
        self.resumed_stop = None                 # why the invocation that saved it stopped
        if ck is not None:
            resume.resume(self, ck, mcfg, tcfg)
        else:
            resume.start_fresh(self, mcfg, tcfg)

    def describe(self) -> str:
        """The start-up line: the model, the data and the threads."""
        m, t = self.mcfg, self.tcfg
        n_train, n_val = int(self.train_tokens.shape[0]), int(self.val_tokens.shape[0])
        return (f"model {m.cell.upper()} {m.num_layers}x{m.hidden_size} "
                f"({self.model.flat.size:,} parameters, {m.dtype}); data {n_train:,} "
                f"training chars (an epoch is {self.bpe:,} iterations of {t.batch_size}x"
                f"{t.seq_len}), {n_val:,} validation, vocabulary {len(self.model.vocab)}; "
                f"{self.opts.threads} thread(s)")

    def data_chars(self) -> int:
        return int(sum(self.dataset.split(n).shape[0] for n in ("train", "val", "test")))

    def epoch_float(self) -> float:
        return self.epoch + self.pos / self.bpe

    def save_latest(self, stopped: str | None = None) -> None:
        checkpoints.save_latest(self, stopped)

    def save_best(self) -> None:
        checkpoints.save_best(self)

    # ------------------------------------------------------------------ one step
    def _batch(self):
        x, y = self.loader.batch(self.pos, self.lo, self.hi)        # (b, T) each
        if self.lut is not None:
            x, y = self.lut[x], self.lut[y]
        return x, y

    def _lr(self, clock: Clock) -> float:
        from ..model.schedule import lr_at, total_iterations

        t = self.tcfg
        total = total_iterations(t, self.bpe)
        progress = None
        if t.schedule == "cosine" and clock.max_time > 0:
            progress = min(1.0, (time.monotonic() - clock.start) / clock.max_time)
        return lr_at(t, self.iteration, self.epoch_float(), total, progress)

    def _done(self, clock: Clock | None) -> str | None:
        t = self.tcfg
        if t.max_iters and self.iteration >= t.max_iters:
            return "max_iters"
        if t.epoch_limit and self.epoch >= t.epoch_limit:
            return "max_epochs"
        if clock is not None and clock.out_of_time():
            return "max_time"
        return None

    def _step(self, clock: Clock) -> tuple[float, float]:
        """One iteration: forward, backward, (all-reduce,) update; its loss and lr."""
        t, model = self.tcfg, self.model
        if self.pos == 0:
            self.state = None               # each epoch starts from a zero state
        x, y = self._batch()
        t0 = time.monotonic()
        masks = None if self.mcfg.dropout <= 0 else \
            self.comm.dropout_masks(model, t.batch_size, t.seq_len, self.rng)
        loss, self.state = model.forward_backward(x, y, self.state, train=True,
                                                  rng=self.rng, masks=masks)
        loss = self.comm.reduce_grad(model.grad_flat, loss, self.hi - self.lo, t.batch_size)
        lr = self._lr(clock)
        if not math.isfinite(loss):
            raise _divergence(self.files.latest, loss, lr, self.iteration + 1)
        norm = self.opt.step(model.flat, model.grad_flat, lr)
        if not math.isfinite(norm):
            raise _divergence(self.files.latest, norm, lr, self.iteration + 1,
                              "gradient norm")
        self.iteration += 1
        self.pos += 1
        if self.pos >= self.bpe:
            self.pos = 0
            self.epoch += 1
        self.chars_seen += t.batch_size * t.seq_len
        step_time = time.monotonic() - t0
        self.elapsed += step_time
        clock.step_done(step_time)
        self.comm.check_sync(self.iteration, model.flat)
        return loss, lr

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, should_stop=None) -> float | None:
        """Validation loss, or None without a validation split; EvalAbandoned when
        ``should_stop`` ends it early."""
        if self.val_tokens.shape[0] < 2:
            return None
        loss, _ = evaluate_split(self.model, self.val_tokens, self.tcfg.batch_size,
                                 self.tcfg.seq_len, self.lut, comm=self.comm,
                                 should_stop=should_stop, max_steps=self.val_steps)
        return loss

    def _evaluation(self, clock: Clock, sig: Signals, window: _Window, lr: float,
                    stopped: str | None) -> tuple[str | None, dict | None]:
        """Score validation, save an improvement to best; the stop reason (a signal or
        the deadline during the pass, patience) and the record to publish, if any."""
        def abandon() -> bool:
            return sig.received is not None or clock.past_deadline()
        cps = window.chars_per_sec(self.tcfg.batch_size * self.tcfg.seq_len)
        e0 = time.monotonic()
        try:                # ranks must finish a collective pass together
            val = self.evaluate(abandon if self.comm.alone else None)
            clock.eval_done(time.monotonic() - e0)
        except EvalAbandoned:
            val = None
            stopped = "signal" if sig.received is not None else "max_time"
            if stopped == "max_time" and self.rank0:
                console.log("validation pass abandoned: --max-time ran out during it "
                            "(this pass is not recorded)")
        if stopped == "signal" or (val is None and self.val_tokens.shape[0] >= 2):
            return stopped, None
        if val is not None and not math.isfinite(val):
            raise _divergence(self.files.latest, val, lr, self.iteration, "validation loss")
        metric = val if val is not None else (window.mean() or 0.0)
        self.last_val = val
        if metric < self.best_val:
            self.best_val, self.best_iter, self.bad_evals = metric, self.iteration, 0
            clock.timed_save(self.save_best)
        else:
            self.bad_evals += 1
        patience = self.tcfg.patience
        if patience and self.bad_evals >= patience and stopped is None:
            stopped = "patience"
            if self.rank0:
                console.log(f"early stopping: no improvement in {patience} evaluations")
        return stopped, records.eval_record(self, window.mean(), val, lr, cps)

    # ------------------------------------------------------------------ the run
    def _warm_up(self) -> None:
        """Compile (or load from the cache) every kernel a step uses before the clock
        starts, so a first run's compilation does not eat a --max-time budget."""
        t0 = time.monotonic()
        _warm_kernels(self.model, self.tcfg, *self._batch())
        spent = time.monotonic() - t0
        if spent > 2 and self.rank0:
            console.log(f"kernels ready in {spent:.0f} s (compiled once; not counted in "
                        "--max-time)")

    def run(self) -> dict:
        t = self.tcfg
        self.model.recompute_steps = recompute_chunk(self.hi - self.lo) if t.low_memory else 0
        start_iter = self.iteration
        stopped = self._done(None)
        if stopped is not None and self.final_eval_owed():
            return _owed_evaluation(self, stopped)
        if stopped is not None:
            return self._nothing_to_do(stopped)
        console.log(self.describe() if self.comm.alone else
                    self.comm.describe(t.batch_size, self.opts.threads))
        self._warm_up()
        clock = Clock(t.max_time, val_chars=int(self.val_tokens.shape[0]),
                      step_chars=t.batch_size * t.seq_len)
        plan_validation(self, clock)
        if self.rescore_pending:
            rescore_best(self, "the new validation split")
        bar = progress_bar(t, self.bpe, self.iteration, clock) if self.rank0 else None
        window, since_save = _Window(), 0
        # A diverging run is reported by the finiteness checks, with one Error line:
        # numpy's overflow warnings on the way there are noise.
        with Signals() as sig, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            while stopped is None:
                loss, lr = self._step(clock)
                window.add(loss)
                since_save += 1
                if bar is not None:
                    bar.advance(self.iteration, clock)
                    bar.postfix(f"loss {loss:.3f} bpc {loss / LN2:.3f} "
                                f"epoch {self.epoch_float():.2f}")
                stopped = self._done(clock)
                if sig.received is not None:
                    stopped = "signal"
                stopped = self.comm.agree_stop(stopped)
                do_eval = self.iteration % t.eval_every == 0 or stopped is not None
                if do_eval and stopped is None and clock.deadline is not None:
                    # this evaluation is the last when no second one would fit (every
                    # rank asks, together)
                    stopped = self.comm.agree_stop(
                        "max_time" if clock.no_room_after_eval() else None)
                pending = None    # an evaluation's record, written after the save
                if do_eval and stopped != "signal":
                    stopped, pending = self._evaluation(clock, sig, window, lr, stopped)
                    window.reset()
                if do_eval and t.save_every == 0 or (t.save_every and since_save >= t.save_every) \
                        or stopped is not None:
                    clock.timed_save(self.save_latest, stopped)
                    since_save = 0
                if pending is not None:
                    if not self.latest_saved:            # the same on every MPI rank
                        clock.timed_save(self.save_latest, stopped)
                    records.publish_record(self, pending, bar)
                if self.publish_pending and self.rank0:
                    self.publish_pending = False
                    self.files.publish_best()
        if bar is not None:
            bar.close()
        summary = records.summary(self, stopped, start_iter, clock.start)
        if stopped == "signal":
            signum = sig.received
            raise Interrupted(
                f"stopped by {signal.Signals(signum).name} at iteration {self.iteration}; "
                f"saved {self.files.latest} (run the same command again to resume)",
                128 + signum)
        return summary

    def final_eval_owed(self) -> bool:
        """A signal stopped the last invocation at the run's limit, before its final
        validation pass was recorded (a signal skips or abandons that pass)."""
        return self.resumed_stop == "signal" and self.val_tokens.shape[0] >= 2

    def _nothing_to_do(self, stopped: str) -> dict:
        """The run is already past its limits: one line, and latest rewritten only to
        record a corpus change (so `charrnn info` shows the corpus it will train on)."""
        if self.data_changed:
            if self.rescore_pending:
                rescore_best(self, "the new validation split")
            self.save_latest(stopped)
        if self.rank0:
            console.log(records.nothing_to_do_line(self, stopped, saved=self.data_changed))
        summary = records.summary(self, stopped, self.iteration, time.monotonic())
        summary["saved"] = self.data_changed
        summary["nothing_to_do"] = True
        return summary


def _owed_evaluation(tr: Trainer, stopped: str) -> dict:
    """Finish a run that reached its limit but was stopped by a signal before its final
    evaluation: score validation now, keep an improvement as best, save latest with the
    limit as its stop reason, record and publish, as the uninterrupted run would have."""
    if tr.rank0:
        console.log(f"{tr.files.dir} reached its limit at iteration {tr.iteration}, but "
                    "its final validation pass was interrupted; scoring it now")
    if tr.rescore_pending:
        rescore_best(tr, "the new validation split")
    tr._warm_up()
    clock = Clock(0, val_chars=int(tr.val_tokens.shape[0]),
                  step_chars=tr.tcfg.batch_size * tr.tcfg.seq_len)
    with Signals() as sig, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        stopped, pending = tr._evaluation(clock, sig, _Window(), tr._lr(clock), stopped)
        tr.save_latest(stopped)
    if pending is not None:
        records.publish_record(tr, pending, None)
    if tr.publish_pending and tr.rank0:
        tr.publish_pending = False
        tr.files.publish_best()
    if stopped == "signal":
        raise Interrupted(f"stopped by {signal.Signals(sig.received).name} during the "
                          f"final validation pass; saved {tr.files.latest} (run the same "
                          "command again to finish)", 128 + sig.received)
    return records.summary(tr, stopped, tr.iteration, clock.start)


def train(mcfg: ModelConfig, tcfg: TrainConfig, opts: RunOptions) -> dict:
    """Train (or resume) the run in ``opts.run_dir``; returns the summary dict.

    The caller holds the run directory's lock (see :mod:`charrnn.training.lock`)."""
    from ..store.fsutil import remove_stale_temps

    comm = opts.comm
    if comm.rank == 0:
        Path(opts.run_dir).mkdir(parents=True, exist_ok=True)
        remove_stale_temps(opts.run_dir)
    # MPI: every rank builds its trainer; if that fails on any rank, all stop together.
    # building the model imports (and on a first run compiles) kernels: a signal then
    # waits until it is built, like one during the warm-up (see signals_deferred)
    with comm.together(), signals_deferred():
        trainer = Trainer(mcfg, tcfg, opts)
    return trainer.run()


__all__ = ["train", "Trainer", "RunOptions"]
