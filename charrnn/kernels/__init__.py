"""Numba kernels, grouped by topic (one module each). Importing this package imports numba.

Every module gets its decorators from :mod:`charrnn.kernels._jit`, the one place where
numba's flags are set.  Public functions validate; private ``_kernel`` functions compute.
"""
from .. import runtime as _runtime

_runtime.ensure_numba()
