"""Every default of charrnn lives here, with the reason for it.

Three dataclasses, one per concern:

* :class:`ModelConfig`   what the network is (saved in every checkpoint);
* :class:`DataConfig`    how ``prepare`` turns text into token files (saved in meta.json);
* :class:`TrainConfig`   how ``train`` optimises (saved in every training checkpoint);
* :class:`SampleConfig`  how ``sample`` draws characters.

The CLI's option defaults are read from these classes, so a default is changed in one
place only.  ``from_dict`` refuses unknown keys: a typo in a config never passes silently.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError

CELLS = ("lstm", "gru", "rnn")
GRU_RESET = ("after", "before")
NONLINEARITIES = ("tanh", "relu")
DTYPES = ("float32", "float64")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "step", "cosine")

# The ranges of a model's sizes, in one place: ModelConfig.validate (so every checkpoint
# that is read) and the options of ``charrnn train`` (--layers, --hidden, --embed).
MAX_LAYERS = 64
MAX_HIDDEN = 16384
MAX_EMBED = 16384
#: every Unicode code point can be a symbol (the unknown symbol is one of them too)
MAX_VOCAB = 0x110000


class _Config:
    """Shared helpers: dict round trip with unknown-key checking."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} field(s): {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})")
        obj = cls(**d)
        obj.validate()
        return obj

    def replace(self, **changes):
        obj = dataclasses.replace(self, **changes)
        obj.validate()
        return obj

    def validate(self) -> None:  # overridden
        pass


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _shown(v, limit: int = 40) -> str:
    """repr(v), cut to ``limit`` characters (a crafted value may be a megabyte long)."""
    text = repr(v)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_int(name: str, v, lo: int, hi: int) -> None:
    """``v`` is an integer (not a bool, not a float such as 5.0 or 1e100) in [lo, hi]."""
    ok = isinstance(v, numbers.Integral) and not isinstance(v, bool) and lo <= v <= hi
    _check(ok, f"{name} must be an integer in [{lo}, {hi}] (got {_shown(v)})")


