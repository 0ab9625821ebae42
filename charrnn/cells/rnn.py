"""Elman RNN layer, as ``torch.nn.RNN``::

    h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),   act = tanh or relu

(``nonlinearity``).  The derivative is read back from h_t itself: 1 - h_t^2 for tanh,
[h_t > 0] for relu, so nothing but h is kept for backward.
"""
from __future__ import annotations

import numpy as np

from ..kernels import blas
from ..kernels import cells as K
from ..kernels import steps as S
from . import Layer, LayerParams, Workspace


class RNNLayer(Layer):
    def __init__(self, cfg, index: int):
        super().__init__(cfg, index)
        self.relu = 1 if cfg.nonlinearity == "relu" else 0

    def _workspace(self, ws: Workspace, B: int, T: int, dtype) -> None:
        ws.hh = np.empty((B, self.H), dtype)        # (B, H) h_{t-1} W_hh^T

    # Kept for backward: h for T+1 steps, (T+1) * B * H * s bytes; B=50, T=50, H=256,
    # float32: 51 * 50 * 256 * 4 = 2.6 MB per layer (plus the (T, B, H) projection
    # buffer, 2.6 MB, reused for the pre-activation gradients).
    def forward_steps(self, ws: Workspace, p: LayerParams, x, idx, t0: int, t1: int) -> None:
        self.project(ws, p, x, idx, t0, t1)
        xp, hs, hh, w_hh_t = ws.xp, ws.hs, ws.hh, ws.w_hh_t
        gemm = blas.gemm(xp.dtype)
        if gemm is not None:
            S._rnn_forward_steps(gemm, self.relu, t0, t1, xp, w_hh_t, p.b_hh, hs, hh)
            return
        for t in range(t0, t1):                     # the same steps, driven from Python
            np.matmul(hs[t], w_hh_t, out=hh)                 # (B, H)
            K._rnn_forward_step(self.relu, xp[t], hh, p.b_hh, hs[t + 1])

    def backward_steps(self, ws: Workspace, p: LayerParams, dy, t0: int, t1: int) -> None:
        dpre = ws.xp                                # (T, B, H) reuses the projection buffer
        gemm = blas.gemm(dpre.dtype)
        if gemm is not None:
            S._rnn_backward_steps(gemm, self.relu, t0, t1, dy, ws.dh_next, ws.dh_mm, ws.hs,
                                  dpre, p.w_hh)
            if t0 > 0:
                ws.dh_next = ws.dh_mm
            return
        for t in range(t1 - 1, t0 - 1, -1):         # the same steps, driven from Python
            K._rnn_backward_step(self.relu, dy[t], ws.dh_next, ws.hs[t + 1], dpre[t])
            if t > 0:
                np.matmul(dpre[t], p.w_hh, out=ws.dh_mm)     # (B, H)
                ws.dh_next = ws.dh_mm
