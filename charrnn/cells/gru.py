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

from ..kernels import blas
from ..kernels import cells as K
from ..kernels import steps as S
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
    def forward_steps(self, ws: Workspace, p: LayerParams, x, idx, t0: int, t1: int) -> None:
        H = self.H
        self.project(ws, p, x, idx, t0, t1)
        xp, hs, gates, aux, w_hh_t = ws.xp, ws.hs, ws.gates, ws.aux, ws.w_hh_t  # w: (H, 3H)
        gemm = blas.gemm(xp.dtype)
        if gemm is not None:
            hh, hn = (ws.hrz, ws.hn) if self.before else (ws.hh, ws.hh)
            S._gru_forward_steps(gemm, self.before, t0, t1, xp, w_hh_t, p.b_hh, hs, gates,
                                 aux, hh, hn)
            return
        # the same steps, driven from Python
        if not self.before:
            for t in range(t0, t1):
                np.matmul(hs[t], w_hh_t, out=ws.hh)             # (B, 3H)
                K._gru_forward_step(0, xp[t], ws.hh, p.b_hh, hs[t], hs[t + 1], gates[t], aux[t])
            return
        w_rz_t = w_hh_t[:, :2 * H]                  # (H, 2H) view, row stride 3H
        w_n_t = w_hh_t[:, 2 * H:]                   # (H, H) view, row stride 3H
        for t in range(t0, t1):
            np.matmul(hs[t], w_rz_t, out=ws.hrz)                # (B, 2H)
            K._gru_forward_step(1, xp[t], ws.hrz, p.b_hh, hs[t], hs[t + 1], gates[t], aux[t])
            np.matmul(aux[t], w_n_t, out=ws.hn)                 # (B, H)
            K._gru_forward_step(2, xp[t], ws.hn, p.b_hh, hs[t], hs[t + 1], gates[t], aux[t])

    def backward_start(self, ws: Workspace) -> None:
        super().backward_start(ws)
        ws.dh_dir.fill(0)

    def backward_steps(self, ws: Workspace, p: LayerParams, dy, t0: int, t1: int) -> None:
        H = self.H
        dxp, dhh = ws.xp, ws.dhh                    # (T, B, 3H) each; dxp reuses xp
        gemm = blas.gemm(dxp.dtype)
        if gemm is not None:
            drh = ws.drh if self.before else ws.dh_mm
            S._gru_backward_steps(gemm, self.before, t0, t1, dy, ws.dh_next, ws.dh_mm,
                                  ws.dh_dir, ws.gates, ws.aux, ws.hs, dxp, dhh, p.w_hh, drh)
            if t0 > 0:
                ws.dh_next = ws.dh_mm
            return
        # the same steps, driven from Python
        if not self.before:
            for t in range(t1 - 1, t0 - 1, -1):
                K._gru_backward_step(0, dy[t], ws.dh_next, ws.dh_dir, ws.gates[t], ws.aux[t],
                                     ws.hs[t], dxp[t], dhh[t])
                if t > 0:
                    np.matmul(dhh[t], p.w_hh, out=ws.dh_mm)     # (B, H)
                    ws.dh_next = ws.dh_mm
            return
        w_rz = p.w_hh[:2 * H]                       # (2H, H) view
        w_n = p.w_hh[2 * H:]                        # (H, H) view
        for t in range(t1 - 1, t0 - 1, -1):
            K._gru_backward_step(1, dy[t], ws.dh_next, ws.dh_dir, ws.gates[t], ws.aux[t],
                                 ws.hs[t], dxp[t], dhh[t])
            np.matmul(dhh[t][:, 2 * H:], w_n, out=ws.drh)       # (B, H)
            K._gru_backward_step(2, dy[t], ws.drh, ws.dh_dir, ws.gates[t], ws.aux[t],
                                 ws.hs[t], dxp[t], dhh[t])
            if t > 0:
                np.matmul(dhh[t][:, :2 * H], w_rz, out=ws.dh_mm)  # (B, H)
                ws.dh_next = ws.dh_mm

    def recurrent_grads(self, ws: Workspace, g: LayerParams) -> None:
        """dW_hh, db_hh from dhh; with reset "before", dW_hr and dW_hz pair with h_{t-1}
        and dW_hn with r * h_{t-1} (kept in aux)."""
        T, B, H = ws.T, ws.B, self.H
        dhh2 = ws.dhh.reshape(T * B, 3 * H)         # (N, 3H)
        hprev = ws.hs[:T].reshape(T * B, H)         # (N, H)
        if not self.before:
            np.matmul(dhh2.T, hprev, out=ws.dw_hh)
        else:
            np.matmul(dhh2[:, :2 * H].T, hprev, out=ws.dw_hh[:2 * H])
            np.matmul(dhh2[:, 2 * H:].T, ws.aux.reshape(T * B, H), out=ws.dw_hh[2 * H:])
        g.w_hh += ws.dw_hh
        np.sum(dhh2, axis=0, out=ws.db)
        g.b_hh += ws.db
