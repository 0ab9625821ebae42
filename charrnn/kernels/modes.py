"""Named modes of the kernels: every mode a kernel branches on is one of these, and
callers pass the members (numba types them as integers, so a kernel compiles once per
enum; pass members, not bare integers, or it compiles a second copy for ``int64``)."""
from __future__ import annotations

from enum import IntEnum


class Cell(IntEnum):
    """The recurrent cell of a model (charrnn.kernels.sample)."""

    LSTM = 0
    GRU = 1
    RNN = 2

    @classmethod
    def of(cls, name: str) -> "Cell":
        """The member for a config's cell name ("lstm", "gru", "rnn")."""
        return cls[name.upper()]


class GruStep(IntEnum):
    """What one call of the GRU forward/backward step kernel does
    (charrnn.kernels.cells)."""

    AFTER = 0          # reset "after" (PyTorch): the whole step
    BEFORE_RZ = 1      # reset "before" (Cho 2014), first half: r, z and r * h_{t-1}
    BEFORE_N = 2       # reset "before", second half: n and h_t


class Inputs(IntEnum):
    """Where a forward time loop gets its input projection (charrnn.kernels.steps)."""

    PROJECTED = 0      # made for all steps before the loop (xp is ready)
    DENSE = 1          # each step: x_t W_ih^T + b_ih for its rows
    ONEHOT = 2         # each step: gather rows of W_ih^T by token id, plus b_ih


class Product(IntEnum):
    """How charrnn.kernels.matmul.product multiplies inside a kernel."""

    ROWS = 0           # row-by-row dots (one stream)
    THREADS = 1        # row-by-row dots, the rows split between threads (one stream)
    PACKED = 2         # the packed-weight kernel (several streams)


class Precision(IntEnum):
    """How the sampler's matrices are stored (charrnn.kernels.quant)."""

    FLOAT = 0          # the model's own dtype
    INT8 = 1           # int8 with a float32 scale per output row
    BF16 = 2           # bfloat16

    @classmethod
    def of(cls, name: str) -> "Precision":
        """The member for a --weights name ("float32", "int8", "bf16")."""
        return {"float32": cls.FLOAT, "float": cls.FLOAT, "int8": cls.INT8,
                "bf16": cls.BF16}[name]


class Optimizer(IntEnum):
    """The update of charrnn.kernels.optim.update_kernel."""

    ADAM = 0
    ADAMW = 1
    SGD = 2
    RMSPROP = 3


__all__ = ["Cell", "GruStep", "Inputs", "Optimizer", "Precision", "Product"]
