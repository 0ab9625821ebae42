"""Elman RNN layer, as ``torch.nn.RNN``::

    h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),   act = tanh or relu

(``nonlinearity``).  The derivative is read back from h_t itself: 1 - h_t^2 for tanh,
[h_t > 0] for relu, so nothing but h is kept for backward.
"""
from __future__ import annotations

import numpy as np

from ..kernels import cells as K
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
    def forward(self, ws: Workspace, p: LayerParams, x, idx, state: tuple):
        T = ws.T
        self.project(ws, p, x, idx)
        ws.hs[0] = state[0]
        w_hh_t = p.w_hh.T                           # (H, H) view
        xp, hs, hh = ws.xp, ws.hs, ws.hh
        for t in range(T):
            np.matmul(hs[t], w_hh_t, out=hh)
            K._rnn_forward_step(self.relu, xp[t], hh, p.b_hh, hs[t + 1])
        return hs[1:]

    def backward(self, ws: Workspace, p: LayerParams, g: LayerParams, dy, x, idx,
                 need_dx: bool):
        T = ws.T
        dpre = ws.xp                                # (T, B, H) reuses the projection buffer
        dh_mm = ws.zeros
        for t in range(T - 1, -1, -1):
            K._rnn_backward_step(self.relu, dy[t], dh_mm, ws.hs[t + 1], dpre[t])
            if t > 0:
                np.matmul(dpre[t], p.w_hh, out=ws.dh_mm)
                dh_mm = ws.dh_mm
        self.recurrent_grads(ws, g, dpre)
        return self.input_grads(ws, p, g, x, idx, need_dx)
