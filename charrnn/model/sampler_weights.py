"""The model's parameters in the layout of the generation kernel
(:mod:`charrnn.kernels.sample`): :func:`pack_weights` copies them once per sampler,
:meth:`PackedWeights.pack_products` packs the matrices for the packed-weight product, and
:meth:`PackedWeights.reduce` stores them in int8 or bfloat16 (:mod:`charrnn.kernels.quant`).

Dimension letters: L layers, H hidden, G gates, V vocab, P panels, NR panel width.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError


@dataclass
class PackedWeights:
    """The model's parameters in the layout of the generation kernel (see there)."""

    cell: int               # charrnn.kernels.modes.Cell
    gru_before: bool
    relu: bool
    use_peep: bool
    residual: bool
    #: charrnn.kernels.sample.Weights (its fields say the shapes); the packed ones
    #: (pw_*) are None until :meth:`pack_products`, the reduced ones (q_*, s_*) until
    #: :meth:`reduce`
    arrays: tuple
    #: charrnn.kernels.modes.Precision of the matrices (set by :meth:`reduce`)
    precision: int = 0

    def options(self, product, threads: int = 1):
        """The kernel's CellOptions with product mode ``product`` (modes.Product) and
        ``threads`` threads for the row-split products."""
        from ..kernels.sample import CellOptions

        return CellOptions(self.cell, self.gru_before, self.relu, self.use_peep,
                           self.residual, product, self.precision, int(threads))

    def reduce(self, precision) -> None:
        """Stores W_ih (layers 1..), W_hh and the head's weight in ``precision``
        (modes.Precision; charrnn.kernels.quant): the float copies become stand-ins
        that keep only the shapes (:func:`_shape_only`).  FLOAT: stand-ins for the
        reduced ones."""
        from ..kernels.modes import Precision
        from ..kernels.quant import quantize_bf16, quantize_int8

        w = self.arrays
        self.precision = Precision(precision)
        L = w.w_hh.shape[0]
        if self.precision == Precision.FLOAT:
            self.arrays = w._replace(
                q_ih=np.zeros((L, 1, 1), np.int8), s_ih=np.ones((L, 1), np.float32),
                q_hh=np.zeros((L, 1, 1), np.int8), s_hh=np.ones((L, 1), np.float32),
                q_head=np.zeros((1, 1), np.int8), s_head=np.ones(1, np.float32))
            return
        mats = (w.w_ih, w.w_hh, w.head_w)
        if not all(np.isfinite(m).all() for m in mats):
            raise CheckpointError("the model's weights are not all finite numbers, so "
                                  "they cannot be stored in reduced precision")
        if self.precision == Precision.INT8:
            (q_ih, s_ih), (q_hh, s_hh), (q_hd, s_hd) = (quantize_int8(m) for m in mats)
        else:
            q_ih, q_hh, q_hd = (quantize_bf16(m) for m in mats)
            s_ih, s_hh, s_hd = (np.ones(m.shape[:-1], np.float32) for m in mats)
        self.arrays = w._replace(q_ih=q_ih, s_ih=s_ih, q_hh=q_hh, s_hh=s_hh, q_head=q_hd,
                                 s_head=s_hd, w_ih=_shape_only(w.w_ih),
                                 w_hh=_shape_only(w.w_hh), head_w=_shape_only(w.head_w))

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


def _shape_only(a: np.ndarray) -> np.ndarray:
    """A zero array of a's shape and dtype that the kernels never touch, so its pages
    are never made resident (numpy allocates zeros with calloc).  Contiguous, as the
    float weights are: an array of another layout would compile the whole generation
    kernel once more."""
    return np.zeros(a.shape, a.dtype)


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
                       pw_hn=None, pw_head=None, q_ih=None, s_ih=None, q_hh=None,
                       s_hh=None, q_head=None, s_head=None))


__all__ = ["PackedWeights", "pack_weights"]
