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

from ..kernels import cells as K
from . import Layer, LayerParams, Workspace


class LSTMLayer(Layer):
    n_state = 2

    def __init__(self, cfg, index: int):
        super().__init__(cfg, index)
        self.peepholes = bool(cfg.peepholes)

    def _workspace(self, ws: Workspace, B: int, T: int, dtype) -> None:
        H = self.H
        ws.cs = np.empty((T + 1, B, H), dtype)      # (T+1, B, H) c_0 .. c_T
        ws.gates = np.empty((T, B, 4 * H), dtype)   # (T, B, 4H) i, f, g, o after activation
        ws.tc = np.empty((T, B, H), dtype)          # (T, B, H) tanh(c_t)
        ws.hh = np.empty((B, 4 * H), dtype)         # (B, 4H) h_{t-1} W_hh^T
        ws.dc = np.empty((B, H), dtype)             # (B, H) dL/dc carried backwards
        ws.dpeep = np.zeros((B, 3 * H), dtype)      # (B, 3H) peephole grads per stream
        ws.nopeep = np.zeros((3, 1), dtype)         # (3, 1) placeholder when no peepholes

    def final_state(self, ws: Workspace) -> tuple:
        return (ws.hs[ws.T], ws.cs[ws.T])

    # Kept for backward (s = bytes per element): h and c for T+1 steps, 4 gates and
    # tanh(c) for T steps: (2(T+1) + 5T) * B * H * s bytes; B=50, T=50, H=256, float32:
    # (102 + 250) * 50 * 256 * 4 = 18.0 MB per layer (plus the (T, B, 4H) projection
    # buffer, 10.2 MB, reused for the pre-activation gradients).
    def forward(self, ws: Workspace, p: LayerParams, x, idx, state: tuple):
        T = ws.T
        self.project(ws, p, x, idx)
        ws.hs[0] = state[0]
        ws.cs[0] = state[1]
        w_hh_t = p.w_hh.T                           # (H, 4H) view
        peep = p.peep if self.peepholes else ws.nopeep
        use_peep = 1 if self.peepholes else 0
        xp, hs, cs, gates, tc, hh = ws.xp, ws.hs, ws.cs, ws.gates, ws.tc, ws.hh
        for t in range(T):
            np.matmul(hs[t], w_hh_t, out=hh)
            K._lstm_forward_step(xp[t], hh, p.b_hh, peep, use_peep, cs[t], hs[t + 1],
                                 cs[t + 1], gates[t], tc[t])
        return hs[1:]

    def backward(self, ws: Workspace, p: LayerParams, g: LayerParams, dy, x, idx,
                 need_dx: bool):
        T, B, H = ws.T, ws.B, self.H
        dpre = ws.xp                                # (T, B, 4H) reuses the projection buffer
        peep = p.peep if self.peepholes else ws.nopeep
        use_peep = 1 if self.peepholes else 0
        ws.dc.fill(0)
        if self.peepholes:
            ws.dpeep.fill(0)
        dh_mm = ws.zeros
        for t in range(T - 1, -1, -1):
            K._lstm_backward_step(dy[t], dh_mm, ws.dc, ws.gates[t], ws.cs[t], ws.cs[t + 1],
                                  ws.tc[t], peep, use_peep, dpre[t], ws.dpeep)
            if t > 0:
                np.matmul(dpre[t], p.w_hh, out=ws.dh_mm)
                dh_mm = ws.dh_mm
        if self.peepholes:
            g.peep += ws.dpeep.reshape(B, 3, H).sum(axis=0)
        self.recurrent_grads(ws, g, dpre)
        return self.input_grads(ws, p, g, x, idx, need_dx)
