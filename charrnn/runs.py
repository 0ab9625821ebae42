"""Run-directory chores around training: where the data comes from, and what to do when
it changed since the run was made (the nightly-cron case).

``resolve_training_data`` turns ``charrnn train``'s DATA / ``--corpus`` into a prepared
data directory:

* a directory made by ``prepare`` (it has ``meta.json``) is used as it is;
* a text file, a folder or a registry corpus is prepared into ``RUN_DIR/data`` with
  default options, unless ``RUN_DIR/data`` already holds exactly these sources (same
  paths, sizes and sha256), so a nightly run on an unchanged file re-prepares nothing.
  A changed source is re-prepared atomically (the old data stays until the new one is
  complete); the trainer then notices the change (see ``charrnn.train``).

``grow_model_vocab`` extends a model (and its optimizer moments) with new characters.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import console
from .errors import CharrnnError, InputError, VocabError

DATA_SUBDIR = "data"


def is_prepared(path: Path) -> bool:
    return path.is_dir() and (path / "meta.json").is_file()


def _recorded_sources(data_dir: Path):
    try:
        with open(data_dir / "meta.json", encoding="utf-8") as f:
            return json.load(f).get("sources")
    except (OSError, ValueError, AttributeError):
        return None


def _run_vocab(run_dir: Path):
    """The vocabulary of the run's latest checkpoint (None if there is none): a run that
    continues encodes new text with its model's vocabulary, so new characters are found
    before anything is written."""
    from .checkpoint import LATEST_NAME, read_header

    latest = run_dir / LATEST_NAME
    if not latest.is_file():
        return None
    try:
        _, meta, _ = read_header(latest)
        from .vocab import Vocab

        return Vocab.from_dict(json.loads(meta["vocab"]))
    except (CharrnnError, KeyError, ValueError):
        return None          # the trainer reports a broken checkpoint properly


def resolve_training_data(data, corpus, run_dir: Path, restart: bool = False,
                          grow_vocab: bool = False, comm=None) -> Path:
    """The prepared data directory for a training run (see module docstring)."""
    from .data import fingerprint_sources, prepare

    if data is not None:
        p = Path(data)
        if data != "-" and not p.exists():
            raise InputError(f"{data}: no such file or directory")
        if is_prepared(p):
            return p
        inputs = [data]
    else:
        inputs = []
    target = Path(run_dir) / DATA_SUBDIR
    rank0 = comm is None or comm.rank == 0
    if rank0:
        fresh = fingerprint_sources(inputs, corpus=corpus) if data != "-" else None
        if fresh is not None and is_prepared(target) and _recorded_sources(target) == fresh:
            pass                                                # unchanged: reuse
        else:
            if not is_prepared(target):
                console.log(f"preparing {corpus or data} into {target}")
            vocab = None if (restart or grow_vocab) else _run_vocab(Path(run_dir))
            try:
                prepare(inputs, target, corpus=corpus, force=True, vocab=vocab,
                        show_progress=console.stderr_is_tty())
            except VocabError as e:
                raise VocabError(f"{e}; add --grow-vocab to extend the model's vocabulary "
                                 "(or --restart to start a new model)") from None
    if comm is not None:
        comm.barrier()
    return target


# ---------------------------------------------------------------------- growing a vocabulary

def _grow_param(name: str, old: np.ndarray, new: np.ndarray, V_old: int) -> None:
    """Copy a parameter of the old model into the same-named one of the grown model.

    Only three kinds of tensor depend on V: the embedding (V, E) and the head (V, H)/(V,)
    grow by rows; a one-hot first layer's input weights (G*H, V) grow by columns."""
    if old.shape == new.shape:
        new[...] = old
    elif name in ("embedding.weight", "head.weight", "head.bias"):
        new[:V_old] = old
    elif name == "rnn.weight_ih_l0":
        new[:, :V_old] = old
    else:   # pragma: no cover - layout invariant
        raise AssertionError(f"unexpected shape change of {name}")


def grow_model_vocab(model, new_vocab, seed: int, optimizer=None):
    """A model over ``new_vocab`` (the old vocabulary plus characters appended at the
    end): every existing row or column is copied unchanged, new ones are initialised
    as :meth:`Model.from_config` would (drawn from ``seed``), and when ``optimizer`` is
    given, a new optimizer whose moments are copied the same way (zero for new entries).
    Returns ``(model, optimizer)``."""
    from .model import Model
    from .optim import Optimizer

    V_old = model.config.vocab_size
    cfg = model.config.replace(vocab_size=len(new_vocab))
    grown = Model.from_config(cfg, seed=seed)                  # fresh values for new rows
    for name in model.param_names:
        _grow_param(name, model.params[name], grown.params[name], V_old)
    grown.vocab = new_vocab
    new_opt = None
    if optimizer is not None:
        new_opt = Optimizer(optimizer.cfg, grown)
        new_opt.step_count = optimizer.step_count
        old_bufs, new_bufs = optimizer.state_tensors(), new_opt.state_tensors()
        for key, old_buf in old_bufs.items():
            ov, nv = model._views(old_buf), grown._views(new_bufs[key])
            for name in model.param_names:
                nv[name][...] = 0
                _grow_param(name, ov[name], nv[name], V_old)
    return grown, new_opt


__all__ = ["resolve_training_data", "grow_model_vocab", "is_prepared", "DATA_SUBDIR"]
