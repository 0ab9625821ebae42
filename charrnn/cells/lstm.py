"""LSTM layer (gates in PyTorch's order i, f, g, o).

Equations (x_t the layer input, h_{t-1}, c_{t-1} the state, sigma the logistic function)::

    i_t = sigma(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi [+ p_i * c_{t-1}])
    f_t = sigma(W_if x_t + b_if + W_hf h_{t-1} + b_hf [+ p_f * c_{t-1}])
    g_t = tanh (W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
    c_t = f_t * c_{t-1} + i_t * g_t
    o_t = sigma(W_io x_t + b_io + W_ho h_{t-1} + b_ho [+ p_o * c_t])
    h_t = o_t * tanh(c_t)

The bracketed terms are the diagonal peepholes (Gers & Schmidhuber 2000), present only
with ``peepholes=True``: ``rnn.weight_peephole_l{k}`` (3, H) holds p_i, p_f, p_o.
Without peepholes this is exactly ``torch.nn.LSTM``.
"""
from __future__ import annotations

import numpy as np

from ..kernels import blas
from ..kernels import cells as K
from ..kernels import steps as S
from . import Layer, LayerParams, Workspace


class LSTMLayer(Layer):
    n_state = 2

    def __init__(self, cfg, index: int):
        super().__init__(cfg, index)
        self.peepholes = bool(cfg.peepholes)

    def _workspace(self, ws: Workspace, B: int, T: int, dtype) -> None:
        H = self.H
        ws.cs = np.empty((T + 1, B, H), dtype)      # (T+1, B, H) c_0 .. c_T
        ws.tc = np.empty((B, H), dtype)             # (B, H) tanh(c_t), scratch of one step
        ws.hh = np.empty((B, 4 * H), dtype)         # (B, 4H) h_{t-1} W_hh^T
        ws.dc = np.empty((B, H), dtype)             # (B, H) dL/dc carried backwards
        ws.dpeep = np.zeros((B, 3 * H), dtype)      # (B, 3H) peephole grads per stream
        ws.nopeep = np.zeros((3, 1), dtype)         # (3, 1) placeholder when no peepholes

    def final_state(self, ws: Workspace) -> tuple:
        return (ws.hs[ws.T], ws.cs[ws.T])

    def _peep(self, ws: Workspace, p: LayerParams):
        return (p.peep, 1) if self.peepholes else (ws.nopeep, 0)

    def forward_start(self, ws: Workspace, p: LayerParams, state: tuple) -> None:
        super().forward_start(ws, p, state)
        ws.cs[0] = state[1]

    # Kept for backward (s = bytes per element): h and c for T+1 steps and the four gate
    # activations for T steps, which the forward kernel writes over the projection buffer
    # xp (T, B, 4H) it has consumed; tanh(c_t) is recomputed in backward.  In all
    # (2(T+1) + 4T) * B * H * s bytes; B=50, T=100, H=512, float32: 602 * 50 * 512 * 4 =
    # 61.6 MB per layer.  Backward writes the pre-activation gradients over the gates.
    def forward_steps(self, ws: Workspace, p: LayerParams, x, idx, t0: int, t1: int) -> None:
        self.project(ws, p, x, idx, t0, t1)
        peep, use_peep = self._peep(ws, p)
        xp, hs, cs, tc, hh, w_hh_t = ws.xp, ws.hs, ws.cs, ws.tc, ws.hh, ws.w_hh_t
        gemm = blas.gemm(xp.dtype)
        if gemm is not None:
            S._lstm_forward_steps(gemm, t0, t1, xp, w_hh_t, p.b_hh, peep, use_peep, hs, cs,
                                  hh, tc)
            return
        for t in range(t0, t1):                     # the same steps, driven from Python
            np.matmul(hs[t], w_hh_t, out=hh)                 # (B, 4H)
            K._lstm_forward_step(xp[t], hh, p.b_hh, peep, use_peep, cs[t], hs[t + 1],
                                 cs[t + 1], xp[t], tc)

    def backward_start(self, ws: Workspace) -> None:
        super().backward_start(ws)
        ws.dc.fill(0)
        if self.peepholes:
            ws.dpeep.fill(0)

    def backward_steps(self, ws: Workspace, p: LayerParams, dy, t0: int, t1: int) -> None:
        gates = dpre = ws.xp                        # (T, B, 4H) gates in, their gradients out
        peep, use_peep = self._peep(ws, p)
        gemm = blas.gemm(dpre.dtype)
        if gemm is not None:
            S._lstm_backward_steps(gemm, t0, t1, dy, ws.dh_next, ws.dh_mm, ws.dc, dpre, ws.cs,
                                   ws.tc, p.w_hh, peep, use_peep, ws.dpeep)
            if t0 > 0:
                ws.dh_next = ws.dh_mm
            return
        for t in range(t1 - 1, t0 - 1, -1):         # the same steps, driven from Python
            K._lstm_backward_step(dy[t], ws.dh_next, ws.dc, gates[t], ws.cs[t], ws.cs[t + 1],
                                  ws.tc, peep, use_peep, dpre[t], ws.dpeep)
            if t > 0:
                np.matmul(dpre[t], p.w_hh, out=ws.dh_mm)     # (B, H)
                ws.dh_next = ws.dh_mm

    def backward_finish(self, ws: Workspace, p: LayerParams, g: LayerParams, x, idx) -> None:
        if self.peepholes:
            g.peep += ws.dpeep.reshape(ws.B, 3, self.H).sum(axis=0)
        super().backward_finish(ws, p, g, x, idx)
