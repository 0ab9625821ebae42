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

from ...kernels import runtime
from ...kernels import steps as S
from ...kernels.cells import LstmCell
from ...kernels.matmul import matmul
from . import Layer, LayerParams, Workspace


class LSTMLayer(Layer):
    n_state = 2
    STATE_BUFFERS = ("hs", "cs")

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

    def recompute_buffers(self) -> dict[str, int]:
        H = self.H
        return {"rhh": 4 * H, "rh": H, "rc": H, "rtc": H}   # h W_hh^T; h_t, c_t, tanh(c_t)

    def final_state(self, ws: Workspace) -> tuple:
        return (ws.hs[ws.T], ws.cs[ws.T])

    def _cell(self, ws: Workspace, p: LayerParams) -> LstmCell:
        peep, use_peep = (p.peep, True) if self.peepholes else (ws.nopeep, False)
        return LstmCell(ws.pack_fwd["w_hh_t"], ws.pack_bwd["w_hh"], p.b_hh, peep, use_peep)

    @staticmethod
    def _saved(ws: Workspace) -> S.LstmSaved:
        return S.LstmSaved(ws.xp, ws.hs, ws.cs)

    def forward_start(self, ws: Workspace, p: LayerParams, state: tuple) -> None:
        super().forward_start(ws, p, state)
        ws.cs[0] = state[1]

    # Kept for backward (s = bytes per element): h and c for T+1 steps and the four gate
    # activations for T steps, which the forward kernel writes over the projection buffer
    # xp (T, B, 4H) it has consumed; tanh(c_t) is recomputed in backward.  In all
    # (2(T+1) + 4T) * B * H * s bytes; B=50, T=100, H=512, float32: 602 * 50 * 512 * 4 =
    # 61.6 MB per layer.  Backward writes the pre-activation gradients over the gates.
    def forward_steps(self, ws: Workspace, p: LayerParams, x, idx, t0: int, t1: int) -> None:
        src = self._input_args(ws, p, x, idx, t0, t1)
        self._run(ws, S._lstm_forward_steps, S._lstm_forward_rows, S.Span(t0, t1, ws.toff),
                  src, self._cell(ws, p), self._saved(ws), S.LstmScratch(ws.hh, ws.tc))

    def _recompute_block(self, v: Workspace, p: LayerParams, s0: int, s1: int) -> None:
        H, R = self.H, (s1 - s0) * v.B
        hh = v.rhh[:R]                                               # (R, 4H)
        matmul(v.hs[s0:s1].reshape(R, H), v.pack_fwd["w_hh_t"], hh,
               threads=runtime.numba_threads())
        S._lstm_gates_rows(self._row_threads(R), self._cell(v, p),
                           v.xp[s0:s1].reshape(R, 4 * H), hh, v.cs[s0:s1].reshape(R, H),
                           v.rh[:R], v.rc[:R], v.rtc[:R])

    def backward_start(self, ws: Workspace, p: LayerParams) -> None:
        super().backward_start(ws, p)
        ws.dc.fill(0)
        if self.peepholes:
            ws.dpeep.fill(0)

    def backward_steps(self, ws: Workspace, p: LayerParams, dy, t0: int, t1: int) -> None:
        # ws.xp (T, B, 4H): gates in, their gradients out
        grads = S.LstmGrads(dy, ws.dh_next, ws.dh_mm, ws.dc, ws.dpeep)
        self._run(ws, S._lstm_backward_steps, S._lstm_backward_rows, S.Span(t0, t1, ws.toff),
                  self._dx_args(ws), self._cell(ws, p), self._saved(ws), grads,
                  S.LstmScratch(ws.hh, ws.tc))
        if t0 + ws.toff > 0:
            ws.dh_next = ws.dh_mm

    def backward_finish(self, ws: Workspace, p: LayerParams, g: LayerParams, x, idx) -> None:
        if self.peepholes:
            g.peep += ws.dpeep.reshape(ws.B, 3, self.H).sum(axis=0)
            ws.dpeep.fill(0)                        # a recomputing pass adds per chunk
        super().backward_finish(ws, p, g, x, idx)
