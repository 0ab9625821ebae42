"""Run-directory chores around training: where the data comes from, and what to do when
it changed since the run was made (the nightly-cron case).

``resolve_training_data`` turns ``charrnn train``'s DATA / ``--corpus`` into a prepared
data directory:

* a directory made by ``prepare`` (it has ``meta.json``) is used as it is;
* a text file, a folder or a registry corpus is prepared into ``RUN_DIR/data`` with
  the data options given (``prepare``'s: --val-frac, --lowercase, ...), unless
  ``RUN_DIR/data`` already holds exactly these sources (same paths, sizes and sha256)
  prepared with the same options, so a nightly run on an unchanged file re-prepares
  nothing.  A changed source is re-prepared atomically (the old data stays until the
  new one is complete); the trainer then notices the change (see ``charrnn.training.loop``).

The data options are part of what a run is.  A run that resumes (it has a checkpoint
and no --restart) keeps the options recorded in ``RUN_DIR/data/meta.json`` for every
option not given, so a nightly re-run on a grown corpus keeps e.g. --lowercase, and an
option given with another value than the recorded one is a ConfigError that asks for
--restart.  A new run (no checkpoint, or --restart) uses the options given (defaults
for the rest) and re-prepares ``RUN_DIR/data`` if they differ from the recorded ones.
Data options with a DATA that is already prepared are a ConfigError: they apply to text.

``grow_model_vocab`` extends a model (and its optimizer moments) with new characters.
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Collection

import numpy as np

from .. import console
from ..config import DataConfig
from ..errors import CharrnnError, ConfigError, InputError, VocabError
from .distributed import Comm
from .local import LOCAL, LocalComm

DATA_SUBDIR = "data"


def is_prepared(path: Path) -> bool:
    return path.is_dir() and (path / "meta.json").is_file()


def _recorded_sources(data_dir: Path):
    try:
        with open(data_dir / "meta.json", encoding="utf-8") as f:
            return json.load(f).get("sources")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None


def _recorded_options(data_dir: Path) -> DataConfig | None:
    """The DataConfig that ``data_dir/meta.json`` records (None when it has none that
    this charrnn can read)."""
    try:
        with open(data_dir / "meta.json", encoding="utf-8") as f:
            return DataConfig.from_dict(json.load(f)["options"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError,
            CharrnnError):
        return None


def describe_option(name: str, value) -> str:
    """A DataConfig field as the option that sets it: ``--val-frac 0.1``, ``--lowercase``
    / ``--no-lowercase``, ``no --glob``."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    if value is None:
        return f"no {flag}"
    return f"{flag} {value}"


def _describe_all(cfg: DataConfig, names) -> str:
    return " and ".join(describe_option(n, getattr(cfg, n)) for n in names)


def _data_names(explicit) -> list[str]:
    """``explicit`` in DataConfig field order (unknown names are a programming error)."""
    order = [f.name for f in fields(DataConfig)]
    unknown = set(explicit) - set(order)
    if unknown:
        raise ValueError(f"not DataConfig fields: {', '.join(sorted(unknown))}")
    return [n for n in order if n in explicit]


def _run_vocab(run_dir: Path):
    """The vocabulary of the run's latest checkpoint (None if there is none): a run that
    continues encodes new text with its model's vocabulary, so new characters are found
    before anything is written."""
    from ..store.checkpoint import LATEST_NAME, read_header

    latest = run_dir / LATEST_NAME
    if not latest.is_file():
        return None
    try:
        _, meta, _ = read_header(latest)
        from ..store.vocab import Vocab

        return Vocab.from_dict(json.loads(meta["vocab"]))
    except (CharrnnError, KeyError, ValueError):
        return None          # the trainer reports a broken checkpoint properly