@dataclass
class ModelConfig(_Config):
    # Recurrent cell: "lstm" (gates i,f,g,o as in PyTorch), "gru" (r,z,n) or "rnn" (Elman).
    # LSTM is char-rnn's default and the best of the three on character data.
    cell: str = "lstm"
    # Number of distinct symbols; set from the vocabulary, never by hand.
    vocab_size: int = 0
    # Width of every recurrent layer. 256 is the largest that trains at a useful speed on
    # a 2-core laptop in minutes; char-rnn used 128 by default, 512 for its best results.
    hidden_size: int = 256
    # Stacked recurrent layers. Two is char-rnn's default: one layer underfits, three is
    # slower for little gain on corpora of a few MB.
    num_layers: int = 2
    # 0 = one-hot input (char-rnn's encoding, done as a row gather of the input weights);
    # E > 0 = a learned embedding of width E in front of the first layer.
    embed_size: int = 0
    # Inverted dropout on the non-recurrent connections (between layers and before the
    # head), Zaremba et al. 2014. 0 by default because short runs underfit; use 0.1-0.3
    # for long runs on small corpora.
    dropout: float = 0.0
    # LSTM only: diagonal peephole weights (Gers & Schmidhuber 2000). Off, as in PyTorch.
    peepholes: bool = False
    # Layers above the first add their input to their output (Wu et al. 2016). Off:
    # it helps deep stacks (4+ layers) more than the usual two.
    residual: bool = False
    # GRU only: "after" applies the reset gate after the recurrent product (PyTorch/cuDNN),
    # "before" applies it to h before the product (Cho et al. 2014).
    gru_reset: str = "after"
    # Plain RNN only: "tanh" (PyTorch's default) or "relu".
    nonlinearity: str = "tanh"
    # float32 trains twice as fast as float64 and is accurate enough; float64 is for
    # the gradient checks.
    dtype: str = "float32"

    def validate(self) -> None:
        """Types and ranges of every field (a checkpoint's config is untrusted input:
        bools, floats, strings and out-of-range sizes are refused here, before anything
        is built from them)."""
        for name in ("cell", "gru_reset", "nonlinearity", "dtype"):
            v = getattr(self, name)
            _check(isinstance(v, str), f"{name} must be a string (got {_shown(v)})")
        _check(self.cell in CELLS, f"cell must be one of {', '.join(CELLS)} (got {self.cell!r})")
        _check_int("vocab_size", self.vocab_size, 0, MAX_VOCAB)
        _check_int("hidden_size", self.hidden_size, 1, MAX_HIDDEN)
        _check_int("num_layers", self.num_layers, 1, MAX_LAYERS)
        _check_int("embed_size", self.embed_size, 0, MAX_EMBED)
        _check(not isinstance(self.dropout, bool) and _finite(self.dropout)
               and 0.0 <= self.dropout < 1.0,
               f"dropout must be a number in [0, 1) (got {_shown(self.dropout)})")
        for name in ("peepholes", "residual"):
            v = getattr(self, name)
            _check(isinstance(v, bool), f"{name} must be true or false (got {_shown(v)})")
        _check(self.gru_reset in GRU_RESET,
               f"gru_reset must be one of {', '.join(GRU_RESET)} (got {self.gru_reset!r})")
        _check(self.nonlinearity in NONLINEARITIES,
               f"nonlinearity must be one of {', '.join(NONLINEARITIES)} "
               f"(got {self.nonlinearity!r})")
        _check(self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r})")
        _check(not (self.peepholes and self.cell != "lstm"), "peepholes need cell 'lstm'")

    @property
    def gates(self) -> int:
        """G: gate blocks per layer (4 for LSTM i,f,g,o; 3 for GRU r,z,n; 1 for RNN)."""
        return {"lstm": 4, "gru": 3, "rnn": 1}[self.cell]

    @property
    def input_size(self) -> int:
        """Width of the first layer's input: E, or V for one-hot."""
        return self.embed_size if self.embed_size > 0 else self.vocab_size


@dataclass
class DataConfig(_Config):
    # Text encoding of the input files; characters are Unicode code points.
    encoding: str = "utf-8"
    # "strict" refuses undecodable bytes with the byte offset; "replace" maps them to U+FFFD.
    errors: str = "strict"
    # Fold case before counting characters (smaller vocabulary, easier task).
    lowercase: bool = False
    # Characters seen fewer times map to one unknown symbol. 1 keeps every character.
    min_count: int = 1
    # Keep at most this many characters (the most frequent); 0 = no limit.
    max_vocab: int = 0
    # Fraction of the text, taken from the tail, held out for validation (char-rnn: 0.05).
    val_frac: float = 0.05
    # Fraction taken from the very end for a test split, after validation; 0 = none.
    test_frac: float = 0.0
    # Pattern for files inside folders given as input (e.g. "*.py"); None = every file.
    glob: str | None = None

    def validate(self) -> None:
        _check(self.errors in ("strict", "replace"),
               f"errors must be 'strict' or 'replace' (got {self.errors!r})")
        _check(isinstance(self.min_count, int) and self.min_count >= 1,
               f"min_count must be >= 1 (got {self.min_count})")
        _check(isinstance(self.max_vocab, int) and self.max_vocab >= 0,
               f"max_vocab must be >= 0 (got {self.max_vocab})")
        _check(_finite(self.val_frac) and 0.0 <= self.val_frac < 1.0,
               f"val_frac must be in [0, 1) (got {self.val_frac})")
        _check(_finite(self.test_frac) and 0.0 <= self.test_frac < 1.0,
               f"test_frac must be in [0, 1) (got {self.test_frac})")
        _check(self.val_frac + self.test_frac < 1.0,
               f"val_frac + test_frac must be < 1 (got {self.val_frac} + {self.test_frac})")


#: time per batch of --low-memory against a normal run, as measured (README, Performance;
#: quoted by the option's help and by the message that switches it on)
LOW_MEMORY_TIME = "1.2-1.7x"


