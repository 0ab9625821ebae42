"""Elman RNN layer, as ``torch.nn.RNN``::

    h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),   act = tanh or relu

(``nonlinearity``).  The derivative is read back from h_t itself: 1 - h_t^2 for tanh,
[h_t > 0] for relu, so nothing but h is kept for backward.
"""
from __future__ import annotations

import numpy as np

from ...kernels import steps as S
from ...kernels.cells import RnnCell
from . import Layer, LayerParams, Workspace


class RNNLayer(Layer):
    def __init__(self, cfg, index: int):
        super().__init__(cfg, index)
        self.relu = cfg.nonlinearity == "relu"

    def _workspace(self, ws: Workspace, B: int, T: int, dtype) -> None:
        ws.hh = np.empty((B, self.H), dtype)        # (B, H) h_{t-1} W_hh^T

    # Kept for backward: h for T+1 steps, (T+1) * B * H * s bytes; B=50, T=50, H=256,
    # float32: 51 * 50 * 256 * 4 = 2.6 MB per layer (plus the (T, B, H) projection
    # buffer, 2.6 MB, reused for the pre-activation gradients).
    def forward_steps(self, ws: Workspace, p: LayerParams, x, idx, t0: int, t1: int) -> None:
        src = self._input_args(ws, p, x, idx, t0, t1)
        self._run(ws, S._rnn_forward_steps, S._rnn_forward_rows, S.Span(t0, t1, ws.toff),
                  src, self._cell(ws, p), S.RnnSaved(ws.xp, ws.hs), ws.hh)

    def _cell(self, ws: Workspace, p: LayerParams) -> RnnCell:
        return RnnCell(self.relu, ws.pack_fwd["w_hh_t"], ws.pack_bwd["w_hh"], p.b_hh)

    def recompute(self, v: Workspace, p: LayerParams, x, idx) -> None:
        """Nothing to rebuild: the backward steps read only h (kept) and write d(pre)
        over the projection buffer without reading it."""

    def backward_steps(self, ws: Workspace, p: LayerParams, dy, t0: int, t1: int) -> None:
        # d(pre) (T, B, H) goes over the projection buffer ws.xp
        self._run(ws, S._rnn_backward_steps, S._rnn_backward_rows, S.Span(t0, t1, ws.toff),
                  self._dx_args(ws), self._cell(ws, p), S.RnnSaved(ws.xp, ws.hs),
                  S.RnnGrads(dy, ws.dh_next, ws.dh_mm))
        if t0 + ws.toff > 0:
            ws.dh_next = ws.dh_mm
