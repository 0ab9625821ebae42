"""What a training run is given, and which of it a resumed run may change.

:class:`RunOptions` is what the CLI hands to :func:`charrnn.training.loop.train` besides
the two configs; :func:`merge_resumed` decides the configs of a resumed run, and
:func:`vocab_map` maps a data set's ids to a model's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import console
from ..config import LENGTH_LIMITS, ModelConfig, TrainConfig
from ..errors import ConfigError, VocabError
from ..units import fmt_duration
from .distributed import Comm
from .local import LOCAL, LocalComm

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
    # the MPI Comm of this rank, or the single process's LocalComm
    comm: Comm | LocalComm = LOCAL
    grow_vocab: bool = False                        # extend the vocabulary with new chars
    publish: Path | None = None                     # copy of best, updated atomically


def describe_option(section: str, name: str) -> str:
    """The command-line flag of a config field: hidden_size -> --hidden."""
    from_field = {"hidden_size": "hidden", "num_layers": "layers", "embed_size": "embed",
                  "gru_reset": "gru-reset"}
    return "--" + from_field.get(name, name).replace("_", "-")


def fmt_value(v) -> str:
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
            opt = describe_option(section, name)
            if name in LENGTH_LIMITS:
                notes.append(f"{opt} {_fmt_limit(name, saved)} -> {_fmt_limit(name, value)}")
            else:
                notes.append(f"{opt} {fmt_value(saved)} -> {fmt_value(value)}")
            continue
        opt = describe_option(section, name)
        raise ConfigError(
            f"{run_dir} was trained with {opt} {fmt_value(saved)}, but this command asks for "
            f"{opt} {fmt_value(value)}; drop the option to resume, or add --restart to "
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
