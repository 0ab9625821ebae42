"""How much memory a training run needs, and --low-memory when only that fits."""
from __future__ import annotations

import numpy as np

from .. import console
from ..config import LOW_MEMORY_TIME, ModelConfig, TrainConfig
from ..errors import ConfigError
from ..units import fmt_bytes


def _available_memory() -> int | None:
    from ..store.checkpoint import available_memory     # (a seam for the tests)

    return available_memory()


def estimate_memory(mcfg: ModelConfig, tcfg: TrainConfig) -> int:
    """Bytes a training run needs, roughly: parameters with gradient and optimizer moments,
    the per-layer activations backward keeps (T*B*(3G+6)*H per layer), logits and their
    gradient (2*T*B*V), and the validation pass's buffers (the same again)."""
    item = np.dtype(mcfg.dtype).itemsize
    H, L, G, V = mcfg.hidden_size, mcfg.num_layers, mcfg.gates, max(mcfg.vocab_size, 1)
    I0 = mcfg.embed_size if mcfg.embed_size > 0 else V
    P = (mcfg.embed_size * V + G * H * (I0 + H + 2) + (L - 1) * G * H * (2 * H + 2)
         + V * (H + 1))
    N = tcfg.batch_size * tcfg.seq_len
    acts = L * N * (3 * G + 6) * H + 2 * N * V + 4 * N * H
    if tcfg.low_memory:        # states kept whole, gate buffers one chunk of steps
        Nc = min(N, tcfg.batch_size * recompute_chunk(tcfg.batch_size))
        from ..model.cells import RECOMPUTE_ROWS
        acts = (L * N * 3 * H + (3 * G + 3) * Nc * H + 2 * N * V + 4 * N * H
                + RECOMPUTE_ROWS * (G + 3) * H)          # the recomputation's scratch
    return int(item * (4 * P + 2 * acts) + 8 * 2 * N)


def recompute_chunk(B: int) -> int:
    """Steps per chunk of a --low-memory pass: at least 8, and enough that the chunk's
    weight-gradient products have about 1024 rows (B per step)."""
    return max(8, -(-1024 // B))


def check_memory(mcfg: ModelConfig, tcfg: TrainConfig) -> TrainConfig:
    """``tcfg``, or ``tcfg`` with low_memory on when the run fits in the available
    memory only that way (said on stderr); a ConfigError when it does not fit at all."""
    need = estimate_memory(mcfg, tcfg)
    avail = _available_memory()
    if avail is None or need <= 0.9 * avail:
        return tcfg
    if not tcfg.low_memory:
        low = tcfg.replace(low_memory=True)
        need_low = estimate_memory(mcfg, low)
        if need_low <= 0.9 * avail:
            console.log(f"this model and batch need about {fmt_bytes(need)} of memory but "
                        f"only {fmt_bytes(avail)} is available: training with --low-memory "
                        f"({fmt_bytes(need_low)}; the gates are recomputed in backward, "
                        f"{LOW_MEMORY_TIME} the time)")
            return low
        need = need_low
    raise ConfigError(
        f"this model and batch need about {fmt_bytes(need)} of memory (with --low-memory) "
        f"but only {fmt_bytes(avail)} is available; lower --batch-size, --seq-len or "
        "--hidden")
