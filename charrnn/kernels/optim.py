"""Fused optimizer kernels over the flat parameter buffer.

Two parallel kernels, each compiled once per dtype (float32, float64):

* :func:`sumsq_kernel` -- the global gradient norm.  The flat gradient is cut into
  chunks of a FIXED size (:data:`CHUNK`, not one chunk per thread); ``prange`` computes
  each chunk's sum of squares (in float64) into ``partials[c]``, then one serial loop
  adds the partials in chunk order.  A chunk's sum is computed by the same machine code
  whatever thread runs it, and the partials are added in the same order, so the norm is
  bit-identical for any thread count.
* :func:`update_kernel` -- clipping by global norm (a scale factor computed in Python),
  clipping by value, weight decay and the update of one of the four optimizers, in one
  pass over the buffers.  The gradient buffer is only read (never clipped in place).

The moment buffers that an optimizer does not use are passed as empty arrays so every
optimizer shares one compiled kernel per dtype.  A step's scalars travel as one
:class:`Hyper`, the moment buffers as one :class:`Moments`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import prange

from .activations import _div
from .jit import jit, pjit
from .modes import Optimizer

# Elements per chunk: large enough that the per-chunk overhead vanishes, small enough
# that a 100k-parameter model still splits into chunks for two threads.
CHUNK = 8192

# The optimizers update_kernel knows (charrnn.kernels.modes.Optimizer).
ADAM, ADAMW, SGD, RMSPROP = Optimizer.ADAM, Optimizer.ADAMW, Optimizer.SGD, Optimizer.RMSPROP


class Moments(NamedTuple):
    """The optimizer's moment buffers over the flat parameters (n of them)."""

    m1: np.ndarray        # (n,) adam/adamw exp_avg, sgd momentum_buffer, rmsprop square_avg
    m2: np.ndarray        # (n,) adam/adamw exp_avg_sq; (0,) for the others


class Hyper(NamedTuple):
    """The scalars of one optimizer step (all floats; charrnn.model.optim has the
    formulas)."""

    lr: float
    scale: float          # global-norm clipping factor (1.0 = none)
    clip_value: float     # > 0: clamp each gradient element to [-clip_value, clip_value]
    wd: float             # weight decay (L2, or decoupled with adamw)
    beta1: float
    beta2: float
    eps: float
    step_size: float      # adam/adamw: lr / (1 - beta1^t)
    inv_sqrt_bc2: float   # adam/adamw: 1 / sqrt(1 - beta2^t)
    momentum: float       # sgd
    alpha: float          # rmsprop


def n_chunks(n: int) -> int:
    """Number of CHUNK-sized pieces covering ``n`` elements."""
    return (n + CHUNK - 1) // CHUNK


@pjit
def sumsq_kernel(g, partials):
    """Sum of squares of ``g`` (float64), via per-chunk partials summed in fixed order."""
    n = g.shape[0]
    nc = partials.shape[0]
    for c in prange(nc):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        s = 0.0
        for i in range(lo, hi):
            x = np.float64(g[i])
            s += x * x
        partials[c] = s
    total = 0.0
    for c in range(nc):
        total += partials[c]
    return total


@jit
def _grad_and_param(gi, pi, hp, use_cv, decoupled, decay):
    """The gradient element after global-norm scaling, clipping by value and weight
    decay (L2 in the gradient, or ``decoupled``: the parameter times ``decay``), and
    the parameter element in float64."""
    gi = gi * hp.scale
    if use_cv:
        gi = min(max(gi, -hp.clip_value), hp.clip_value)
    pi = np.float64(pi)
    if decoupled:
        pi *= decay
    else:
        gi += hp.wd * pi
    return gi, pi


# The per-chunk loops are functions of their own over contiguous slices: written inline in
# the prange body, LLVM kept them scalar (measured 4.9 ms for 0.87M parameters on one
# thread, Adam); on slices it vectorises them (sqrt and division 4 lanes at a time: about
# 1 ms).  Divisions go through _div (numba's "/" checks for zero, which blocks that).


@jit
def _adam_chunk(p, g, m1, m2, adamw, use_cv, hp):
    decay = 1.0 - hp.lr * hp.wd
    beta1, beta2, eps = hp.beta1, hp.beta2, hp.eps
    step_size, inv_sqrt_bc2 = hp.step_size, hp.inv_sqrt_bc2
    for i in range(p.shape[0]):
        gi, pi = _grad_and_param(g[i], p[i], hp, use_cv, adamw, decay)
        mi = beta1 * m1[i] + (1.0 - beta1) * gi
        vi = beta2 * m2[i] + (1.0 - beta2) * gi * gi
        m1[i] = mi
        m2[i] = vi
        p[i] = pi - _div(step_size * mi, math.sqrt(vi) * inv_sqrt_bc2 + eps)


@jit
def _sgd_chunk(p, g, m1, use_mom, use_cv, hp):
    lr, momentum = hp.lr, hp.momentum
    for i in range(p.shape[0]):
        gi, pi = _grad_and_param(g[i], p[i], hp, use_cv, False, 1.0)
        if use_mom:
            bi = momentum * m1[i] + gi
            m1[i] = bi
            gi = bi
        p[i] = pi - lr * gi


@jit
def _rmsprop_chunk(p, g, m1, use_cv, hp):
    lr, alpha, eps = hp.lr, hp.alpha, hp.eps
    for i in range(p.shape[0]):
        gi, pi = _grad_and_param(g[i], p[i], hp, use_cv, False, 1.0)
        si = alpha * m1[i] + (1.0 - alpha) * gi * gi
        m1[i] = si
        p[i] = pi - _div(lr * gi, math.sqrt(si) + eps)


@pjit
def update_kernel(kind, p, g, moments, hp):
    """One ``kind`` (:class:`~charrnn.kernels.modes.Optimizer`) step on the flat
    parameters ``p`` (n,) with their gradient ``g`` (n,), the :class:`Moments` and the
    :class:`Hyper` scalars (see charrnn.model.optim for the formulas).

    ``hp.scale`` multiplies the gradient (global-norm clipping; 1.0 = none), then
    ``hp.clip_value`` > 0 clamps each element.  The moment buffers: adam/adamw
    (exp_avg, exp_avg_sq), sgd (momentum_buffer, unused), rmsprop (square_avg, unused);
    an unused one is an empty array.
    """
    m1, m2 = moments
    n = p.shape[0]
    nc = (n + CHUNK - 1) // CHUNK
    use_cv = hp.clip_value > 0.0
    use_mom = m1.shape[0] == n
    for c in prange(nc):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        if kind == Optimizer.ADAM or kind == Optimizer.ADAMW:   # L2 / decoupled decay
            _adam_chunk(p[lo:hi], g[lo:hi], m1[lo:hi], m2[lo:hi], kind == Optimizer.ADAMW,
                        use_cv, hp)
        elif kind == Optimizer.SGD:       # with momentum (torch semantics, dampening 0)
            _sgd_chunk(p[lo:hi], g[lo:hi], m1[lo:hi] if use_mom else m1, use_mom, use_cv, hp)
        else:                             # rmsprop, char-rnn / torch-optim flavour
            _rmsprop_chunk(p[lo:hi], g[lo:hi], m1[lo:hi], use_cv, hp)