def resolve_training_data(data, corpus, run_dir: Path, restart: bool = False,
                          grow_vocab: bool = False, comm: Comm | LocalComm = LOCAL,
                          data_cfg: DataConfig | None = None,
                          data_explicit: Collection[str] | None = None) -> Path:
    """The prepared data directory for a training run (see the module docstring).

    ``data_cfg``: the data options (prepare's) for text DATA or a corpus; None means the
    defaults.  ``data_explicit``: the names of the DataConfig fields the user gave (the
    others may take the recorded values when the run resumes); None means every field
    of ``data_cfg`` when it is given, none otherwise.  ``comm``: under MPI, rank 0
    prepares and the others wait."""
    from ..store.checkpoint import LATEST_NAME
    from ..store.prepare import prepare
    from ..store.sources import fingerprint_sources

    given = data_cfg if data_cfg is not None else DataConfig()
    if data_explicit is None:
        data_explicit = [f.name for f in fields(DataConfig)] if data_cfg is not None else []
    explicit = _data_names(data_explicit)
    if data is not None:
        p = Path(data)
        if data != "-" and not p.exists():
            raise InputError(f"{data}: no such file or directory")
        if is_prepared(p):
            if explicit:
                them = "it" if len(explicit) == 1 else "them"
                raise ConfigError(
                    f"{data} is a prepared data directory, and {_describe_all(given, explicit)} "
                    f"appl{'ies' if len(explicit) == 1 else 'y'} only to text (the directory "
                    f"keeps the options it was prepared with, see its meta.json); drop {them}, "
                    "or prepare the text again with 'charrnn prepare'")
            return p
        inputs = [data]
    else:
        inputs = []
    run_dir = Path(run_dir)
    target = run_dir / DATA_SUBDIR
    rank0 = comm.rank == 0
    if rank0:
        recorded = _recorded_options(target) if is_prepared(target) else None
        resuming = not restart and (run_dir / LATEST_NAME).is_file()
        cfg = _effective_options(given, explicit, recorded, resuming, run_dir)
        fresh = fingerprint_sources(inputs, corpus=corpus, glob=cfg.glob) \
            if data != "-" else None
        if (fresh is not None and recorded == cfg and is_prepared(target)
                and _recorded_sources(target) == fresh):
            pass                                                # unchanged: reuse
        else:
            if not is_prepared(target):
                console.log(f"preparing {corpus or data} into {target}")
            elif recorded is not None and recorded != cfg:
                changed = [f.name for f in fields(DataConfig)
                           if getattr(recorded, f.name) != getattr(cfg, f.name)]
                console.log(f"preparing {corpus or data} into {target} again: it was "
                            f"prepared with {_describe_all(recorded, changed)}, this run "
                            f"asks for {_describe_all(cfg, changed)}")
            vocab = None if (restart or grow_vocab) else _run_vocab(run_dir)
            try:
                prepare(inputs, target, cfg, corpus=corpus, force=True, vocab=vocab,
                        show_progress=console.stderr_is_tty())
            except VocabError as e:
                raise VocabError(f"{e}; add --grow-vocab to extend the model's vocabulary "
                                 "(or --restart to start a new model)") from None
    comm.barrier()
    return target


def _effective_options(given: DataConfig, explicit: list[str], recorded: DataConfig | None,
                       resuming: bool, run_dir: Path) -> DataConfig:
    """The data options of this run: a new run takes ``given``; a resumed one takes the
    recorded options for every option not in ``explicit``, and refuses an explicit one
    that differs from the recorded value (the data's options are part of the run)."""
    if not resuming:
        return given
    if recorded is None:
        # No readable RUN_DIR/data: the model's vocabulary still says whether the text it
        # reads is lower-cased (older vocabularies do not say it, so only True counts).
        vocab = _run_vocab(run_dir)
        if vocab is None or not vocab.lowercase or given.lowercase:
            return given
        if "lowercase" in explicit:
            raise ConfigError(
                f"{run_dir} was trained on lower-cased text (--lowercase), but this command "
                "asks for --no-lowercase; the data's options are part of what the run is: "
                "drop the option to resume, or add --restart to start a new run")
        return given.replace(lowercase=True)
    changed = [n for n in explicit if getattr(given, n) != getattr(recorded, n)]
    if changed:
        opts = "option" if len(changed) == 1 else "options"
        raise ConfigError(
            f"{run_dir} was trained on text prepared with {_describe_all(recorded, changed)}, "
            f"but this command asks for {_describe_all(given, changed)}; the data's options "
            f"are part of what the run is: drop the {opts} to resume, or add --restart to "
            "start a new run")
    return recorded.replace(**{n: getattr(given, n) for n in explicit})


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
    from ..model.network import Model
    from ..model.optim import Optimizer

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


__all__ = ["resolve_training_data", "grow_model_vocab", "is_prepared", "describe_option",
           "DATA_SUBDIR"]
