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

from ...kernels import runtime
from ...kernels import steps as S
from ...kernels.cells import GruCell, GruOut
from ...kernels.matmul import matmul
from ...kernels.modes import GruStep
from ...kernels.packed import packed, packed_shape
from . import Layer, LayerParams, Workspace


class GRULayer(Layer):

    def __init__(self, cfg, index: int):
        super().__init__(cfg, index)
        self.before = cfg.gru_reset == "before"

    def _workspace(self, ws: Workspace, B: int, T: int, dtype) -> None:
        H = self.H
        ws.dh_dir = np.empty((B, H), dtype)         # (B, H) dL/dh_{t-1} outside the product
        if self.before:
            ws.hrz = np.empty((B, 2 * H), dtype)    # (B, 2H) h_{t-1} W_hrz^T
            ws.hn = np.empty((B, H), dtype)         # (B, H) (r * h_{t-1}) W_hn^T
            ws.drh = np.empty((B, H), dtype)        # (B, H) dL/d(r * h_{t-1})
        else:
            ws.hh = np.empty((B, 3 * H), dtype)     # (B, 3H) h_{t-1} W_hh^T

    def step_buffers(self) -> dict[str, int]:
        H = self.H
        return {**super().step_buffers(),
                "gates": 3 * H,                     # r, z, n after activation
                "aux": H,                           # W_hn h + b_hn, or r * h
                "dhh": 3 * H}                       # d(recurrent product)

    def recompute_buffers(self) -> dict[str, int]:
        H = self.H
        if self.before:   # h W_hrz^T, (r * h) W_hn^T, h_t
            return {"rhh": 2 * H, "rhn": H, "rh": H}
        return {"rhh": 3 * H, "rh": H}                      # h W_hh^T, h_t

    # Kept for backward: h for T+1 steps, 3 gates and one auxiliary (B, H) array for T
    # steps: ((T+1) + 4T) * B * H * s bytes; B=50, T=50, H=256, float32:
    # 251 * 50 * 256 * 4 = 12.9 MB per layer (plus the (T, B, 3H) projection buffer,
    # 7.7 MB, reused for the pre-activation gradients, and 7.7 MB for dhh in backward).
    def _packed_shapes(self, dtype) -> tuple[dict, dict]:
        """With reset "before", W_hh^T's r, z columns (H, 2H) and its n columns (H, H)
        are packed apart (two products per step)."""
        fwd, bwd = super()._packed_shapes(dtype)
        if self.before:
            H = self.H
            fwd["w_hh_t"] = packed_shape(H, 2 * H, dtype)
            fwd["w_hn_t"] = packed_shape(H, H, dtype)
        return fwd, bwd

    def _pack_forward(self, ws: Workspace, p: LayerParams) -> None:
        H = self.H
        w_t = p.w_hh.T                              # (H, 3H) view
        if not self.before:
            packed(w_t, ws.pack_fwd["w_hh_t"])
            return
        packed(w_t[:, :2 * H], ws.pack_fwd["w_hh_t"])
        packed(w_t[:, 2 * H:], ws.pack_fwd["w_hn_t"])

    def _cell(self, ws: Workspace, p: LayerParams) -> GruCell:
        wp_n = ws.pack_fwd["w_hn_t" if self.before else "w_hh_t"]
        return GruCell(self.before, ws.pack_fwd["w_hh_t"], wp_n, ws.pack_bwd["w_hh"], p.b_hh)

    def _scratch(self, ws: Workspace) -> S.GruScratch:
        if self.before:
            return S.GruScratch(ws.hrz, ws.hn, ws.drh)
        return S.GruScratch(ws.hh, ws.hh, ws.dh_mm)     # hn and drh: stand-ins

    @staticmethod
    def _saved(ws: Workspace) -> S.GruSaved:
        return S.GruSaved(ws.xp, ws.hs, ws.gates, ws.aux)

    def forward_steps(self, ws: Workspace, p: LayerParams, x, idx, t0: int, t1: int) -> None:
        src = self._input_args(ws, p, x, idx, t0, t1)
        self._run(ws, S._gru_forward_steps, S._gru_forward_rows, S.Span(t0, t1, ws.toff),
                  src, self._cell(ws, p), self._saved(ws), self._scratch(ws))

    def _recompute_block(self, v: Workspace, p: LayerParams, s0: int, s1: int) -> None:
        H, R = self.H, (s1 - s0) * v.B
        nth, th = self._row_threads(R), runtime.numba_threads()
        xp = v.xp[s0:s1].reshape(R, 3 * H)                          # (R, 3H)
        hprev = v.hs[s0:s1].reshape(R, H)                           # (R, H)
        gates = v.gates[s0:s1].reshape(R, 3 * H)                    # (R, 3H)
        aux = v.aux[s0:s1].reshape(R, H)                            # (R, H)
        hh = v.rhh[:R]                                              # (R, 3H) or (R, 2H)
        matmul(hprev, v.pack_fwd["w_hh_t"], hh, threads=th)
        mode = GruStep.BEFORE_RZ if self.before else GruStep.AFTER
        out = GruOut(v.rh[:R], gates, aux)                          # h_t to scratch
        S._gru_gates_rows(nth, mode, p.b_hh, xp, hh, hprev, out)
        if not self.before:
            return
        matmul(aux, v.pack_fwd["w_hn_t"], v.rhn[:R], threads=th)
        S._gru_gates_rows(nth, GruStep.BEFORE_N, p.b_hh, xp, v.rhn[:R], hprev, out)

    def backward_start(self, ws: Workspace, p: LayerParams) -> None:
        super().backward_start(ws, p)
        ws.dh_dir.fill(0)

    def backward_steps(self, ws: Workspace, p: LayerParams, dy, t0: int, t1: int) -> None:
        # d(pre) (T, B, 3H) w.r.t. the projection goes over ws.xp, w.r.t. hh into ws.dhh
        grads = S.GruGrads(dy, ws.dh_next, ws.dh_mm, ws.dh_dir, ws.dhh)
        self._run(ws, S._gru_backward_steps, S._gru_backward_rows, S.Span(t0, t1, ws.toff),
                  self._dx_args(ws), self._cell(ws, p), self._saved(ws), grads,
                  self._scratch(ws))
        if t0 + ws.toff > 0:
            ws.dh_next = ws.dh_mm

    def recurrent_grads(self, ws: Workspace, g: LayerParams) -> None:
        """dW_hh from dhh; with reset "before", dW_hr and dW_hz pair with h_{t-1} and
        dW_hn with r * h_{t-1} (kept in aux)."""
        T, B, H = ws.T, ws.B, self.H
        dhh2 = ws.dhh.reshape(T * B, 3 * H)         # (N, 3H)
        hprev = ws.hs[:T].reshape(T * B, H)         # (N, H)
        if not self.before:
            self._grad_product(ws, dhh2.T, hprev, ws.dw_hh, g.w_hh)
        else:
            self._grad_product(ws, dhh2[:, :2 * H].T, hprev, ws.dw_hh[:2 * H], g.w_hh[:2 * H])
            self._grad_product(ws, dhh2[:, 2 * H:].T, ws.aux.reshape(T * B, H),
                               ws.dw_hh[2 * H:], g.w_hh[2 * H:])

    def hh_bias_grads(self, ws: Workspace, g: LayerParams) -> None:
        """db_hh, once ws.db holds db_ih: the r and z columns of dhh are those of dxp
        (the backward step kernel writes the same values to both), and so are the n
        columns with reset "before"; with "after", b_hn sits inside r * (.), and its
        gradient is the sum of dhh's own n columns."""
        if self.before:
            g.b_hh += ws.db
            return
        H2 = 2 * self.H
        g.b_hh[:H2] += ws.db[:H2]
        dn = ws.dhh.reshape(ws.T * ws.B, 3 * self.H)[:, H2:]     # (N, H)
        np.sum(dn, axis=0, out=ws.db[H2:])
        g.b_hh[H2:] += ws.db[H2:]
