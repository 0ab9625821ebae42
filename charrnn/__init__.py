"""charrnn: character-level RNN language models on the CPU.

``import charrnn`` is cheap: numpy and numba load only when a model or kernel is
first used (``charrnn.Model`` is resolved lazily), so ``charrnn --help`` starts fast.
It has no side effects either: the command line tunes the process's threading
environment when it starts (:func:`charrnn.kernels.runtime.tune_environment`); a library user
may call that before importing numpy to get the same.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Model", "ModelConfig", "DataConfig", "TrainConfig", "SampleConfig",
           "CharrnnError", "__version__"]


def __getattr__(name):  # PEP 562: lazy public API
    if name == "Model":
        from .model.network import Model
        return Model
    if name in ("ModelConfig", "DataConfig", "TrainConfig", "SampleConfig"):
        from . import config
        return getattr(config, name)
    if name == "CharrnnError":
        from .errors import CharrnnError
        return CharrnnError
    raise AttributeError(f"module 'charrnn' has no attribute {name!r}")
