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
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import console
from ..store.checkpoint import BEST_NAME, LATEST_NAME, read_checkpoint
from ..config import LENGTH_LIMITS, LOW_MEMORY_TIME, ModelConfig, TrainConfig
from ..errors import CheckpointError, ConfigError, DataError, Interrupted, TrainingDiverged, VocabError
from ..store.checkpoint import load_model, save_model

METRICS_NAME = "metrics.jsonl"
LN2 = math.log(2.0)
# Options a resumed run may change: how long it runs, how often it reports, and how it
# optimises from here on (char-rnn and nanoGPT let a resumed run lower its learning
# rate).  Every other option is part of what the run *is* (its shape, its data, its
# optimizer's moments); changing it needs --restart.
RESUMABLE_CHANGES = {
    ("train", n) for n in (
        "max_iters", "max_epochs", "max_time", "eval_every", "save_every", "patience",
        "low_memory", "lr", "schedule", "warmup_iters", "lr_decay", "decay_every",
        "decay_after", "clip", "clip_value", "weight_decay")
} | {("model", "dropout")}


@dataclass
class RunOptions:
    """What the CLI hands to :func:`train` besides the two configs."""

    run_dir: Path
    data_dir: Path
    restart: bool = False
    init_from: str | None = None
    # (section, field) -> value for options the user gave explicitly ("model"/"train").
    explicit: dict = field(default_factory=dict)
    json_lines: bool = False
    threads: int = 1
    emit: Callable[[dict], None] | None = None      # receives each eval record (--json)
    comm: object | None = None                      # charrnn.training.distributed.Comm for MPI
    grow_vocab: bool = False                        # extend the vocabulary with new chars
    publish: Path | None = None                     # copy of best, updated atomically


# ---------------------------------------------------------------------- helpers

def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def _available_memory() -> int | None:
    from ..store.checkpoint import available_memory     # (a seam for the tests)

    return available_memory()


def estimate_memory(mcfg: ModelConfig, tcfg: TrainConfig) -> int:
    """Bytes a training run needs, roughly: parameters with gradient and optimizer moments,
    the per-layer activations backward keeps (T*B*(3G+6)*H per layer), logits and their
    gradient (2*T*B*V), and the validation pass's buffers (the same again)."""
    item = np.dtype(mcfg.dtype).itemsize
    H, L, G, V = mcfg.hidden_size, mcfg.num_layers, mcfg.gates, max(mcfg.vocab_size, 1)
    I0 = mcfg.embed_size if mcfg.embed_size > 0 else V
    P = (mcfg.embed_size * V + G * H * (I0 + H + 2) + (L - 1) * G * H * (2 * H + 2)
         + V * (H + 1))
    N = tcfg.batch_size * tcfg.seq_len
    acts = L * N * (3 * G + 6) * H + 2 * N * V + 4 * N * H
    if tcfg.low_memory:        # states kept whole, gate buffers one chunk of steps
        Nc = min(N, tcfg.batch_size * recompute_chunk(tcfg.batch_size))
        from ..model.cells import RECOMPUTE_ROWS
        acts = (L * N * 3 * H + (3 * G + 3) * Nc * H + 2 * N * V + 4 * N * H
                + RECOMPUTE_ROWS * (G + 3) * H)          # the recomputation's scratch
    return int(item * (4 * P + 2 * acts) + 8 * 2 * N)


