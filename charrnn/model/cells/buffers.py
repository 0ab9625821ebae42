"""The buffers of a recurrent layer: :class:`LayerParams` (views of its parameters),
:class:`Workspace` (buffers allocated once per (B, T) shape) and :class:`LayerBuffers`,
the part of :class:`charrnn.model.cells.Layer` that sizes and makes them.

Dimension letters: B batch, T time, H hidden, I layer input width, G gates, V vocab.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...kernels.packed import packed_shape

#: Rows (whole steps of the batch) that one product of the gate recomputation of
#: ``--low-memory`` takes at once (see :meth:`Layer.recompute`): its scratch buffers have
#: this many rows, and it is large enough for the products to run near BLAS speed.
RECOMPUTE_ROWS = 256


@dataclass
class LayerParams:
    """Views of one layer's parameters (or of their gradients)."""

    w_ih: np.ndarray            # (G*H, I)
    w_hh: np.ndarray            # (G*H, H)
    b_ih: np.ndarray            # (G*H,)
    b_hh: np.ndarray            # (G*H,)
    peep: np.ndarray | None = None   # (3, H), LSTM with peepholes only


class Workspace:
    """Buffers of one layer for one (B, T) shape; attributes are set by the layer.

    ``chunk`` > 0 (recomputation, see :class:`Layer`): the per-step buffers that backward
    can rebuild (:meth:`Layer.step_buffers`) hold only ``chunk`` steps, in ``store``;
    ``toff`` is the step of the sequence where the workspace's step 0 is (a chunk view's
    first step; 0 for the workspace itself)."""

    def __init__(self, B: int, T: int, dtype=np.float64, chunk: int = 0, store=None):
        self.B = B
        self.T = T
        self.chunk = chunk
        self.toff = 0
        #: True while a backward pass may write its weight-gradient products straight
        #: into the gradient views (they are zero and this pass is their only
        #: contribution, see Layer.run_backward); else each goes through the scratch
        self.fresh = False
        #: input and recurrent weights packed into one place in turns (set by
        #: Layer.workspace, see Layer.sequential_packs)
        self.seq_packs = False
        self._dtype = dtype
        self._store = store
        self._used = 0

    def steps(self, width: int) -> np.ndarray:
        """A (T, B, width) per-step buffer, or (chunk, B, width) from the chunk store."""
        if not self.chunk:
            return np.empty((self.T, self.B, width), self._dtype)
        return self.take((self.chunk, self.B, width))

    def take(self, shape: tuple) -> np.ndarray:
        """The next ``shape`` elements of the chunk store."""
        n = int(np.prod(shape))
        a = self._store[self._used:self._used + n].reshape(shape)
        self._used += n
        return a


