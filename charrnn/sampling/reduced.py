"""Scoring with reduced-precision weights (``charrnn eval --weights int8|bf16``): a model
whose :meth:`ReducedModel.log_probs` runs the generation kernel itself, teacher-forced,
so a score measures exactly the weights that ``sample --weights`` draws from."""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError, InputError
from . import WEIGHTS, Sampler


class ReducedModel:
    """``model`` as :mod:`charrnn.evaluate` reads it (``config``, ``vocab``, ``dtype``,
    ``log_probs``), its matrices in ``weights`` ("int8" or "bf16"): every product runs
    through :func:`charrnn.kernels.sample._generate_kernel` with forced symbols, B rows
    of a batch as B streams (:class:`charrnn.sampling.Sampler`, one per batch size)."""

    def __init__(self, model, weights: str):
        if weights not in WEIGHTS:
            raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)} (got {weights!r})")
        self.model = model
        self.config = model.config
        self.vocab = model.vocab
        self.dtype = model.dtype
        self.weights = weights
        self._samplers: dict[int, Sampler] = {}

    def _sampler(self, B: int) -> Sampler:
        s = self._samplers.get(B)
        if s is None:
            s = self._samplers[B] = Sampler(self.model, B, weights=self.weights)
        return s

    def log_probs(self, inputs, targets, state=None) -> tuple[np.ndarray, tuple]:
        """log p(targets[b, t] | inputs[b, :t+1], state) as (B, T) float64 and the state
        after reading ``inputs`` (an (h, c) pair), as :meth:`Model.log_probs`."""
        x = np.ascontiguousarray(inputs, dtype=np.int64)                     # (B, T)
        y = np.ascontiguousarray(targets, dtype=np.int64)                    # (B, T)
        if x.ndim != 2 or x.shape != y.shape:
            raise InputError(f"inputs and targets must be (B, T) arrays of one shape "
                             f"(got {x.shape} and {y.shape})")
        B, T = x.shape
        if T == 0:
            return np.zeros((B, 0)), state
        s = self._sampler(B)
        s._check_ids(x)
        s._check_ids(y)
        if state is None:
            s.h[...] = 0
            s.c[...] = 0
        else:
            s.h[...], s.c[...] = state
        s.cur[:] = x[:, 0]
        # step t reads x[:, t] and scores y[:, t]; x[:, t+1] is read next (the last
        # column of `feed` is never read: the next call starts from its own inputs)
        feed = np.concatenate([x[:, 1:], y[:, -1:]], axis=1)                 # (B, T)
        _, lp = s._run(feed, T, True, T, targets=y)
        return lp, (s.h.copy(), s.c.copy())


def reduced_model(model, weights: str):
    """``model`` itself for "float32", else a :class:`ReducedModel`."""
    return model if weights == "float32" else ReducedModel(model, weights)


__all__ = ["ReducedModel", "reduced_model"]
