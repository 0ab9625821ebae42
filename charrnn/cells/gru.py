"""GRU layer (gates in PyTorch's order r, z, n).

Equations (x_t the layer input, h_{t-1} the state, sigma the logistic function)::

    r_t = sigma(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = sigma(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh (W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))     gru_reset="after"
    n_t = tanh (W_in x_t + b_in + W_hn (r_t * h_{t-1}) + b_hn)     gru_reset="before"
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}

"after" is ``torch.nn.GRU`` (and cuDNN): one recurrent product per step.  "before" is the
original GRU of Cho et al. 2014: r_t is needed before the product for n, so each step
does h_{t-1} W_hrz^T (B, 2H), a kernel for r and z, (r * h_{t-1}) W_hn^T (B, H) and a
kernel for n and h_t; backward likewise splits into two kernels and two products.
"""
from __future__ import annotations

import numpy as np

from ..kernels import cells as K
from . import Layer, LayerParams, Workspace


class GRULayer(Layer):
    def __init__(self, cfg, index: int):
        super().__init__(cfg, index)
        self.before = cfg.gru_reset == "before"

    def _workspace(self, ws: Workspace, B: int, T: int, dtype) -> None:
        H = self.H
        ws.gates = np.empty((T, B, 3 * H), dtype)   # (T, B, 3H) r, z, n after activation
        ws.aux = np.empty((T, B, H), dtype)         # (T, B, H) W_hn h + b_hn, or r * h
        ws.dhh = np.empty((T, B, 3 * H), dtype)     # (T, B, 3H) d(recurrent product)
        ws.dh_dir = np.empty((B, H), dtype)         # (B, H) dL/dh_{t-1} outside the product
        if self.before:
            ws.hrz = np.empty((B, 2 * H), dtype)    # (B, 2H) h_{t-1} W_hrz^T
            ws.hn = np.empty((B, H), dtype)         # (B, H) (r * h_{t-1}) W_hn^T
            ws.drh = np.empty((B, H), dtype)        # (B, H) dL/d(r * h_{t-1})
        else:
            ws.hh = np.empty((B, 3 * H), dtype)     # (B, 3H) h_{t-1} W_hh^T

    # Kept for backward: h for T+1 steps, 3 gates and one auxiliary (B, H) array for T
    # steps: ((T+1) + 4T) * B * H * s bytes; B=50, T=50, H=256, float32:
    # 251 * 50 * 256 * 4 = 12.9 MB per layer (plus the (T, B, 3H) projection buffer,
    # 7.7 MB, reused for the pre-activation gradients, and 7.7 MB for dhh in backward).
    def forward(self, ws: Workspace, p: LayerParams, x, idx, state: tuple):
        T, H = ws.T, self.H
        self.project(ws, p, x, idx)
        ws.hs[0] = state[0]
        xp, hs, gates, aux = ws.xp, ws.hs, ws.gates, ws.aux
        if not self.before:
            w_hh_t = p.w_hh.T                       # (H, 3H) view
            for t in range(T):
                np.matmul(hs[t], w_hh_t, out=ws.hh)
                K._gru_forward_step(0, xp[t], ws.hh, p.b_hh, hs[t], hs[t + 1], gates[t], aux[t])
            return hs[1:]
        w_rz_t = p.w_hh[:2 * H].T                   # (H, 2H) view
        w_n_t = p.w_hh[2 * H:].T                    # (H, H) view
        for t in range(T):
            np.matmul(hs[t], w_rz_t, out=ws.hrz)
            K._gru_forward_step(1, xp[t], ws.hrz, p.b_hh, hs[t], hs[t + 1], gates[t], aux[t])
            np.matmul(aux[t], w_n_t, out=ws.hn)
            K._gru_forward_step(2, xp[t], ws.hn, p.b_hh, hs[t], hs[t + 1], gates[t], aux[t])
        return hs[1:]

    def backward(self, ws: Workspace, p: LayerParams, g: LayerParams, dy, x, idx,
                 need_dx: bool):
        T, B, H = ws.T, ws.B, self.H
        dxp, dhh = ws.xp, ws.dhh                    # (T, B, 3H) each; dxp reuses xp
        ws.dh_dir.fill(0)
        dh_mm = ws.zeros
        if not self.before:
            for t in range(T - 1, -1, -1):
                K._gru_backward_step(0, dy[t], dh_mm, ws.dh_dir, ws.gates[t], ws.aux[t],
                                     ws.hs[t], dxp[t], dhh[t])
                if t > 0:
                    np.matmul(dhh[t], p.w_hh, out=ws.dh_mm)
                    dh_mm = ws.dh_mm
            self.recurrent_grads(ws, g, dhh)
            return self.input_grads(ws, p, g, x, idx, need_dx)

        w_rz = p.w_hh[:2 * H]                       # (2H, H) view
        w_n = p.w_hh[2 * H:]                        # (H, H) view
        for t in range(T - 1, -1, -1):
            K._gru_backward_step(1, dy[t], dh_mm, ws.dh_dir, ws.gates[t], ws.aux[t],
                                 ws.hs[t], dxp[t], dhh[t])
            np.matmul(dhh[t][:, 2 * H:], w_n, out=ws.drh)
            K._gru_backward_step(2, dy[t], ws.drh, ws.dh_dir, ws.gates[t], ws.aux[t],
                                 ws.hs[t], dxp[t], dhh[t])
            if t > 0:
                np.matmul(dhh[t][:, :2 * H], w_rz, out=ws.dh_mm)
                dh_mm = ws.dh_mm
        # dW_hr, dW_hz pair with h_{t-1}; dW_hn pairs with r * h_{t-1} (kept in aux).
        dhh2 = dhh.reshape(T * B, 3 * H)            # (N, 3H)
        hprev = ws.hs[:T].reshape(T * B, H)         # (N, H)
        np.matmul(dhh2[:, :2 * H].T, hprev, out=ws.dw_hh[:2 * H])
        np.matmul(dhh2[:, 2 * H:].T, ws.aux.reshape(T * B, H), out=ws.dw_hh[2 * H:])
        g.w_hh += ws.dw_hh
        np.sum(dhh2, axis=0, out=ws.db)
        g.b_hh += ws.db
        return self.input_grads(ws, p, g, x, idx, need_dx)