#: epochs of a run that gives none of --max-iters, --max-epochs, --max-time
DEFAULT_MAX_EPOCHS = 10
#: the options that bound a run's length; a command that names any of them replaces
#: all three (the ones it leaves out are off), one that names none keeps the run's own
LENGTH_LIMITS = ("max_iters", "max_epochs", "max_time")


@dataclass
class TrainConfig(_Config):
    # B: parallel streams per batch. 50 keeps the matrix products large enough for BLAS
    # to run near its peak while giving ~1M characters per epoch-second of variety.
    batch_size: int = 50
    # T: truncation length of backpropagation through time (char-rnn: 50).
    seq_len: int = 50
    # "adam" (default; robust with little tuning), "adamw", "sgd" (with momentum), or
    # "rmsprop" as char-rnn used it (alpha 0.95, no momentum).
    optimizer: str = "adam"
    # Peak learning rate. 2e-3 is char-rnn's default for Adam/RMSProp at this size.
    lr: float = 2e-3
    # Adam/AdamW: exponential decay rates of the moment estimates, and the epsilon.
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    # SGD momentum (0 = plain SGD).
    momentum: float = 0.9
    # RMSProp moving-average decay (char-rnn's decay_rate).
    rmsprop_alpha: float = 0.95
    # L2 penalty (adam/sgd/rmsprop) or decoupled decay (adamw). 0 = off.
    weight_decay: float = 0.0
    # Learning-rate schedule: "constant", "step" (times lr_decay every decay_every epochs,
    # char-rnn style) or "cosine" (to min_lr_frac * lr at the end of the run).
    schedule: str = "constant"
    # Linear warm-up from 0 over this many iterations (0 = none).
    warmup_iters: int = 0
    # "step" schedule: multiply the learning rate by lr_decay every decay_every epochs,
    # starting after decay_after epochs (char-rnn: 0.97 each epoch after the 10th).
    lr_decay: float = 0.97
    decay_every: int = 1
    decay_after: int = 10
    # "cosine" schedule: final learning rate as a fraction of lr.
    min_lr_frac: float = 0.1
    # Clip the global gradient norm to this value (char-rnn: 5). 0 = off.
    clip: float = 5.0
    # Also clip each gradient element to [-clip_value, clip_value]. 0 = off.
    clip_value: float = 0.0
    # Stop after this many iterations (0 = no limit).
    max_iters: int = 0
    # Stop after this many epochs (0 = no limit). An epoch cap applies only when asked
    # for, or when a run names no limit at all (then DEFAULT_MAX_EPOCHS, see epoch_limit):
    # a nightly `--max-time 50m` run must keep training on a growing corpus night after
    # night, as nanoGPT's iteration/time budgets do.
    max_epochs: int = 0
    # Wall-clock budget of one invocation in seconds (0 = none); the CLI accepts "30m".
    # It counts from the first training step (after data preparation and kernel
    # compilation, which are logged) to the exit, the last evaluation and save included.
    max_time: float = 0.0
    # Evaluate on the validation split every this many iterations (and at the end).
    eval_every: int = 200
    # Save latest.safetensors every this many iterations (0 = at every evaluation).
    save_every: int = 0
    # Early stopping: stop after this many evaluations without improvement (0 = off).
    patience: int = 0
    # Seed of the weight initialisation, dropout masks and everything random.
    seed: int = 1234
    # Keep only the states h (and c) of every step and recompute the gates in backward,
    # a chunk of steps at a time (gradient checkpointing): the gates, most of a training
    # pass's memory, shrink from seq_len steps to a chunk, for about LOW_MEMORY_TIME the
    # time.  Same losses; the weight gradients agree to rounding.
    low_memory: bool = False

    def validate(self) -> None:
        _check(self.optimizer in OPTIMIZERS,
               f"optimizer must be one of {', '.join(OPTIMIZERS)} (got {self.optimizer!r})")
        _check(self.schedule in SCHEDULES,
               f"schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        for name in ("batch_size", "seq_len", "decay_every", "eval_every"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v >= 1, f"{name} must be >= 1 (got {v})")
        for name in ("warmup_iters", "decay_after", "max_iters", "max_epochs", "save_every",
                     "patience"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v >= 0, f"{name} must be >= 0 (got {v})")
        _check(_finite(self.lr) and self.lr > 0, f"lr must be > 0 (got {self.lr})")
        for name in ("beta1", "beta2", "momentum", "rmsprop_alpha"):
            v = getattr(self, name)
            _check(_finite(v) and 0.0 <= v < 1.0, f"{name} must be in [0, 1) (got {v})")
        _check(_finite(self.eps) and self.eps > 0, f"eps must be > 0 (got {self.eps})")
        for name in ("weight_decay", "clip", "clip_value", "max_time"):
            v = getattr(self, name)
            _check(_finite(v) and v >= 0, f"{name} must be >= 0 (got {v})")
        _check(_finite(self.lr_decay) and 0 < self.lr_decay <= 1,
               f"lr_decay must be in (0, 1] (got {self.lr_decay})")
        _check(_finite(self.min_lr_frac) and 0 <= self.min_lr_frac <= 1,
               f"min_lr_frac must be in [0, 1] (got {self.min_lr_frac})")

    @property
    def epoch_limit(self) -> int:
        """The epoch cap in force: max_epochs, or DEFAULT_MAX_EPOCHS for a run that names
        no limit (no max_iters, max_epochs or max_time), so that it still ends."""
        if self.max_epochs or self.max_iters or self.max_time:
            return self.max_epochs
        return DEFAULT_MAX_EPOCHS


@dataclass
class SampleConfig(_Config):
    # Characters to generate per sample (no cap: output streams).
    length: int = 1000
    # Softmax temperature: < 1 is more conservative, > 1 more surprising; 0 means greedy
    # (the argmax, as llama.cpp and the OpenAI API read it), the limit of T -> 0.
    temperature: float = 1.0
    # Keep only the k most likely characters (0 = off).  No effect when greedy.
    top_k: int = 0
    # Nucleus sampling: keep the smallest set whose probability reaches top_p (1 = off).
    # No effect when greedy.
    top_p: float = 1.0
    # Take the argmax instead of drawing (the same as temperature 0).
    greedy: bool = False
    # Seed of the draws, 0 .. 2**63-1; the same seed gives the same text.  None (the
    # default) means a fresh random seed each run, which `sample` reports (-v, --json)
    # so that a run can be repeated with --seed.
    seed: int | None = None
    # Samples generated together as one batch (--num-samples).
    num_samples: int = 1
    # Written between consecutive samples (a blank line keeps them apart).
    separator: str = "\n\n"

    def validate(self) -> None:
        _check(isinstance(self.num_samples, int) and self.num_samples >= 1,
               f"num_samples must be >= 1 (got {self.num_samples})")
        _check(isinstance(self.length, int) and self.length >= 0,
               f"length must be >= 0 (got {self.length})")
        _check(_finite(self.temperature) and self.temperature >= 0,
               f"temperature must be >= 0 (got {self.temperature}; 0 = greedy)")
        _check(isinstance(self.top_k, int) and self.top_k >= 0,
               f"top_k must be >= 0 (got {self.top_k})")
        _check(_finite(self.top_p) and 0 < self.top_p <= 1,
               f"top_p must be in (0, 1] (got {self.top_p})")
        _check(self.seed is None or (isinstance(self.seed, int) and not isinstance(self.seed, bool)
                                     and 0 <= self.seed < 2**63),
               f"seed must be None (fresh each run) or in [0, 2**63-1] (got {self.seed!r})")


__all__ = ["ModelConfig", "DataConfig", "TrainConfig", "SampleConfig", "DEFAULT_MAX_EPOCHS",
           "MAX_LAYERS", "MAX_HIDDEN", "MAX_EMBED", "MAX_VOCAB",
           "LENGTH_LIMITS", "CELLS", "GRU_RESET",
           "NONLINEARITIES", "DTYPES", "OPTIMIZERS", "SCHEDULES", "field"]