def recompute_chunk(B: int) -> int:
    """Steps per chunk of a --low-memory pass: at least 8, and enough that the chunk's
    weight-gradient products have about 1024 rows (B per step)."""
    return max(8, -(-1024 // B))


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def check_memory(mcfg: ModelConfig, tcfg: TrainConfig) -> TrainConfig:
    """``tcfg``, or ``tcfg`` with low_memory on when the run fits in the available
    memory only that way (said on stderr); a ConfigError when it does not fit at all."""
    need = estimate_memory(mcfg, tcfg)
    avail = _available_memory()
    if avail is None or need <= 0.9 * avail:
        return tcfg
    if not tcfg.low_memory:
        low = tcfg.replace(low_memory=True)
        need_low = estimate_memory(mcfg, low)
        if need_low <= 0.9 * avail:
            console.log(f"this model and batch need about {_fmt_bytes(need)} of memory but "
                        f"only {_fmt_bytes(avail)} is available: training with --low-memory "
                        f"({_fmt_bytes(need_low)}; the gates are recomputed in backward, "
                        f"{LOW_MEMORY_TIME} the time)")
            return low
        need = need_low
    raise ConfigError(
        f"this model and batch need about {_fmt_bytes(need)} of memory (with --low-memory) "
        f"but only {_fmt_bytes(avail)} is available; lower --batch-size, --seq-len or "
        "--hidden")


def _describe_option(section: str, name: str) -> str:
    from_field = {"hidden_size": "hidden", "num_layers": "layers", "embed_size": "embed",
                  "gru_reset": "gru-reset"}
    return "--" + from_field.get(name, name).replace("_", "-")


def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def _fmt_limit(name: str, v) -> str:
    if not v:
        return "none"
    return fmt_duration(v) if name == "max_time" else str(v)


def merge_resumed(saved_m: ModelConfig, saved_t: TrainConfig, explicit: dict,
                  run_dir: Path) -> tuple[ModelConfig, TrainConfig, list[str]]:
    """Configs of a resumed run and the changes to name in the log.

    The saved configs, with the explicitly given options that may change
    (:data:`RESUMABLE_CHANGES`); any other differing option is an error.  The length
    limits go together: a command that names any of :data:`LENGTH_LIMITS` sets all three
    (those it leaves out are off), so the same cron line that gives only ``--max-time``
    trains for that long every night whatever epoch the run has reached."""
    changes = {"model": {}, "train": {}}
    named_limits = {n for (sec, n) in explicit if sec == "train" and n in LENGTH_LIMITS}
    wanted = dict(explicit)
    if named_limits:
        for n in LENGTH_LIMITS:
            wanted.setdefault(("train", n), 0.0 if n == "max_time" else 0)
    notes = []
    for (section, name), value in sorted(wanted.items()):
        saved = getattr(saved_m if section == "model" else saved_t, name)
        if section == "model" and name == "vocab_size":
            continue
        if value == saved or (isinstance(saved, float) and isinstance(value, (int, float))
                              and float(value) == saved):
            continue
        if (section, name) in RESUMABLE_CHANGES:
            changes[section][name] = value
            opt = _describe_option(section, name)
            if name in LENGTH_LIMITS:
                notes.append(f"{opt} {_fmt_limit(name, saved)} -> {_fmt_limit(name, value)}")
            else:
                notes.append(f"{opt} {_fmt_value(saved)} -> {_fmt_value(value)}")
            continue
        opt = _describe_option(section, name)
        raise ConfigError(
            f"{run_dir} was trained with {opt} {_fmt_value(saved)}, but this command asks for "
            f"{opt} {_fmt_value(value)}; drop the option to resume, or add --restart to "
            "start a new run")
    return (saved_m.replace(**changes["model"]), saved_t.replace(**changes["train"]), notes)


def vocab_map(data_vocab, model_vocab, what: str) -> np.ndarray | None:
    """Ids of the data's vocabulary -> the model's, or None when they are the same.

    Characters the model does not know map to its unknown symbol (with a warning) or,
    when it has none, raise VocabError naming some of them."""
    if data_vocab == model_vocab:
        return None
    lut = np.empty(len(data_vocab), np.int64)                 # (V_data,)
    missing = []
    for i, ch in enumerate(data_vocab.itos):
        j = model_vocab.stoi.get(ch)
        if j is None or (data_vocab.unk is not None and ch == data_vocab.unk):
            if model_vocab.unk is not None:
                j = model_vocab.unk_id
            elif ch == data_vocab.unk:
                missing.append("<unknown symbol>")
                continue
            else:
                missing.append(ch)
                continue
        lut[i] = j
    if missing:
        shown = ", ".join(repr(c) for c in missing[:8])
        more = f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""
        raise VocabError(
            f"{what} has characters not in the model's vocabulary: {shown}{more}; "
            "use --grow-vocab to extend the vocabulary, or prepare the data with the "
            "model's vocabulary")
    unk_mapped = [c for c in data_vocab.chars if c not in model_vocab.stoi]
    if unk_mapped:
        console.warn(f"{len(unk_mapped)} character(s) of {what} are not in the model's "
                     "vocabulary; they map to its unknown symbol")
    return lut


# ---------------------------------------------------------------------- evaluation

class EvalAbandoned(Exception):
    """A validation pass stopped part-way (a signal, or the --max-time deadline)."""


def evaluate_split(model, tokens: np.ndarray, batch_size: int, seq_len: int,
                   lut: np.ndarray | None = None, comm=None,
                   should_stop: Callable[[], bool] | None = None,
                   max_steps: int | None = None) -> tuple[float, int]:
    """Mean loss (nats/char) over a split and the number of characters scored, by
    :func:`charrnn.evaluate.score_tokens` (the same characters ``charrnn eval --split``
    scores; with ``max_steps`` the same leading part every time).  A collective under
    MPI.  :class:`EvalAbandoned` when ``should_stop`` ends it early."""
    from ..evaluate import ScoringStopped, score_tokens

    if int(tokens.shape[0]) < 2:
        return float("nan"), 0
    try:
        score = score_tokens(model, tokens, batch_size, seq_len, lut, comm=comm,
                             should_stop=should_stop, max_steps=max_steps)
    except ScoringStopped:
        raise EvalAbandoned from None
    return score.nll / max(score.chars, 1), score.chars


# ---------------------------------------------------------------------- trainer

@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT and SIGTERM back (they stay pending) until the block ends; then the
    usual handlers run.  Only in the main thread, where signals are handled."""
    import threading

    sigs = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread() or \
            not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _Signals:
    """SIGINT/SIGTERM set a flag; the loop saves and stops after the current step."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt     # a second Ctrl-C: stop now
        self.received = signum

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:           # not the main thread (tests): no handlers
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class _Clock:
    """The --max-time budget of one invocation, counted from the first training step.

    The loop stops while there is still time for one more step, the final validation
    pass and the saves, each estimated from what it cost so far in this run (the first
    validation pass is timed on one window before the first step)."""

    # room for the machine to get slower between a measurement and the end of the run
    SAFETY = 1.5

    def __init__(self, max_time: float, val_chars: int, step_chars: int):
        # CHARRNN_TEST_TIME_SCALE=K divides the budget by K, so that the tests can run
        # the README's own cron line (--max-time 50m) night after night in seconds.
        max_time /= float(os.environ.get("CHARRNN_TEST_TIME_SCALE", "") or 1)
        self.max_time = max_time
        self.start = time.monotonic()
        self.deadline = self.start + max_time if max_time else None
        self.val_chars, self.step_chars = val_chars, step_chars
        self.step = 0.0                 # recent seconds per step (moving average)
        self.eval: float | None = None  # seconds of a validation pass (recent, pessimistic)
        self.save = 0.0                 # seconds of the slowest save so far

    def step_done(self, seconds: float) -> None:
        self.step = seconds if self.step == 0 else 0.8 * self.step + 0.2 * seconds

    def eval_done(self, seconds: float) -> None:
        self.eval = seconds if self.eval is None else max(seconds, 0.5 * self.eval)

    def save_done(self, seconds: float) -> None:
        self.save = max(self.save, seconds)

    def _eval_estimate(self) -> float:
        if self.eval is not None:
            return self.eval
        if self.val_chars < 2 or self.step == 0:
            return 0.0
        return self.val_chars / self.step_chars * self.step

    def out_of_time(self) -> bool:
        if self.deadline is None:
            return False
        reserve = self.step + self._eval_estimate() + 3 * self.save       # best, latest, publish
        return time.monotonic() + self.SAFETY * reserve >= self.deadline

    def no_room_after_eval(self) -> bool:
        """Whether, after the evaluation about to start, there would be no time left
        for another step and the final evaluation: then this one is the final one."""
        if self.deadline is None:
            return False
        ev = self._eval_estimate()
        reserve = self.step + 2 * ev + 3 * self.save
        return time.monotonic() + self.SAFETY * reserve >= self.deadline

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


class _Bar:
    """The terminal progress bar of a training run: seconds of --max-time, or
    iterations (with a total when the run's length is known)."""

    def __init__(self, tq, by_time: bool):
        self.tq, self.by_time = tq, by_time

    def advance(self, iteration: int, clock: _Clock) -> None:
        if self.by_time:
            n = min(self.tq.total, int(time.monotonic() - clock.start))
            if n > self.tq.n:
                self.tq.update(n - self.tq.n)
        else:
            self.tq.update(1)

    def postfix(self, text: str) -> None:
        self.tq.set_postfix_str(text, refresh=False)

    def write(self, line: str) -> None:
        console.log(line, bar=self.tq)

    def close(self) -> None:
        self.tq.close()


class Trainer:
    """Holds the model, optimizer, data and loop state of one run; see module doc."""

    def __init__(self, mcfg: ModelConfig, tcfg: TrainConfig, opts: RunOptions):
        self.opts = opts
        self.run_dir = Path(opts.run_dir)
        self.latest_path = self.run_dir / LATEST_NAME
        self.best_path = self.run_dir / BEST_NAME
        self.comm = opts.comm
        self.rank0 = self.comm is None or self.comm.rank == 0
        self.data_changed = False
        self._rescore_pending = False
        self._publish_pending = False
        self.val_steps: int | None = None    # positions per stream a validation scores
        self._open_data(opts.data_dir)
        resumed = None
        if not opts.restart and self.latest_path.exists():
            resumed = read_checkpoint(self.latest_path)
            if resumed.kind != "training":
                raise CheckpointError(f"{self.latest_path}: not a training checkpoint "
                                      "(it has no training state); use --restart")
        self.latest_saved = resumed is not None       # a latest of this run exists
        if resumed is not None:
            self._resume(resumed, mcfg, tcfg)
        else:
            self._fresh(mcfg, tcfg)

    # ------------------------------------------------------------------ setup
    def _open_data(self, data_dir) -> None:
        from ..store.data import Dataset

        self.dataset = Dataset(data_dir)
        self.data_vocab = self.dataset.vocab
        self.train_tokens = self.dataset.split("train")
        self.val_tokens = self.dataset.split("val")

    def _make_loader(self) -> None:
        from ..store.data import StreamBatches

        t = self.tcfg
        self.loader = StreamBatches(self.train_tokens, t.batch_size, t.seq_len)
        self.bpe = self.loader.batches_per_epoch
        if self.comm is not None:
            self.lo, self.hi = self.comm.stream_range(t.batch_size)
        else:
            self.lo, self.hi = 0, t.batch_size

    def _fresh(self, mcfg: ModelConfig, tcfg: TrainConfig) -> None:
        from ..model.network import Model

        if self.opts.init_from:
            from ..store.checkpoint import model_from_checkpoint

            ck = read_checkpoint(self.opts.init_from)
            base = ck.config
            changes = {}
            for (section, name), value in self.opts.explicit.items():
                if section == "model" and getattr(base, name) != value:
                    if name in ("dropout",):
                        changes[name] = value
                        continue
                    opt = _describe_option(section, name)
                    raise ConfigError(
                        f"{self.opts.init_from} has {opt} {_fmt_value(getattr(base, name))}; "
                        f"--init-from cannot change it to {_fmt_value(value)}")
            model = model_from_checkpoint(ck)
            if ck.vocab is None:
                raise CheckpointError(f"{ck.path}: checkpoint has no vocabulary")
            if changes:
                from ..model.network import Model as _M
                m2 = _M(base.replace(**changes), model.flat.copy())
                m2.vocab = model.vocab
                model = m2
            self.mcfg = model.config
            console.log(f"initialised from {ck.path}")
        else:
            self.mcfg = mcfg.replace(vocab_size=len(self.data_vocab))
            tcfg = check_memory(self.mcfg, tcfg)
            model = Model.from_config(self.mcfg, seed=tcfg.seed)
            model.vocab = self.data_vocab
        self.tcfg = tcfg
        self.model = model
        self.iteration = 0
        self.epoch = 0
        self.pos = 0
        self.state = None
        self.best_val = math.inf
        self.best_iter = 0
        self.bad_evals = 0
        self.elapsed = 0.0
        self.chars_seen = 0
        self.last_val = None
        self.init_from = (str(Path(self.opts.init_from).resolve())
                          if self.opts.init_from else None)
        self._make_loader()
        from ..model.optim import Optimizer

        self.opt = Optimizer(tcfg, model)
        self._set_vocab_map()
        self.rng = np.random.Generator(np.random.PCG64(tcfg.seed))
        if self.rank0:
            if self.opts.restart:
                for p in (self.latest_path, self.best_path, self.run_dir / METRICS_NAME):
                    try:
                        p.unlink()
                    except FileNotFoundError:
                        pass

    def _resume(self, ck, mcfg: ModelConfig, tcfg: TrainConfig) -> None:
        from ..store.checkpoint import model_from_checkpoint
        from ..model.optim import Optimizer

        ts = ck.train_state
        try:
            saved_t = TrainConfig.from_dict(ts["train_config"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{ck.path}: training state is incomplete ({e})") from None
        self.init_from = ts.get("init_from") if isinstance(ts.get("init_from"), str) else None
        self._check_init_from(ck)
        self.mcfg, self.tcfg, notes = merge_resumed(ck.config, saved_t, self.opts.explicit,
                                                    self.run_dir)
        # a checkpoint's batch and sequence lengths are input too: refuse what cannot fit
        self.tcfg = check_memory(self.mcfg, self.tcfg)
        model = model_from_checkpoint(ck)
        if self.mcfg != model.config:                  # a new --dropout
            from ..model.network import Model

            vocab = model.vocab
            model = Model(self.mcfg.replace(vocab_size=model.config.vocab_size), model.flat)
            model.vocab = vocab
        self.model = model
        if notes and self.rank0:
            console.log("changed on resume: " + ", ".join(notes))
        self._make_loader()
        try:
            self.opt = Optimizer(self.tcfg, model)
            self.opt.load_state(ck.tensors, ts["optimizer"])
            self.iteration = int(ts["iteration"])
            self.epoch = int(ts["epoch"])
            self.pos = int(ts["pos"])
            self.best_val = float(ts["best_val_loss"]) if ts.get("best_val_loss") is not None \
                else math.inf
            self.best_iter = int(ts.get("best_iteration", 0))
            self.bad_evals = int(ts.get("bad_evals", 0))
            self.elapsed = float(ts.get("elapsed", 0.0))
            self.chars_seen = int(ts.get("chars_seen", 0))
            self.last_val = ts.get("last_val_loss")
            bg = np.random.PCG64()
            bg.state = ts["rng"]
            self.rng = np.random.Generator(bg)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{ck.path}: training state is incomplete or invalid "
                                  f"({type(e).__name__}: {e}); use --restart") from None
        self._set_vocab_map()
        old_sources, new_sources = ts.get("data_sources"), self.dataset.meta.get("sources")
        self.data_changed = old_sources is not None and new_sources != old_sources
        if self.data_changed:
            self._on_data_change(ts)
        elif ts.get("batches_per_epoch") not in (None, self.bpe) or self.pos >= self.bpe:
            console.warn("the training data changed size since the last save; "
                         "starting at the beginning of the data")
            self.pos = 0
        names = ["state.h", "state.c"] if self.mcfg.cell == "lstm" else ["state.h"]
        if self.pos > 0:
            try:
                self.state = tuple(np.array(ck.tensors[n], dtype=model.dtype) for n in names)
            except KeyError as e:
                raise CheckpointError(f"{ck.path}: carried state {e} is missing") from None
            want = (self.mcfg.num_layers, self.tcfg.batch_size, self.mcfg.hidden_size)
            if any(s.shape != want for s in self.state):
                raise CheckpointError(f"{ck.path}: carried state has the wrong shape")
            self.state = tuple(np.ascontiguousarray(s[:, self.lo:self.hi]) for s in self.state)
        else:
            self.state = None
        if self.rank0:
            self._trim_metrics()
        console.log(f"resuming {self.run_dir} from iteration {self.iteration} "
                    f"(epoch {self.epoch_float():.2f})")

    def _check_init_from(self, ck) -> None:
        """--init-from on a run that already has a checkpoint: the same checkpoint it was
        started from is a no-op (the same command again resumes); any other is refused,
        since the run's weights no longer come from it."""
        given = self.opts.init_from
        if not given:
            return
        if self.init_from is not None and Path(given).resolve() == Path(self.init_from):
            return
        started = (f"was started from {self.init_from}" if self.init_from
                   else "was not started with --init-from")
        raise ConfigError(
            f"{self.run_dir} already has a checkpoint and {started}; --init-from {given} "
            "would be ignored. Drop --init-from to resume, or add --restart to start over "
            f"from {given}")

    def _set_vocab_map(self) -> None:
        """Map the data's ids to the model's; grow the model's vocabulary if asked."""
        try:
            self.lut = vocab_map(self.data_vocab, self.model.vocab, "the training data")
            return
        except VocabError:
            if not self.opts.grow_vocab or self.model.vocab.unk is not None:
                raise
        from .runs import grow_model_vocab

        new_chars = self.model.vocab.missing(self.data_vocab.chars)
        new_vocab = self.model.vocab.extend(new_chars)
        self.model, self.opt = grow_model_vocab(self.model, new_vocab,
                                                seed=self.tcfg.seed + self.iteration + 1,
                                                optimizer=self.opt)
        self.mcfg = self.model.config
        shown = ", ".join(repr(c) for c in new_chars[:8])
        console.log(f"vocabulary grown by {len(new_chars)} character(s) ({shown}) to "
                    f"{len(new_vocab)}")
        self.lut = vocab_map(self.data_vocab, self.model.vocab, "the training data")

    def _on_data_change(self, ts: dict) -> None:
        """The training text changed since the last save: restart the data position,
        keep weights and optimizer state, and re-score best on the new validation split
        so that best means best on the current data."""
        old_chars, new_chars = ts.get("data_chars"), self._data_chars()
        old = "?" if old_chars is None else f"{old_chars:,}"
        console.log(f"corpus changed: {old} -> {new_chars:,} chars; continuing from "
                    f"iteration {self.iteration} on the new data")
        if self.pos > 0:
            self.epoch += 1          # the new data starts a new epoch: epochs never go back
        self.pos = 0
        self.state = None
        self.bad_evals = 0
        self.best_val = math.inf
        self.last_val = None         # measured on the old split: not comparable any more
        # best is re-scored by run(), inside the --max-time budget
        self._rescore_pending = (self.best_path.exists()
                                 and self.val_tokens.shape[0] >= 2)

    def _rescore_best(self, what: str) -> None:
        """Score best.safetensors on the validation data as this run scores it now, so
        that "best" and "val" are measured on the same characters."""

        self._rescore_pending = False
        self.best_val = math.inf
        try:
            best = load_model(self.best_path)
            if best.vocab != self.model.vocab and best.vocab.chars == \
                    self.model.vocab.chars[:len(best.vocab.chars)]:
                from .runs import grow_model_vocab   # grown this night: grow best too

                best, _ = grow_model_vocab(best, self.model.vocab, seed=self.tcfg.seed)
            lut = vocab_map(self.data_vocab, best.vocab, "the validation data")
        except (CheckpointError, VocabError) as e:
            console.warn(f"cannot re-score {self.best_path} on {what} ({e}); the next "
                         "evaluation replaces it")
            return
        self.best_val, _ = evaluate_split(best, self.val_tokens, self.tcfg.batch_size,
                                          self.tcfg.seq_len, lut, max_steps=self.val_steps)
        console.log(f"re-scored {self.best_path.name} on {what}: "
                    f"loss {self.best_val:.4f} (bpc {self.best_val / LN2:.3f})")

    def describe(self) -> str:
        """The start-up line: the model, the data and the threads."""
        m, t = self.mcfg, self.tcfg
        n_train, n_val = int(self.train_tokens.shape[0]), int(self.val_tokens.shape[0])
        return (f"model {m.cell.upper()} {m.num_layers}x{m.hidden_size} "
                f"({self.model.flat.size:,} parameters, {m.dtype}); data {n_train:,} "
                f"training chars (an epoch is {self.bpe:,} iterations of {t.batch_size}x"
                f"{t.seq_len}), {n_val:,} validation, vocabulary {len(self.model.vocab)}; "
                f"{self.opts.threads} thread(s)")

    def _data_chars(self) -> int:
        return int(sum(self.dataset.split(n).shape[0] for n in ("train", "val", "test")))

    # ------------------------------------------------------------------ state
    def epoch_float(self) -> float:
        return self.epoch + self.pos / self.bpe

    def train_state(self, stopped: str | None = None) -> dict:
        return {
            "iteration": self.iteration,
            "epoch": self.epoch,
            "pos": self.pos,
            "batches_per_epoch": self.bpe,
            "best_val_loss": None if not math.isfinite(self.best_val) else self.best_val,
            "best_iteration": self.best_iter,
            "bad_evals": self.bad_evals,
            "last_val_loss": self.last_val,
            "elapsed": self.elapsed,
            "chars_seen": self.chars_seen,
            "rng": self.rng.bit_generator.state,
            "optimizer": self.opt.state_dict(),
            "train_config": self.tcfg.to_dict(),
            "data_dir": str(Path(self.opts.data_dir).resolve()),
            "data_sources": self.dataset.meta.get("sources"),
            "data_chars": self._data_chars(),
            "threads": self.opts.threads,
            "world_size": 1 if self.comm is None else self.comm.size,
            "stopped": stopped,
            "init_from": self.init_from,
        }

    def _state_tensors(self) -> dict:
        t = dict(self.opt.state_tensors())
        state = self.state if self.state is not None else self.model.initial_state(
            self.hi - self.lo)
        if self.comm is not None:
            state = self.comm.gather_state(state, self.tcfg.batch_size)
        t["state.h"] = state[0]
        if len(state) > 1:
            t["state.c"] = state[1]
        return t

    def save_latest(self, stopped: str | None = None) -> None:
        if self.comm is not None:           # never save parameters the ranks disagree on
            self.comm.check_sync(self.iteration, self.model.flat, force=True)
        tensors = self._state_tensors()     # collective under MPI: every rank calls it
        if self.rank0:
            save_model(self.latest_path, self.model, train_state=self.train_state(stopped),
                            extra_tensors=tensors)
        self.latest_saved = True

    def save_best(self) -> None:
        if self.comm is not None:           # every rank calls it: check before writing
            self.comm.check_sync(self.iteration, self.model.flat, force=True)
        if self.rank0:
            # weights plus the training state (for `charrnn info`); no optimizer tensors
            save_model(self.best_path, self.model, train_state=self.train_state())
            self._publish_pending = self.opts.publish is not None

    # ------------------------------------------------------------------ loop
    def _batch(self):
        x, y = self.loader.batch(self.pos, self.lo, self.hi)        # (b, T) each
        if self.lut is not None:
            x, y = self.lut[x], self.lut[y]
        return x, y

    def _masks(self):
        """MPI with dropout: this rank's streams of the whole batch's masks, drawn from
        the generator every rank shares, so N ranks train what one process would."""
        if self.comm is None or self.mcfg.dropout <= 0:
            return None                     # forward_backward draws them itself
        t = self.tcfg
        full = self.model.dropout_masks(t.batch_size, t.seq_len, self.rng)   # L x (T, B, H)
        return [np.ascontiguousarray(m[:, self.lo:self.hi]) for m in full]  # L x (T, b, H)

    def _lr(self, clock: "_Clock") -> float:
        from ..model.schedule import lr_at, total_iterations

        t = self.tcfg
        total = total_iterations(t, self.bpe)
        progress = None
        if t.schedule == "cosine" and clock.max_time > 0:
            progress = min(1.0, (time.monotonic() - clock.start) / clock.max_time)
        return lr_at(t, self.iteration, self.epoch_float(), total, progress)

    def _done(self, clock: "_Clock | None") -> str | None:
        t = self.tcfg
        if t.max_iters and self.iteration >= t.max_iters:
            return "max_iters"
        if t.epoch_limit and self.epoch >= t.epoch_limit:
            return "max_epochs"
        if clock is not None and clock.out_of_time():
            return "max_time"
        return None

    def evaluate(self, should_stop=None) -> float | None:
        """Validation loss, or None without a validation split; EvalAbandoned when
        ``should_stop`` ends it early."""
        if self.val_tokens.shape[0] < 2:
            return None
        loss, _ = evaluate_split(self.model, self.val_tokens, self.tcfg.batch_size,
                                 self.tcfg.seq_len, self.lut, comm=self.comm,
                                 should_stop=should_stop, max_steps=self.val_steps)
        return loss

    def _plan_validation(self, clock: "_Clock") -> None:
        """Under --max-time, time one validation window; when a whole pass would take
        more than half the budget, every evaluation of this invocation scores the same
        leading part of the split (about a sixth of the budget), and best is re-scored
        on that part so that val and best stay comparable."""
        t = self.tcfg
        n_val = int(self.val_tokens.shape[0])
        budget = clock.max_time
        if not budget or n_val < 2 or self.comm is not None:
            return
        B = t.batch_size
        S = (n_val - 1) // B                 # positions of each stream (score_tokens)
        if S == 0:
            return                           # a split this short is scored whole
        windows = -(-S // t.seq_len)
        self.val_steps = t.seq_len
        self.evaluate()                                  # buffers and caches
        t0 = time.monotonic()
        self.evaluate()
        per_window = time.monotonic() - t0
        self.val_steps = None
        clock.eval_done(windows * per_window)
        if windows * per_window <= 0.5 * budget:
            return
        keep = max(1, int(budget / 6 / max(per_window, 1e-9)))
        self.val_steps = keep * t.seq_len
        clock.eval = keep * per_window          # the part it will score
        if self.rank0:
            console.log(f"validation: a whole pass over the {n_val:,}-character split would "
                        f"take about {fmt_duration(windows * per_window)} of the "
                        f"{fmt_duration(budget)} --max-time; every evaluation of this "
                        f"run scores the same first {B * min(S, self.val_steps):,} "
                        "characters of it (`charrnn eval RUN --split val` scores it all)")
        if math.isfinite(self.best_val) or self._rescore_pending:
            self._rescore_best("the part of the validation split this run scores")

    def _record(self, train_loss: float | None, val: float | None, lr: float,
                cps: float) -> dict:
        rec = {
            "iter": self.iteration,
            "epoch": round(self.epoch_float(), 4),
            "train_loss": None if train_loss is None else round(train_loss, 6),
            "val_loss": None if val is None else round(val, 6),
            "val_bpc": None if val is None else round(val / LN2, 6),
            "lr": lr,
            "chars_per_sec": round(cps, 1),
            "elapsed": round(self.elapsed, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return rec

    def _publish_record(self, rec: dict, bar) -> None:
        """metrics.jsonl, the log line and --json's record of an evaluation: written
        after latest is saved, so a run that dies in between (a closed pipe, a full
        disk) never has metrics ahead of its checkpoint."""
        if self.rank0:
            with open(self.run_dir / METRICS_NAME, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
                os.fsync(f.fileno())
        self._report(rec, bar)

    def _trim_metrics(self) -> None:
        """Drop metrics.jsonl lines past the resumed iteration (written by a run that
        died before its next save), so a resumed run never repeats an iteration."""
        from ..store.fsutil import atomic_write_text

        path = self.run_dir / METRICS_NAME
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except (OSError, UnicodeDecodeError):
            return
        keep = []
        for line in lines:
            try:
                it = json.loads(line).get("iter")
            except (ValueError, AttributeError, RecursionError):
                it = None
            if isinstance(it, int) and it > self.iteration:
                continue
            keep.append(line)
        if len(keep) != len(lines):
            atomic_write_text(path, "".join(keep))

    def _warm_up(self) -> None:
        """Compile (or load from the cache) every kernel a step uses before the clock
        starts, so a first run's compilation does not eat a --max-time budget.  Touches
        no parameter, moment or random state (the first real step zeroes the gradient)."""
        from ..model.optim import Optimizer

        t0 = time.monotonic()
        dt = self.model.dtype
        # the real batch shape and mode: some paths are chosen by size, and dropout's
        # only in training mode (a scratch generator: the run's own is not touched)
        x, y = self._batch()                  # the real batch: its dtype, its shape (b, T)
        v = np.zeros((x.shape[0], self.tcfg.seq_len), np.int64)          # validation's
        # Ctrl-C or SIGTERM while numba compiles would land inside its callbacks (lost,
        # or a half-built kernel): they wait until the kernels are ready, then act.
        # Each call twice: from a zero state, then from a carried one (other types).
        with _signals_deferred(), np.errstate(over="ignore", invalid="ignore"):
            scratch_rng = np.random.Generator(np.random.PCG64(0))
            _, st = self.model.forward_backward(x, y, None, train=True, rng=scratch_rng)
            self.model.forward_backward(x, y, st, train=True, rng=scratch_rng)
            _, st = self.model.log_probs(v, v, None)
            self.model.log_probs(v, v, st)
            scratch = Optimizer(self.tcfg, 16, dt)
            scratch.step(np.zeros(16, dt), np.zeros(16, dt), 0.0)
        spent = time.monotonic() - t0
        if spent > 2 and self.rank0:
            console.log(f"kernels ready in {spent:.0f} s (compiled once; not counted in "
                        "--max-time)")

    def run(self) -> dict:
        t = self.tcfg
        model = self.model
        B_local = self.hi - self.lo
        model.recompute_steps = recompute_chunk(B_local) if t.low_memory else 0
        start_iter = self.iteration
        stopped = self._done(None)
        if stopped is not None:
            return self._nothing_to_do(stopped)
        if self.comm is not None:
            console.log(self.comm.describe(t.batch_size, self.opts.threads))
        elif self.rank0:
            console.log(self.describe())
        self._warm_up()
        chars_per_step = t.batch_size * t.seq_len
        clock = _Clock(t.max_time, val_chars=int(self.val_tokens.shape[0]),
                       step_chars=chars_per_step)
        self._plan_validation(clock)
        if self._rescore_pending:
            self._rescore_best("the new validation split")
        bar = self._progress_bar(clock) if self.rank0 else None
        loss_sum, loss_n = 0.0, 0
        window_start, window_iters = time.monotonic(), 0
        lr = self._lr(clock)
        since_save = 0
        pending = None                    # an evaluation's record, written after the save
        # A diverging run is reported by the finiteness checks below, with one Error
        # line: numpy's overflow warnings on the way there are noise.
        with _Signals() as sig, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            def abandon() -> bool:
                return sig.received is not None or clock.past_deadline()
            if self.comm is not None:      # ranks must finish a collective pass together
                abandon = None
            while stopped is None:
                if self.pos == 0:
                    self.state = None               # each epoch starts from a zero state
                x, y = self._batch()
                t0 = time.monotonic()
                loss, self.state = model.forward_backward(x, y, self.state, train=True,
                                                          rng=self.rng, masks=self._masks())
                if self.comm is not None:
                    loss = self.comm.reduce_grad(model.grad_flat, loss, B_local, t.batch_size)
                lr = self._lr(clock)
                if not math.isfinite(loss):
                    self._diverged(loss, lr, self.iteration + 1)
                norm = self.opt.step(model.flat, model.grad_flat, lr)
                if not math.isfinite(norm):
                    self._diverged(norm, lr, self.iteration + 1, what="gradient norm")
                self.iteration += 1
                self.pos += 1
                if self.pos >= self.bpe:
                    self.pos = 0
                    self.epoch += 1
                self.chars_seen += chars_per_step
                step_time = time.monotonic() - t0
                self.elapsed += step_time
                clock.step_done(step_time)
                loss_sum += loss
                loss_n += 1
                window_iters += 1
                since_save += 1
                if self.comm is not None:
                    self.comm.check_sync(self.iteration, model.flat)
                if bar is not None:
                    bar.advance(self.iteration, clock)
                    bar.postfix(f"loss {loss:.3f} bpc {loss / LN2:.3f} "
                                f"epoch {self.epoch_float():.2f}")
                stopped = self._done(clock)
                if sig.received is not None:
                    stopped = "signal"
                if self.comm is not None:
                    stopped = self.comm.agree_stop(stopped)
                do_eval = self.iteration % t.eval_every == 0 or stopped is not None
                if do_eval and stopped is None and clock.deadline is not None:
                    # this evaluation is the last when no second one would fit
                    last = "max_time" if clock.no_room_after_eval() else None
                    if self.comm is not None:               # every rank asks, together
                        last = self.comm.agree_stop(last)
                    stopped = last
                if do_eval and stopped != "signal":
                    span = time.monotonic() - window_start
                    cps = window_iters * chars_per_step / span if span > 0 else 0.0
                    e0 = time.monotonic()
                    try:
                        val = self.evaluate(abandon)
                        clock.eval_done(time.monotonic() - e0)
                    except EvalAbandoned:
                        val = None
                        if sig.received is not None:
                            stopped = "signal"
                        else:
                            stopped = "max_time"
                            if self.rank0:
                                console.log("validation pass abandoned: --max-time ran out "
                                            "during it (this pass is not recorded)")
                    if stopped != "signal" and not (val is None and
                                                    self.val_tokens.shape[0] >= 2):
                        if val is not None and not math.isfinite(val):
                            self._diverged(val, lr, self.iteration, what="validation loss")
                        metric = val if val is not None else loss_sum / max(loss_n, 1)
                        self.last_val = val
                        if metric < self.best_val:
                            self.best_val, self.best_iter, self.bad_evals = \
                                metric, self.iteration, 0
                            self._timed_save(clock, self.save_best)
                        else:
                            self.bad_evals += 1
                        pending = self._record(loss_sum / max(loss_n, 1), val, lr, cps)
                        if t.patience and self.bad_evals >= t.patience and stopped is None:
                            stopped = "patience"
                            if self.rank0:
                                console.log(f"early stopping: no improvement in "
                                            f"{t.patience} evaluations")
                    loss_sum, loss_n = 0.0, 0
                    window_start, window_iters = time.monotonic(), 0
                if do_eval and t.save_every == 0 or (t.save_every and since_save >= t.save_every) \
                        or stopped is not None:
                    self._timed_save(clock, self.save_latest, stopped)
                    since_save = 0
                if pending is not None:
                    if not self.latest_saved:            # the same on every MPI rank
                        self._timed_save(clock, self.save_latest, stopped)
                    self._publish_record(pending, bar)
                    pending = None
                if self._publish_pending and self.rank0:
                    self._publish()
        if bar is not None:
            bar.close()
        summary = self._summary(stopped, start_iter, clock.start)
        if stopped == "signal":
            signum = sig.received
            name = signal.Signals(signum).name
            raise Interrupted(
                f"stopped by {name} at iteration {self.iteration}; saved {self.latest_path} "
                "(run the same command again to resume)", 128 + signum)
        return summary

    def _timed_save(self, clock: "_Clock", save, *args) -> None:
        t0 = time.monotonic()
        save(*args)
        clock.save_done(time.monotonic() - t0)

    def _nothing_to_do(self, stopped: str) -> dict:
        """The run is already past its limits: one line, and latest rewritten only to
        record a corpus change (so `charrnn info` shows the corpus it will train on)."""
        saved = False
        if self.data_changed:
            if self._rescore_pending:
                self._rescore_best("the new validation split")
            self.save_latest(stopped)
            saved = True
        if self.rank0:
            limit = {"max_iters": f"--max-iters {self.tcfg.max_iters}",
                     "max_epochs": f"{self.tcfg.epoch_limit} epochs"
                     + ("" if self.tcfg.max_epochs else " (the cap of a run that names no "
                        "limit)"),
                     "max_time": "--max-time"}[stopped]
            extra = "; the new corpus is recorded in latest" if saved else ""
            console.log(f"nothing to do: {self.run_dir} is at iteration {self.iteration}, "
                        f"epoch {self.epoch_float():.2f}, and has reached {limit}; give "
                        f"--max-time, --max-iters or a higher --max-epochs to train "
                        f"further{extra}")
        summary = self._summary(stopped, self.iteration, time.monotonic())
        summary["saved"] = saved
        summary["nothing_to_do"] = True
        return summary

    def _progress_bar(self, clock: "_Clock"):
        """A terminal bar: seconds of --max-time, else iterations out of the run's
        length when it is known (--max-iters, the epoch cap), else a plain counter."""
        from ..model.schedule import total_iterations

        t = self.tcfg
        if t.max_time:
            tq = console.progress(total=max(1, round(clock.max_time)), desc="train", unit="s")
        else:
            total = total_iterations(t, self.bpe)
            tq = console.progress(total=total, desc="train", unit="it",
                                  initial=self.iteration if total else 0)
        return None if tq is None else _Bar(tq, by_time=bool(t.max_time))

    def _publish(self) -> None:
        from ..store.fsutil import publish_copy

        self._publish_pending = False
        publish_copy(self.best_path, self.opts.publish)

    def _diverged(self, value: float, lr: float, iteration: int, what: str = "loss") -> None:
        kept = (f"the last good checkpoint {self.latest_path} is kept"
                if self.latest_path.exists() else "no checkpoint was written")
        raise TrainingDiverged(
            f"{what} became {value} at iteration {iteration}; {kept}; "
            f"try a lower --lr (it was {lr:g})")

    def _report(self, rec: dict, bar) -> None:
        if not self.rank0:
            return
        if self.opts.emit is not None:
            self.opts.emit(dict(rec, event="eval"))
        val = ("" if rec["val_loss"] is None
               else f" val {rec['val_loss']:.4f} (bpc {rec['val_bpc']:.3f})")
        line = (f"iter {rec['iter']} epoch {rec['epoch']:.2f} loss {rec['train_loss']:.4f}"
                f"{val} lr {rec['lr']:.3g} {rec['chars_per_sec']:,.0f} chars/s")
        if bar is not None:
            bar.write(line)
        else:
            console.log(line)

    def _summary(self, stopped, start_iter, run_start) -> dict:
        wall = time.monotonic() - run_start
        iters = self.iteration - start_iter
        cps = iters * self.tcfg.batch_size * self.tcfg.seq_len / wall if wall > 0 else 0.0
        best = None if not math.isfinite(self.best_val) else self.best_val
        return {
            "event": "done",
            "stopped": stopped,
            "iteration": self.iteration,
            "epoch": round(self.epoch_float(), 4),
            "iterations_this_run": iters,
            "seconds": round(wall, 3),
            "chars_per_sec": round(cps, 1),
            "val_loss": self.last_val,
            "val_bpc": None if self.last_val is None else self.last_val / LN2,
            "best_val_loss": best,
            "best_val_bpc": None if best is None else best / LN2,
            "best_iteration": self.best_iter,
            "latest": str(self.latest_path),
            "best": str(self.best_path),
            "saved": True,
        }


def train(mcfg: ModelConfig, tcfg: TrainConfig, opts: RunOptions) -> dict:
    """Train (or resume) the run in ``opts.run_dir``; returns the summary dict.

    The caller holds the run directory's lock (see :mod:`charrnn.training.lock`)."""
    from ..store.fsutil import remove_stale_temps

    comm = opts.comm
    if comm is None or comm.rank == 0:
        Path(opts.run_dir).mkdir(parents=True, exist_ok=True)
        remove_stale_temps(opts.run_dir)
    # MPI: every rank builds its trainer; if that fails on any rank, all stop together.
    # building the model imports (and on a first run compiles) kernels: a signal then
    # waits until it is built, like one during the warm-up (see _signals_deferred)
    with (comm.together() if comm is not None else contextlib.nullcontext()), \
            _signals_deferred():
        trainer = Trainer(mcfg, tcfg, opts)
    return trainer.run()


__all__ = ["train", "Trainer", "RunOptions", "evaluate_split", "estimate_memory",
           "check_memory", "recompute_chunk", "merge_resumed", "vocab_map", "fmt_duration",
           "METRICS_NAME", "RESUMABLE_CHANGES", "DataError"]
