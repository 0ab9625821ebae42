"""The model's parameters in the layout of the generation kernel
(:mod:`charrnn.kernels.sample`): :func:`pack_weights` copies them once per sampler, and
:meth:`PackedWeights.pack_products` packs the matrices for the packed-weight product.

Dimension letters: L layers, H hidden, G gates, V vocab, P panels, NR panel width.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

@dataclass
class PackedWeights:
    """The model's parameters in the layout of the generation kernel (see there)."""

    cell: int               # charrnn.kernels.modes.Cell
    gru_before: bool
    relu: bool
    use_peep: bool
    residual: bool
    #: charrnn.kernels.sample.Weights (its fields say the shapes); the packed ones
    #: (pw_*) are None until :meth:`pack_products`
    arrays: tuple

    def options(self, product):
        """The kernel's CellOptions with product mode ``product`` (modes.Product)."""
        from ..kernels.sample import CellOptions

        return CellOptions(self.cell, self.gru_before, self.relu, self.use_peep,
                           self.residual, product)

    def weights(self):
        """The kernel's Weights (pack_products first)."""
        return self.arrays

    def pack_products(self, packed: bool) -> None:
        """Packs the weights for Product.PACKED (``packed``), else sets stand-ins."""
        from ..kernels.modes import Cell
        from ..kernels.packed import packed as pack
        from ..kernels.packed import packed_shape, panel_width

        w = self.arrays
        L, GH, H = w.w_hh.shape
        dt = w.w_hh.dtype
        if not packed:                      # (L, 1, 1, NR) and (1, 1, NR) stand-ins
            nr = panel_width(dt)
            stand_in = np.zeros((L, 1, 1, nr), dt)
            self.arrays = w._replace(pw_ih=stand_in, pw_hh=stand_in, pw_hn=stand_in,
                                     pw_head=np.zeros((1, 1, nr), dt))
            return

        def stack(ws):                      # [(K, N) views] -> (L, P, K, NR)
            out = np.zeros((L,) + packed_shape(*ws[0].shape, dt), dt)
            for k, m in enumerate(ws):
                pack(m, out[k])
            return out

        pw_ih = stack([w.w_ih[k].T for k in range(L)])
        if self.cell == Cell.GRU and self.gru_before:
            pw_hh = stack([w.w_hh[k][:2 * H].T for k in range(L)])
            pw_hn = stack([w.w_hh[k][2 * H:].T for k in range(L)])
        else:
            pw_hh = pw_hn = stack([w.w_hh[k].T for k in range(L)])
        self.arrays = w._replace(pw_ih=pw_ih, pw_hh=pw_hh, pw_hn=pw_hn,
                                 pw_head=pack(w.head_w.T))


def pack_weights(model) -> PackedWeights:
    """Copy ``model``'s parameters into the kernel's layout (in the model's dtype).

    Layer 0's input projection is tabulated per symbol in float64 and then rounded:
    one-hot input gives the columns of W_ih_l0, an embedding gives emb @ W_ih_l0^T."""
    from ..kernels.modes import Cell
    from ..kernels.sample import Weights

    cfg = model.config
    p = model.params
    dt = model.dtype
    L, H, G = cfg.num_layers, cfg.hidden_size, cfg.gates
    w0 = p["rnn.weight_ih_l0"].astype(np.float64)          # (G*H, I)
    if cfg.embed_size > 0:
        t0 = p["embedding.weight"].astype(np.float64) @ w0.T  # (V, G*H)
    else:
        t0 = w0.T.copy()                                    # (V, G*H)
    t0 += p["rnn.bias_ih_l0"]
    w_ih = np.zeros((L, G * H, H), dt)                      # (L, G*H, H)
    b_ih = np.zeros((L, G * H), dt)                         # (L, G*H)
    w_hh = np.empty((L, G * H, H), dt)                      # (L, G*H, H)
    b_hh = np.empty((L, G * H), dt)                         # (L, G*H)
    peep = np.zeros((L, 3, H), dt)                          # (L, 3, H)
    for k in range(L):
        if k > 0:
            w_ih[k] = p[f"rnn.weight_ih_l{k}"]
            b_ih[k] = p[f"rnn.bias_ih_l{k}"]
        w_hh[k] = p[f"rnn.weight_hh_l{k}"]
        b_hh[k] = p[f"rnn.bias_hh_l{k}"]
        if cfg.peepholes:
            peep[k] = p[f"rnn.weight_peephole_l{k}"]
    return PackedWeights(
        cell=Cell.of(cfg.cell), gru_before=cfg.gru_reset == "before",
        relu=cfg.nonlinearity == "relu", use_peep=bool(cfg.peepholes),
        residual=bool(cfg.residual),
        arrays=Weights(table0=np.ascontiguousarray(t0.astype(dt)), w_ih=w_ih, b_ih=b_ih,
                       w_hh=w_hh, b_hh=b_hh, peep=peep,
                       head_w=np.ascontiguousarray(p["head.weight"]),
                       head_b=np.ascontiguousarray(p["head.bias"]), pw_ih=None, pw_hh=None,
                       pw_hn=None, pw_head=None))


__all__ = ["PackedWeights", "pack_weights"]
