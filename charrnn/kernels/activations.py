"""Element-wise activations for the cell kernels: ``exp``, ``sigmoid``, ``tanh``.

Numba calls libm for ``np.exp``/``np.tanh`` one element at a time (no SVML here), which
made the gate nonlinearities cost more than the matrix products.  For float32 these
functions use a vectorisable exp instead (LLVM turns the loops of the cell kernels into
AVX/AVX-512 code); float64, the dtype of the gradient checks, keeps libm's exact
functions.  The choice is made at compile time from the argument type (numba
``overload``), so the kernels are written once for both dtypes.

float32 exp: ``e^x = 2^k e^r`` with ``k = round(x / ln 2)``, ``r = x - k ln 2`` (ln 2 split
in two for an exact product), ``|r| <= ln(2)/2``, ``e^r`` by its degree-7 Taylor
polynomial (truncation error below 1.2e-7 relative) and ``2^k`` built from its exponent
bits.  Inputs are clamped to [-87, 88], where e^x stays a normal float32.  Measured
relative error: below 3e-7 (about 2 ulp) over [-80, 80].

float32 tanh: ``(1 - e) / (1 + e)`` with ``e = exp(-2|x|)`` and the sign of x; below
|x| = 0.25, where that quotient would lose digits to cancellation, the odd Taylor series
to x^9 (error below 2e-9).  sigmoid: ``1 / (1 + exp(-x))``.

LLVM vectorises a loop only when it can inline the activation, which it does for one
call site per function, not five: so the cell kernels apply activations through
:func:`sigmoid_into`/:func:`tanh_into`, one simple loop each over a contiguous row slice
(a single loop body holding all the gates stayed scalar, 6x slower).

Divisions go through :func:`_div`, a bare IEEE division: numba's own ``/`` tests the
divisor for zero to raise ZeroDivisionError, and that branch stops LLVM vectorising.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from .jit import jit


_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125          # ln 2 rounded to 17 bits: k * _LN2_HI is exact
_LN2_LO = 1.428606765330187e-06      # ln 2 - _LN2_HI


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the int32 ``bits``."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return sig, codegen


@intrinsic
def _div(typingctx, a, b):
    """a / b without numba's ZeroDivisionError check, which keeps loops from vectorising
    (IEEE semantics: x/0 is +-inf or NaN; never reached here, where b >= 1)."""
    if not (isinstance(a, types.Float) and a == b):
        return None
    sig = a(a, b)

    def codegen(context, builder, signature, args):
        return builder.fdiv(args[0], args[1])
    return sig, codegen


@jit
def _exp_f32(x):
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    k = np.floor(x * np.float32(_LOG2E) + np.float32(0.5))
    r = x - k * np.float32(_LN2_HI) - k * np.float32(_LN2_LO)
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * _f32_from_bits((np.int32(k) + np.int32(127)) << 23)


@jit
def _tanh_f32(x):
    ax = abs(x)
    e = _exp_f32(np.float32(-2.0) * ax)
    big = _div(np.float32(1.0) - e, np.float32(1.0) + e)
    big = big if x >= np.float32(0.0) else -big
    x2 = x * x
    small = np.float32(62.0 / 2835.0)
    small = small * x2 - np.float32(17.0 / 315.0)
    small = small * x2 + np.float32(2.0 / 15.0)
    small = small * x2 - np.float32(1.0 / 3.0)
    small = x + x * x2 * small
    return small if ax < np.float32(0.25) else big


def exp(x):
    """e^x (fast vectorisable float32 version in kernels; see module docstring)."""
    return np.exp(x)


def tanh(x):
    """tanh(x) (fast vectorisable float32 version in kernels)."""
    return np.tanh(x)


def sigmoid(x):
    """1 / (1 + e^-x) (fast vectorisable float32 version in kernels)."""
    return 1.0 / (1.0 + np.exp(-x))


@overload(exp, inline="always")
def _exp_ov(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    return lambda x: np.exp(x)


@overload(tanh, inline="always")
def _tanh_ov(x):
    if x == types.float32:
        return lambda x: _tanh_f32(x)
    return lambda x: np.tanh(x)


@overload(sigmoid, inline="always")
def _sigmoid_ov(x):
    if x == types.float32:
        return lambda x: _div(np.float32(1.0), np.float32(1.0) + _exp_f32(-x))
    return lambda x: _div(1.0, 1.0 + np.exp(-x))


# One loop per helper, and ONE call site of the activation inside it: LLVM inlines the
# activation and vectorises the loop.  The cell kernels call these on contiguous row
# slices (several call sites of a helper are fine: each is one call per row).


@jit
def sigmoid_into(src, dst):
    """dst[j] = sigmoid(src[j]) over two 1-D arrays of equal length (may be the same)."""
    for j in range(src.shape[0]):
        dst[j] = sigmoid(src[j])


@jit
def tanh_into(src, dst):
    """dst[j] = tanh(src[j]) over two 1-D arrays of equal length (may be the same)."""
    for j in range(src.shape[0]):
        dst[j] = tanh(src[j])


@jit
def exp_into(src, shift, dst):
    """dst[j] = exp(src[j] - shift); returns the sum of dst in float64."""
    s = 0.0
    for j in range(src.shape[0]):
        e = exp(src[j] - shift)
        dst[j] = e
        s += e
    return s
