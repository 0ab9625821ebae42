"""charrnn: character-level RNN language models on the CPU.

``import charrnn`` is cheap: numpy and numba load only when a model or kernel is
first used (``charrnn.Model`` is resolved lazily), so ``charrnn --help`` starts fast.
"""
from __future__ import annotations

import os as _os

# OpenBLAS's worker threads busy-wait for about 2**28 cycles after every call before they
# sleep.  Training alternates many small BLAS calls with numba kernels on the same cores,
# and those spinning threads steal the cores the kernels need: 2**4 cycles measured 18%
# faster end to end (LSTM 2x256, 2 cores).  Only effective if numpy is not loaded yet, and
# a value the user set wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# numba's OpenMP workers spin a while after each parallel region before they sleep, so the
# next region (a training step runs dozens, charrnn.kernels.steps) finds them awake: on a
# virtual machine whose idle cores halt, waking a sleeping worker took 100-200 us.  All of
# charrnn's parallel work runs in those workers (charrnn.kernels.blas), so a spinning
# worker holds up no other thread of ours.  A value the user set wins.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "300000")

__version__ = "0.1.0"

__all__ = ["Model", "ModelConfig", "DataConfig", "TrainConfig", "SampleConfig",
           "CharrnnError", "__version__"]


def __getattr__(name):  # PEP 562: lazy public API
    if name == "Model":
        from .model import Model
        return Model
    if name in ("ModelConfig", "DataConfig", "TrainConfig", "SampleConfig"):
        from . import config
        return getattr(config, name)
    if name == "CharrnnError":
        from .errors import CharrnnError
        return CharrnnError
    raise AttributeError(f"module 'charrnn' has no attribute {name!r}")
