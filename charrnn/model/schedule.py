"""Learning-rate schedules (pure Python, no state: the rate is a function of position).

``lr_at(cfg, iteration, epoch, total_iters, progress=None)`` gives the learning rate of
the update about to be made.  ``iteration`` counts the updates already made (0 for the
first), ``epoch`` the epochs already completed as a float (``iterations done /
batches per epoch``), so a resumed run gets exactly the rate it would have had.

Warm-up (every schedule)
    For ``iteration < warmup_iters`` the scheduled rate is multiplied by
    ``(iteration + 1) / warmup_iters``: a linear ramp from 0 that reaches the full rate
    at iteration ``warmup_iters - 1``.
constant
    ``lr``.
step (char-rnn)
    char-rnn multiplies the rate by ``lr_decay`` at the end of epoch ``k`` when
    ``k >= decay_after``.  Generalised with ``decay_every``: at the end of every epoch
    ``k >= 1`` with ``k >= decay_after`` and ``(k - decay_after) % decay_every == 0``.
    So ``lr * lr_decay ** n`` with ``n`` the number of such ``k <= epoch``
    (char-rnn defaults: ``lr`` for epochs 0-9, ``0.97 lr`` during epoch 10, ...).
cosine
    From ``lr`` down to ``min_lr_frac * lr`` along half a cosine, over the iterations
    after the warm-up: ``p = (iteration - warmup_iters) / (total_iters - warmup_iters)``
    clipped to [0, 1], ``lr_min + (lr - lr_min) * (1 + cos(pi p)) / 2``.
    ``total_iters`` is the run length in updates (see :func:`total_iterations`).  When
    the run length is unknown (only a time budget, ``--max-time``), pass
    ``progress`` = elapsed / budget in [0, 1] instead: then ``p = progress`` (the
    cosine runs over the time budget, warm-up included).  With neither, ConfigError.
    When both are given, p is the larger of the two (the run stops at whichever limit
    comes first).
"""
from __future__ import annotations

import math

from ..config import TrainConfig
from ..errors import ConfigError

# Epoch counts derived from iteration / batches_per_epoch can land a hair below an
# integer (9.999999999 for 10); boundaries are counted with this tolerance.
_EPOCH_EPS = 1e-9


def total_iterations(cfg: TrainConfig, batches_per_epoch: int | None) -> int | None:
    """Run length in updates from max_iters / max_epochs (the smaller), or None."""
    limits = []
    if cfg.max_iters > 0:
        limits.append(cfg.max_iters)
    if cfg.epoch_limit > 0 and batches_per_epoch:
        limits.append(cfg.epoch_limit * int(batches_per_epoch))
    return min(limits) if limits else None


def warmup_factor(cfg: TrainConfig, iteration: int) -> float:
    """Multiplier of the linear warm-up at ``iteration`` (1.0 once it is over)."""
    if cfg.warmup_iters > 0 and iteration < cfg.warmup_iters:
        return (iteration + 1) / cfg.warmup_iters
    return 1.0


def step_decays(cfg: TrainConfig, epoch: float) -> int:
    """How many ``lr_decay`` multiplications the step schedule has made by ``epoch``."""
    done = math.floor(epoch + _EPOCH_EPS)          # epochs completed
    first = cfg.decay_after
    if first < 1:                                  # epoch 0 has no end-of-epoch yet
        first = cfg.decay_every
    if done < first:
        return 0
    return (done - first) // cfg.decay_every + 1


def cosine_position(cfg: TrainConfig, iteration: int, total_iters: int | None,
                    progress: float | None) -> float:
    """p in [0, 1] of the cosine schedule (see module docstring)."""
    ps = []
    if total_iters is not None:
        span = total_iters - cfg.warmup_iters
        if span <= 0:
            ps.append(1.0 if iteration >= cfg.warmup_iters else 0.0)
        else:
            ps.append((iteration - cfg.warmup_iters) / span)
    if progress is not None:
        ps.append(progress)
    if not ps:
        raise ConfigError(
            "the cosine schedule needs the run length: give --max-iters or --max-epochs "
            "(or a --max-time budget)")
    return min(1.0, max(0.0, max(ps)))


def lr_at(cfg: TrainConfig, iteration: int, epoch: float, total_iters: int | None = None,
          progress: float | None = None) -> float:
    """The learning rate for the update after ``iteration`` updates and ``epoch`` epochs."""
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise ConfigError(f"iteration must be an integer >= 0 (got {iteration!r})")
    epoch = float(epoch)
    if not math.isfinite(epoch) or epoch < 0:
        raise ConfigError(f"epoch must be >= 0 (got {epoch})")
    if total_iters is not None and (isinstance(total_iters, bool)
                                    or not isinstance(total_iters, int) or total_iters < 1):
        raise ConfigError(f"total_iters must be an integer >= 1 or None (got {total_iters!r})")
    if progress is not None:
        progress = float(progress)
        if not (0.0 <= progress <= 1.0):   # also refuses NaN
            raise ConfigError(f"progress must be in [0, 1] (got {progress})")

    if cfg.schedule == "constant":
        base = cfg.lr
    elif cfg.schedule == "step":
        base = cfg.lr * cfg.lr_decay ** step_decays(cfg, epoch)
    elif cfg.schedule == "cosine":
        p = cosine_position(cfg, iteration, total_iters, progress)
        lo = cfg.min_lr_frac * cfg.lr
        base = lo + (cfg.lr - lo) * 0.5 * (1.0 + math.cos(math.pi * p))
    else:
        raise ConfigError(f"unknown schedule {cfg.schedule!r} "
                          "(expected constant, step or cosine)")
    return base * warmup_factor(cfg, iteration)


__all__ = ["lr_at", "total_iterations", "warmup_factor", "step_decays", "cosine_position"]
