"""How a run starts: a fresh model, one taken from --init-from, or the exact state of
``latest.safetensors`` (with the options a resumed run may change, a changed corpus and
a grown vocabulary).  Each function fills in the fields of a :class:`Trainer`."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .. import console
from ..config import ModelConfig, TrainConfig
from ..errors import CheckpointError, ConfigError, VocabError
from ..store.checkpoint import read_checkpoint
from .memory import check_memory
from .options import describe_option, fmt_value, merge_resumed, vocab_map


def open_data(tr, data_dir) -> None:
    from ..store.dataset import Dataset

    tr.dataset = Dataset(data_dir)
    tr.data_vocab = tr.dataset.vocab
    tr.train_tokens = tr.dataset.split("train")
    tr.val_tokens = tr.dataset.split("val")


def _make_loader(tr) -> None:
    from ..store.batches import StreamBatches

    t = tr.tcfg
    tr.loader = StreamBatches(tr.train_tokens, t.batch_size, t.seq_len)
    tr.bpe = tr.loader.batches_per_epoch
    tr.lo, tr.hi = tr.comm.stream_range(t.batch_size)


def _from_init(tr):
    """The model of --init-from, with the options that may differ from it (dropout)."""
    from ..store.checkpoint import model_from_checkpoint
    from ..model.network import Model

    ck = read_checkpoint(tr.opts.init_from)
    base = ck.config
    changes = {}
    for (section, name), value in tr.opts.explicit.items():
        if section == "model" and getattr(base, name) != value:
            if name in ("dropout",):
                changes[name] = value
                continue
            opt = describe_option(section, name)
            raise ConfigError(
                f"{tr.opts.init_from} has {opt} {fmt_value(getattr(base, name))}; "
                f"--init-from cannot change it to {fmt_value(value)}")
    model = model_from_checkpoint(ck)
    if ck.vocab is None:
        raise CheckpointError(f"{ck.path}: checkpoint has no vocabulary")
    if changes:
        m2 = Model(base.replace(**changes), model.flat.copy())
        m2.vocab = model.vocab
        model = m2
    console.log(f"initialised from {ck.path}")
    return model


def start_fresh(tr, mcfg: ModelConfig, tcfg: TrainConfig) -> None:
    """Iteration 0: a new model (or --init-from's), optimizer and generator."""
    from ..model.network import Model
    from ..model.optim import Optimizer

    if tr.opts.init_from:
        model = _from_init(tr)
        tr.mcfg = model.config
    else:
        tr.mcfg = mcfg.replace(vocab_size=len(tr.data_vocab))
        tcfg = check_memory(tr.mcfg, tcfg)
        model = Model.from_config(tr.mcfg, seed=tcfg.seed)
        model.vocab = tr.data_vocab
    tr.tcfg = tcfg
    tr.model = model
    tr.iteration = tr.epoch = tr.pos = 0
    tr.state = None
    tr.best_val = math.inf
    tr.best_iter = tr.bad_evals = 0
    tr.elapsed = 0.0
    tr.chars_seen = 0
    tr.last_val = None
    tr.init_from = str(Path(tr.opts.init_from).resolve()) if tr.opts.init_from else None
    _make_loader(tr)
    tr.opt = Optimizer(tcfg, model)
    set_vocab_map(tr)
    tr.rng = np.random.Generator(np.random.PCG64(tcfg.seed))
    if tr.rank0 and tr.opts.restart:
        tr.files.remove_outputs()


def resume(tr, ck, mcfg: ModelConfig, tcfg: TrainConfig) -> None:
    """Continue from checkpoint ``ck`` (latest) exactly where it stopped."""
    from ..store.checkpoint import model_from_checkpoint
    from ..model.optim import Optimizer

    ts = ck.train_state
    try:
        saved_t = TrainConfig.from_dict(ts["train_config"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{ck.path}: training state is incomplete ({e})") from None
    tr.init_from = ts.get("init_from") if isinstance(ts.get("init_from"), str) else None
    _check_init_from(tr)
    tr.mcfg, tr.tcfg, notes = merge_resumed(ck.config, saved_t, tr.opts.explicit,
                                            tr.files.dir)
    # a checkpoint's batch and sequence lengths are input too: refuse what cannot fit
    tr.tcfg = check_memory(tr.mcfg, tr.tcfg)
    model = model_from_checkpoint(ck)
    if tr.mcfg != model.config:                  # a new --dropout
        from ..model.network import Model

        vocab = model.vocab
        model = Model(tr.mcfg.replace(vocab_size=model.config.vocab_size), model.flat)
        model.vocab = vocab
    tr.model = model
    if notes and tr.rank0:
        console.log("changed on resume: " + ", ".join(notes))
    _make_loader(tr)
    try:
        tr.opt = Optimizer(tr.tcfg, model)
        tr.opt.load_state(ck.tensors, ts["optimizer"])
        tr.iteration = int(ts["iteration"])
        tr.epoch = int(ts["epoch"])
        tr.pos = int(ts["pos"])
        tr.best_val = float(ts["best_val_loss"]) if ts.get("best_val_loss") is not None \
            else math.inf
        tr.best_iter = int(ts.get("best_iteration", 0))
        tr.bad_evals = int(ts.get("bad_evals", 0))
        tr.elapsed = float(ts.get("elapsed", 0.0))
        tr.chars_seen = int(ts.get("chars_seen", 0))
        tr.last_val = ts.get("last_val_loss")
        tr.resumed_stop = ts.get("stopped")
        bg = np.random.PCG64()
        bg.state = ts["rng"]
        tr.rng = np.random.Generator(bg)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ck.path}: training state is incomplete or invalid "
                              f"({type(e).__name__}: {e}); use --restart") from None
    set_vocab_map(tr)
    old_sources, new_sources = ts.get("data_sources"), tr.dataset.meta.get("sources")
    tr.data_changed = old_sources is not None and new_sources != old_sources
    if tr.data_changed:
        _on_data_change(tr, ts)
    elif ts.get("batches_per_epoch") not in (None, tr.bpe) or tr.pos >= tr.bpe:
        console.warn("the training data changed size since the last save; "
                     "starting at the beginning of the data")
        tr.pos = 0
    tr.state = _carried_state(tr, ck) if tr.pos > 0 else None
    if tr.rank0:
        tr.files.trim_metrics(tr.iteration)
    console.log(f"resuming {tr.files.dir} from iteration {tr.iteration} "
                f"(epoch {tr.epoch_float():.2f})")


def _carried_state(tr, ck) -> tuple:
    """This rank's streams of the (L, B, H) state saved in ``ck``."""
    names = ["state.h", "state.c"] if tr.mcfg.cell == "lstm" else ["state.h"]
    try:
        state = tuple(np.array(ck.tensors[n], dtype=tr.model.dtype) for n in names)
    except KeyError as e:
        raise CheckpointError(f"{ck.path}: carried state {e} is missing") from None
    want = (tr.mcfg.num_layers, tr.tcfg.batch_size, tr.mcfg.hidden_size)
    if any(s.shape != want for s in state):
        raise CheckpointError(f"{ck.path}: carried state has the wrong shape")
    return tuple(np.ascontiguousarray(s[:, tr.lo:tr.hi]) for s in state)


def _check_init_from(tr) -> None:
    """--init-from on a run that already has a checkpoint: the same checkpoint it was
    started from is a no-op (the same command again resumes); any other is refused,
    since the run's weights no longer come from it."""
    given = tr.opts.init_from
    if not given:
        return
    if tr.init_from is not None and Path(given).resolve() == Path(tr.init_from):
        return
    started = (f"was started from {tr.init_from}" if tr.init_from
               else "was not started with --init-from")
    raise ConfigError(
        f"{tr.files.dir} already has a checkpoint and {started}; --init-from {given} "
        "would be ignored. Drop --init-from to resume, or add --restart to start over "
        f"from {given}")


def set_vocab_map(tr) -> None:
    """Map the data's ids to the model's; grow the model's vocabulary if asked."""
    try:
        tr.lut = vocab_map(tr.data_vocab, tr.model.vocab, "the training data")
        return
    except VocabError:
        if not tr.opts.grow_vocab or tr.model.vocab.unk is not None:
            raise
    from .runs import grow_model_vocab

    new_chars = tr.model.vocab.missing(tr.data_vocab.chars)
    new_vocab = tr.model.vocab.extend(new_chars)
    tr.model, tr.opt = grow_model_vocab(tr.model, new_vocab,
                                        seed=tr.tcfg.seed + tr.iteration + 1,
                                        optimizer=tr.opt)
    tr.mcfg = tr.model.config
    shown = ", ".join(repr(c) for c in new_chars[:8])
    console.log(f"vocabulary grown by {len(new_chars)} character(s) ({shown}) to "
                f"{len(new_vocab)}")
    tr.lut = vocab_map(tr.data_vocab, tr.model.vocab, "the training data")


def _on_data_change(tr, ts: dict) -> None:
    """The training text changed since the last save: restart the data position,
    keep weights and optimizer state, and re-score best on the new validation split
    so that best means best on the current data."""
    old_chars, new_chars = ts.get("data_chars"), tr.data_chars()
    old = "?" if old_chars is None else f"{old_chars:,}"
    console.log(f"corpus changed: {old} -> {new_chars:,} chars; continuing from "
                f"iteration {tr.iteration} on the new data")
    if tr.pos > 0:
        tr.epoch += 1          # the new data starts a new epoch: epochs never go back
    tr.pos = 0
    tr.state = None
    tr.bad_evals = 0
    tr.best_val = math.inf
    tr.last_val = None         # measured on the old split: not comparable any more
    # best is re-scored by run(), inside the --max-time budget
    tr.rescore_pending = tr.files.best.exists() and tr.val_tokens.shape[0] >= 2

