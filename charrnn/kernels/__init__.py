"""The compute layer: numba kernels grouped by topic, and the process settings they run under.

* ``runtime``: threads, BLAS, the kernel cache directory, signals while numba compiles
  (imports neither numpy nor numba at top level, so the CLI can call it first).
* ``jit``: the one place where numba's flags are set; ``fastload`` loads cached kernels
  without starting numba's compiler.
* the kernel modules (``cells``, ``steps``, ``packed``, ``blas``, ``sample``, ``optim``,
  ``activations``) import numba through ``jit``.  Public functions validate; private
  ``_kernel`` functions compute.

Importing this package itself imports nothing heavy.
"""
