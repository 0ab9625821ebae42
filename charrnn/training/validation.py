"""Validation during training: the score of a split, the part of it a run with a short
--max-time scores, and re-scoring best so that "best" and "val" stay comparable."""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from .. import console
from ..errors import CheckpointError, VocabError
from ..units import fmt_duration
from .options import vocab_map

LN2 = math.log(2.0)


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


def plan_validation(trainer, clock) -> None:
    """Under --max-time, time one validation window; when a whole pass would take
    more than half the budget, every evaluation of this invocation scores the same
    leading part of the split (about a sixth of the budget), and best is re-scored
    on that part so that val and best stay comparable.  A single process only: MPI
    ranks could time different parts."""
    t = trainer.tcfg
    n_val = int(trainer.val_tokens.shape[0])
    budget = clock.max_time
    if not budget or n_val < 2 or not trainer.comm.alone:
        return
    B = t.batch_size
    S = (n_val - 1) // B                 # positions of each stream (score_tokens)
    if S == 0:
        return                           # a split this short is scored whole
    windows = -(-S // t.seq_len)
    trainer.val_steps = t.seq_len
    trainer.evaluate()                               # buffers and caches
    t0 = time.monotonic()
    trainer.evaluate()
    per_window = time.monotonic() - t0
    trainer.val_steps = None
    clock.eval_done(windows * per_window)
    if windows * per_window <= 0.5 * budget:
        return
    keep = max(1, int(budget / 6 / max(per_window, 1e-9)))
    trainer.val_steps = keep * t.seq_len
    clock.eval = keep * per_window          # the part it will score
    if trainer.rank0:
        console.log(f"validation: a whole pass over the {n_val:,}-character split would "
                    f"take about {fmt_duration(windows * per_window)} of the "
                    f"{fmt_duration(budget)} --max-time; every evaluation of this "
                    f"run scores the same first {B * min(S, trainer.val_steps):,} "
                    "characters of it (`charrnn eval RUN --split val` scores it all)")
    if math.isfinite(trainer.best_val) or trainer.rescore_pending:
        rescore_best(trainer, "the part of the validation split this run scores")


def rescore_best(trainer, what: str) -> None:
    """Score best.safetensors on the validation data as this run scores it now, so
    that "best" and "val" are measured on the same characters."""
    from ..store.checkpoint import load_model

    trainer.rescore_pending = False
    trainer.best_val = math.inf
    best_path, model = trainer.files.best, trainer.model
    try:
        best = load_model(best_path)
        if best.vocab != model.vocab and best.vocab.chars == \
                model.vocab.chars[:len(best.vocab.chars)]:
            from .runs import grow_model_vocab   # grown this night: grow best too

            best, _ = grow_model_vocab(best, model.vocab, seed=trainer.tcfg.seed)
        lut = vocab_map(trainer.data_vocab, best.vocab, "the validation data")
    except (CheckpointError, VocabError) as e:
        console.warn(f"cannot re-score {best_path} on {what} ({e}); the next "
                     "evaluation replaces it")
        return
    trainer.best_val, _ = evaluate_split(best, trainer.val_tokens, trainer.tcfg.batch_size,
                                         trainer.tcfg.seq_len, lut,
                                         max_steps=trainer.val_steps)
    console.log(f"re-scored {best_path.name} on {what}: "
                f"loss {trainer.best_val:.4f} (bpc {trainer.best_val / LN2:.3f})")
