"""Prepared splits: :func:`score_tokens`, the one definition of scoring a split's token
ids (training's validation and ``charrnn eval --split``), and the split of the data a
checkpoint was trained on (:func:`evaluate_checkpoint_split`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError, InputError
from .score import WINDOW, Score


class ScoringStopped(Exception):
    """:func:`score_tokens` was asked to stop part-way (a signal, a deadline)."""


def score_tokens(model, tokens, batch_size: int, seq_len: int, lut=None, comm=None,
                 should_stop=None, max_steps: int | None = None) -> Score:
    """Every next-character prediction of a prepared split, scored once: the one
    definition shared by training's validation and ``charrnn eval --split``.

    The n - 1 predictions are laid out by :func:`charrnn.store.batches.iter_eval_batches`: B
    streams walked T steps at a time with the state carried, then the few trailing
    pairs as one more stream.  ``lut`` maps the data's ids to the model's.  ``comm``
    (a collective; None means this process alone,
    :data:`charrnn.training.local.LOCAL`): each rank scores its share of the
    B streams (rank 0 the trailing stream too) and the totals are summed, so every rank
    gets the same Score.  ``should_stop`` is asked between windows (ScoringStopped when
    it says yes).  ``max_steps`` scores only the first positions of the B streams (the
    same characters every time) and no trailing stream: a part of the split."""
    from ..store.batches import iter_eval_batches
    from ..training.local import LOCAL

    comm = LOCAL if comm is None else comm
    S = (len(tokens) - 1) // int(batch_size)                # positions of each B stream
    n_main = -(-S // int(seq_len)) if S > 0 else 0          # windows of the B streams
    score = Score()
    state = None
    for k, (x, y) in enumerate(iter_eval_batches(tokens, batch_size, seq_len)):
        tail = k >= n_main
        if k == n_main:
            state = None                                    # the trailing stream: fresh
            if max_steps is not None and n_main > 0:
                break
        t0 = k * int(seq_len)
        if max_steps is not None and not tail and t0 >= max_steps:
            break
        if should_stop is not None and should_stop():
            raise ScoringStopped
        B = x.shape[0]
        lo, hi = ((0, 1) if comm.rank == 0 else (0, 0)) if tail else \
            (B * comm.rank // comm.size, B * (comm.rank + 1) // comm.size)
        x, y = x[lo:hi], y[lo:hi]
        if x.shape[0] == 0:
            continue
        if max_steps is not None and not tail and t0 + x.shape[1] > max_steps:
            x, y = x[:, :max_steps - t0], y[:, :max_steps - t0]
        if lut is not None:
            x, y = lut[x], lut[y]
        lp, state = model.log_probs(x, y, state)                         # (b, w)
        score.nll -= float(lp.sum())
        score.chars += lp.size
    score.nll = comm.allreduce_sum(score.nll)
    score.chars = int(round(comm.allreduce_sum(float(score.chars))))
    return score


def evaluate_split(model, data_dir, split: str = "val", batch_size: int = 50,
                   seq_len: int = WINDOW) -> Score:
    """Score a prepared split exactly as training's validation does
    (:func:`score_tokens`: its n - 1 predictions)."""
    try:
        from ..store.dataset import Dataset
    except ImportError:  # pragma: no cover - data.py ships with charrnn
        raise DataError("this charrnn cannot read prepared data directories") from None
    ds = Dataset(data_dir)
    lut = _data_lut(ds.vocab, model, data_dir)
    tokens = ds.split(split)
    if len(tokens) < 2:
        raise DataError(f"{data_dir}: the {split} split has {len(tokens)} characters; "
                        "nothing to score")
    return score_tokens(model, tokens, batch_size, seq_len, lut)


def _data_lut(dvocab, model, data_dir) -> np.ndarray | None:
    """Data ids -> model ids when the vocabularies differ (None when they are equal)."""
    mv = model.vocab
    if mv is None:
        if len(dvocab) != model.config.vocab_size:
            raise DataError(f"{data_dir}: its vocabulary has {len(dvocab)} symbols, the "
                            f"model {model.config.vocab_size}")
        return None
    if dvocab == mv:
        return None
    lut = np.empty(len(dvocab), np.int64)                               # (V_data,)
    missing = []
    for i, ch in enumerate(dvocab.itos):
        j = mv.stoi.get(ch) if not (dvocab.unk is not None and ch == dvocab.unk) else mv.unk_id
        if j is None:
            j = mv.unk_id
            if j is None:
                missing.append(ch)
                continue
        lut[i] = j
    if missing:
        shown = ", ".join(repr(c) for c in missing[:5])
        raise DataError(f"{data_dir}: its vocabulary has characters the model does not know "
                        f"({shown}); score text files instead")
    return lut


def default_data_dir(ck) -> Path | None:
    """The prepared data a training checkpoint (a read checkpoint) names, if it still
    exists: its train_state's data_dir (as written, or beside the checkpoint), else the
    ``data`` folder beside it."""
    ts = ck.train_state or {}
    cands = []
    d = ts.get("data_dir")
    if isinstance(d, str) and d:
        cands += [Path(d), ck.path.parent / d]
    cands.append(ck.path.parent / "data")
    for c in cands:
        if (c / "meta.json").is_file():
            return c
    return None


def evaluate_checkpoint_split(ck, model, split: str = "val",
                              data_dir=None) -> tuple[Score, Path]:
    """``charrnn eval --split``: a prepared split (of ``data_dir``, else of the data the
    checkpoint ``ck`` names: :func:`default_data_dir`) scored with the batch size and
    sequence length the run trained with, as its validation scored it.  Returns the
    Score and the data directory; InputError when there is no data to score."""
    if data_dir is None:
        data_dir = default_data_dir(ck)
        if data_dir is None:
            raise InputError("no INPUT given and the checkpoint names no prepared data "
                             "that exists; give text on stdin, INPUT files (- for "
                             "stdin), or --data DATA_DIR")
    tc = (ck.train_state or {}).get("train_config") or {}
    B = tc.get("batch_size") if isinstance(tc.get("batch_size"), int) else 50
    T = tc.get("seq_len") if isinstance(tc.get("seq_len"), int) else WINDOW
    score = evaluate_split(model, data_dir, split, batch_size=max(1, B), seq_len=max(1, T))
    if score.chars == 0:
        raise InputError(f"nothing to score: the {split} split of {data_dir} is empty")
    return score, data_dir


__all__ = ["ScoringStopped", "score_tokens", "evaluate_split", "default_data_dir",
           "evaluate_checkpoint_split"]
