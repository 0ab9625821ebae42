"""The compute layer: numba kernels grouped by topic, and the process settings they run under.

* ``runtime``: threads, BLAS, the kernel cache directory, signals while numba compiles
  (imports neither numpy nor numba at top level, so the CLI can call it first).
* ``jit``: the one place where numba's flags are set; ``fastload`` loads cached kernels
  without starting numba's compiler.
* ``modes``: the named modes kernels branch on (Cell, GruStep, Inputs, Product).
* ``cpu``: everything that depends on the host CPU (detection, the AVX2 assembly and
  LLVM IR of the packed micro-kernel, the CHARRNN_CPU_PATH / CHARRNN_VECTOR_BITS
  switches); ``matmul``: the one route to a matrix product and its backend rule.
* the kernel modules (``gates``, the gate equations and log-softmax shared by training
  and sampling; ``cells``, ``steps``, ``packed``, ``blas``, ``sample``, ``optim``,
  ``activations``) import numba through ``jit``.  Public functions validate; private
  ``_kernel`` functions compute.

Importing this package itself imports nothing heavy.
"""