class LayerBuffers:
    """Sizes and buffers of a layer (a part of :class:`charrnn.model.cells.Layer`)."""

    # ------------------------------------------------------------------ buffers
    def scratch_size(self) -> int:
        """Elements of the weight-gradient scratch this layer needs (see workspace)."""
        return self.G * self.H * max(self.H, 0 if self.onehot else self.I)

    def pack_size(self, dtype, chunk: int = 0) -> int:
        """Elements of the packed-weight store this layer needs (see workspace): the
        larger of the forward and backward sets, or both with recomputation; a set
        whose input and recurrent weights take turns (:meth:`sequential_packs`) needs
        the larger of the two only."""
        fwd, bwd = self._packed_shapes(dtype)
        seq = self.sequential_packs(dtype, chunk)
        sizes = [self._set_size(d, seq) for d in (fwd, bwd)]
        return sum(sizes) if chunk else max(sizes)

    def sequential_packs(self, dtype, chunk: int = 0) -> bool:
        """Whether a pass packs its input weights and its recurrent weights into the
        same place, one after the other: a dense input whose projection (forward) and
        gradient (backward) are each one product outside the time loop (PER_STEP_BYTES)
        in a pass over all the steps at once.  Forward packs W_ih^T, projects, then packs
        W_hh^T over it for the loop; backward packs W_hh for the loop, then W_ih over it
        for dx.  As many packs per pass as before; LSTM 2x512: 4 MB less resident."""
        return not chunk and not self.onehot and not self.per_step_inputs(dtype)

    @staticmethod
    def _set_size(shapes: dict, seq: bool) -> int:
        sizes = {name: int(np.prod(s)) for name, s in shapes.items()}
        if not seq:
            return sum(sizes.values())
        inp = sizes.pop("w_ih_t", 0) + sizes.pop("w_ih", 0)
        return max(inp, sum(sizes.values()))

    def step_buffers(self) -> dict[str, int]:
        """The per-step buffers (T, B, width), name -> width, that backward can rebuild
        (only a chunk of steps long when recomputing)."""
        return {"xp": self.G * self.H}      # projection, gates; d(pre) in backward

    def steps_width(self) -> int:
        """Values per batch row and step of all the :meth:`step_buffers`."""
        return sum(self.step_buffers().values())

    def recompute_buffers(self) -> dict[str, int]:
        """Scratch of :meth:`recompute`, name -> width, each (recompute_rows, width)."""
        return {}

    @staticmethod
    def recompute_rows(B: int, chunk: int) -> int:
        """Rows of one recomputing product: whole steps, about RECOMPUTE_ROWS."""
        return B * max(1, min(chunk, RECOMPUTE_ROWS // B))

    def chunk_store_size(self, B: int, chunk: int) -> int:
        """Elements of the chunk store of a recomputing workspace: the step buffers of
        ``chunk`` steps and the recomputation's scratch."""
        return (chunk * B * self.steps_width()
                + self.recompute_rows(B, chunk) * sum(self.recompute_buffers().values()))

    def workspace(self, B: int, T: int, dtype, scratch=None, pack_store=None, chunk: int = 0,
                  chunk_store=None) -> Workspace:
        """Buffers for one (B, T) shape.  ``scratch`` (at least :meth:`scratch_size`
        elements), shared by all the layers of a model, receives each weight-gradient
        product before it is added to the gradient when the product cannot go straight
        into it (see :meth:`_grad_product`; the pages of an array numpy allocates are
        only resident once written): backward_finish runs one layer after another, so
        one buffer serves them all (LSTM 2x512: 8 MB less).  ``pack_store``
        (at least :meth:`pack_size` elements) holds the packed weights; the layers of a
        model may share one, because a pass packs a layer's weights right before that
        layer's steps and the layers run one after another.  ``chunk`` > 0: recompute
        (see :meth:`run_backward`), the step buffers in ``chunk_store`` (at least
        chunk * B * :meth:`steps_width` elements, shared by the layers too)."""
        H, G, I = self.H, self.G, self.I
        chunk = min(chunk, T)
        if scratch is None:
            scratch = np.empty(self.scratch_size(), dtype)
        if pack_store is None:
            pack_store = np.empty(self.pack_size(dtype, chunk), dtype)
        if chunk and chunk_store is None:
            chunk_store = np.empty(self.chunk_store_size(B, chunk), dtype)
        ws = Workspace(B, T, dtype, chunk, chunk_store)
        for name, width in self.step_buffers().items():
            setattr(ws, name, ws.steps(width))       # (T, B, width) or (chunk, B, width)
        if chunk:
            R = self.recompute_rows(B, chunk)
            for name, width in self.recompute_buffers().items():
                setattr(ws, name, ws.take((R, width)))   # (R, width) recompute scratch
        ws.hs = np.empty((T + 1, B, H), dtype)       # (T+1, B, H) h_0 .. h_T
        ws.zeros = np.zeros((B, H), dtype)           # (B, H) dh coming from beyond step T
        ws.dh_mm = np.empty((B, H), dtype)           # (B, H) d(pre)_{t+1} W_hh
        ws.dw_hh = scratch[:G * H * H].reshape(G * H, H)   # (G*H, H) product before +=
        ws.db = np.empty((G * H,), dtype)            # (G*H,) bias sum before +=
        if self.onehot:
            ws.w_t = np.empty((self.V, G * H), dtype)    # (V, G*H) W_ih^T, gathered by row
            ws.dw_t = np.empty((self.V, G * H), dtype)   # (V, G*H) scatter target
        else:
            ws.dw_ih = scratch[:G * H * I].reshape(G * H, I)   # (G*H, I) before +=
            ws.dx = None                             # (N, I) dL/dx, at the first backward
        # Packed weights: the forward pass reads W_hh^T (and W_ih^T) packed, the backward
        # pass W_hh (and W_ih) packed.  A pass packs what it reads when it starts, so the
        # two sets share one buffer (LSTM 2x512: 12 MB less).
        # With recomputation backward reads both sets, one after the other in the store.
        # With sequential packs, a set's input weights start where its recurrent ones do.
        fwd, bwd = self._packed_shapes(dtype)
        ws.seq_packs = self.sequential_packs(dtype, chunk)
        ws.pack_store = pack_store[:self.pack_size(dtype, chunk)]
        ws.pack_fwd = self._views(ws.pack_store, fwd, ws.seq_packs)   # name -> packed
        at = self._set_size(fwd, ws.seq_packs) if chunk else 0
        ws.pack_bwd = self._views(ws.pack_store[at:], bwd, ws.seq_packs)
        self._workspace(ws, B, T, dtype)
        return ws

    def _packed_shapes(self, dtype) -> tuple[dict, dict]:
        """Shapes of the packed weights of the forward and of the backward pass."""
        H, GH, I = self.H, self.G * self.H, self.I
        fwd = {"w_hh_t": packed_shape(H, GH, dtype)}             # (H, G*H)
        bwd = {"w_hh": packed_shape(GH, H, dtype)}               # (G*H, H)
        if not self.onehot:
            fwd["w_ih_t"] = packed_shape(I, GH, dtype)           # (I, G*H)
            bwd["w_ih"] = packed_shape(GH, I, dtype)             # (G*H, I)
        return fwd, bwd

    @staticmethod
    def _views(store: np.ndarray, shapes: dict, seq: bool = False) -> dict:
        """name -> view of ``store``, one after another; with ``seq`` the input weights
        (w_ih_t, w_ih) at the start, over the others."""
        out, at = {}, 0
        for name, shape in shapes.items():
            n = int(np.prod(shape))
            if seq and name in ("w_ih_t", "w_ih"):
                out[name] = store[:n].reshape(shape)
                continue
            out[name] = store[at:at + n].reshape(shape)
            at += n
        return out

    def _workspace(self, ws: Workspace, B: int, T: int, dtype) -> None:
        """Cell-specific buffers."""


__all__ = ["RECOMPUTE_ROWS", "LayerBuffers", "LayerParams", "Workspace"]
