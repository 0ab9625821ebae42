"""Recurrent layers: the Python side of one layer's forward and backward pass.

Dimension letters: B batch, T time, H hidden, I layer input width (E, V or H), G gates,
N = T*B.  Activations are time-major, (T, B, .), so that one time step is a contiguous
(B, .) block.

A layer never owns parameters: ``forward``/``backward`` receive a :class:`LayerParams` of
views into the model's flat buffer (and the gradient views of the same shapes), and a
:class:`Workspace` of buffers allocated once per (B, T) shape by :meth:`Layer.workspace`.

The work of a layer, in every cell, is one time loop per pass
(:mod:`charrnn.kernels.steps`), run by numba's threads over ranges of batch rows:

* forward, per step and row range: the input projection x_t W_ih^T + b_ih (for one-hot
  input, a gather of rows of a transposed copy of W_ih, refreshed at every pass; for a
  wide dense input, made for all steps before the loop, see PER_STEP_BYTES), the
  recurrent product h_{t-1} W_hh^T, then ONE fused kernel
  (:mod:`charrnn.kernels.cells`) for the gates;
* backward, per step and row range: one fused gate-gradient kernel, then d(pre)_t W_ih
  (dx, the gradient of the layer input; for a wide dense input, after the loop) and
  d(pre)_t W_hh (for dh_{t-1});
* the products of a step go through the packed-weight kernel of
  :mod:`charrnn.kernels.packed`, from weights packed once per pass;
* after the loop, dW_hh and dW_ih as ONE product each over all T steps (numpy's BLAS,
  rows split between threads by :func:`charrnn.kernels.matmul.matmul`) and the bias gradients
  as sums.

The GRU with ``gru_reset="before"`` needs r before its recurrent product for n, so it
does two products and two kernel calls per step (documented in :mod:`charrnn.model.cells.gru`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from ...kernels import runtime
from ...kernels import cells as K
from ...kernels.matmul import matmul
from ...kernels.packed import packed, packed_shape

#: Where a dense-input layer (every layer but a one-hot first one) makes its input
#: projection x_t W_ih^T + b_ih and its input gradient d(pre)_t W_ih: each step for its
#: rows, inside the time loop next to the recurrent product, while W_ih and W_hh
#: together take at most this many bytes (they stay in a core's cache as the loop streams
#: both every step); above it, each as ONE product over all the steps of the pass, rows
#: shared between threads, before (after) the loop, which then streams only W_hh.  The
#: numbers are the same bits either way (the same chain of fused multiply-adds per
#: element).  Measured on an Intel Xeon (2 cores, 2 MB L2 each), LSTM layer 1 forward,
#: B=T=50: H=256, 10.7 ms per-step -> 4.1 + 5.5 ms whole-pass; H=512 43.5 -> 18.3 + 22.6
#: ms; end to end (benchmarks/_worker.py, alternating runs, +-3% noise) training 2x256
#: +3-4%, 2x512 +3%, evaluation 2x256 +2%, but training 2x128 -3% (both weights 512 KB).
PER_STEP_BYTES = 512 * 1024

#: fewest batch rows a thread of a time loop gets (each thread streams all of W_hh per
#: step, so a thread with very few rows would mostly move weights)
ROWS_PER_THREAD = 8

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


class Layer:
    """Shared machinery of the three cells; subclasses implement the time loop."""

    #: number of state arrays (LSTM: h and c; GRU and RNN: h)
    n_state = 1
    #: the state sequences (T+1, B, H), kept whole when recomputing
    STATE_BUFFERS = ("hs",)

    def __init__(self, cfg, index: int):
        self.index = index
        self.H = cfg.hidden_size
        self.G = cfg.gates
        self.V = cfg.vocab_size
        self.onehot = index == 0 and cfg.embed_size == 0
        self.I = (cfg.input_size if index == 0 else cfg.hidden_size)

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

    def _pack_forward(self, ws: Workspace, p: LayerParams) -> None:
        packed(p.w_hh.T, ws.pack_fwd["w_hh_t"])

    @staticmethod
    def _run(ws: Workspace, steps, rows, *args) -> None:
        """Runs a time loop of :mod:`charrnn.kernels.steps`: ``steps(nth, *args)`` over
        ``nth`` row ranges of the batch in numba's threads, or ``rows(0, B, *args)`` in
        this thread (with one thread, or for a batch too small to give each thread
        ROWS_PER_THREAD rows)."""
        nth = Layer._row_threads(ws.B)
        if nth > 1:
            steps(nth, *args)
        else:
            rows(0, ws.B, *args)

    # ------------------------------------------------------------------ helpers
    def _input_args(self, ws: Workspace, p: LayerParams, x, idx, t0: int, t1: int) -> tuple:
        """(inp, x (T, B, I), packed W_ih^T, b_ih, idx (T, B), W_ih^T (V, G*H)) for the
        forward time loops over steps t0..t1-1.  inp = 2, one-hot input: each step
        gathers rows of the transposed copy of W_ih by token id, plus b_ih.  Dense input:
        the projection x_t W_ih^T + b_ih is made by each step for its rows (inp = 1),
        or for all the steps here first, as ONE product with the rows shared between
        threads (inp = 0), see :data:`PER_STEP_BYTES`.  The arrays a mode does not read
        are stand-ins of the same types."""
        ids = idx.reshape(ws.T, ws.B)                # (T, B)
        if self.onehot:
            return 2, ws.xp, ws.pack_fwd["w_hh_t"], p.b_ih, ids, ws.w_t
        x3 = x.reshape(ws.T, ws.B, self.I)           # (T, B, I)
        if self.per_step_inputs(x3.dtype):
            return 1, x3, ws.pack_fwd["w_ih_t"], p.b_ih, ids, ws.dh_mm
        if t1 > t0:
            matmul(x3[t0:t1].reshape(-1, self.I), ws.pack_fwd["w_ih_t"],
                   ws.xp[t0:t1].reshape(-1, self.G * self.H), bias=p.b_ih,
                   threads=runtime.numba_threads())
        if ws.seq_packs:                # the recurrent weights' turn (sequential_packs)
            self._pack_forward(ws, p)
        return 0, x3, ws.pack_fwd["w_ih_t"], p.b_ih, ids, ws.dh_mm

    def per_step_inputs(self, dtype) -> bool:
        """Whether the time loops make the dense input products step by step."""
        size = self.G * self.H * (self.I + self.H) * np.dtype(dtype).itemsize
        return size <= PER_STEP_BYTES

    def _dx_args(self, ws: Workspace) -> tuple:
        """(dense, dx (T, B, I), packed W_ih) for the backward time loops; with dense
        they compute dx_t = d(pre)_t W_ih for their rows right after each step's
        gradients, else :meth:`_dx_after` makes it after the loop (PER_STEP_BYTES)."""
        if self.onehot or not self.per_step_inputs(ws.xp.dtype):
            return 0, ws.xp, ws.pack_bwd["w_hh"]
        return 1, self.dx_buffer(ws).reshape(ws.T, ws.B, self.I), ws.pack_bwd["w_ih"]

    def _dx_after(self, ws: Workspace, p: LayerParams, t0: int, t1: int) -> None:
        """dx of steps t0..t1-1 = d(pre) W_ih as one product (dense input, weights above
        PER_STEP_BYTES), once the backward steps have left d(pre) in ws.xp."""
        if self.onehot or self.per_step_inputs(ws.xp.dtype) or t1 <= t0:
            return
        if ws.seq_packs:                # the input weights' turn (sequential_packs)
            packed(p.w_ih, ws.pack_bwd["w_ih"], threads=runtime.numba_threads())
        B = ws.B
        matmul(ws.xp[t0:t1].reshape(-1, self.G * self.H), ws.pack_bwd["w_ih"],
               self.dx_buffer(ws)[t0 * B:t1 * B], threads=runtime.numba_threads())

    def recurrent_grads(self, ws: Workspace, g: LayerParams) -> None:
        """dW_hh = sum_t dpre_t^T h_{t-1} as one product (dpre, the pre-activation
        gradients, left in ws.xp by the backward steps); the bias gradients are
        :meth:`backward_finish`'s."""
        T, B, H = ws.T, ws.B, self.H
        dhh2 = ws.xp.reshape(T * B, self.G * H)       # (N, G*H)
        hprev = ws.hs[:T].reshape(T * B, H)           # (N, H)
        self._grad_product(ws, dhh2.T, hprev, ws.dw_hh, g.w_hh)

    @staticmethod
    def _grad_product(ws: Workspace, a, b, scratch, g) -> None:
        """g += a @ b (a weight gradient), the product by :func:`charrnn.kernels.matmul.matmul`
        straight into ``g`` when ``ws.fresh`` (g is zero: the same bits, and the scratch
        is never touched, LSTM 2x512: 4 MB less resident), else into ``scratch`` first."""
        if ws.fresh:
            matmul(a, b, g)
        else:
            matmul(a, b, scratch)
            g += scratch

    def final_state(self, ws: Workspace) -> tuple:
        return (ws.hs[ws.T],)

    # ------------------------------------------------------------------ interface
    # A forward pass is forward_start, then run_forward (forward_steps over all T steps,
    # or chunk by chunk when recomputing); a backward pass is run_backward:
    # backward_start, backward_steps, dx (the dy of the layer below) and backward_finish
    # (the weight gradients), over all T steps or chunk by chunk from the last.  The
    # model starts a layer's pass only when the pass of the layer before it is done, so
    # the layers may share one packed-weight store.
    def forward_start(self, ws: Workspace, p: LayerParams, state: tuple) -> None:
        """Sets h_0 (and c_0) from ``state`` (tuple of (B, H)) and refreshes the copies
        of the weights the steps read (packed, :mod:`charrnn.kernels.packed`)."""
        self._pack_inputs(ws, p)
        ws.hs[0] = state[0]

    def _pack_inputs(self, ws: Workspace, p: LayerParams) -> None:
        """The forward steps' copies of W_ih (transposed, or packed) and of W_hh."""
        if self.onehot:
            np.copyto(ws.w_t, p.w_ih.T)
        else:
            packed(p.w_ih.T, ws.pack_fwd["w_ih_t"])
        if not ws.seq_packs:            # else after the projection (_input_args)
            self._pack_forward(ws, p)

    def forward_steps(self, ws: Workspace, p: LayerParams, x, idx, t0: int, t1: int) -> None:
        """Steps t0..t1-1 (h_t into ws.hs[t+1]); x rows of steps t0..t1-1 must be ready."""
        raise TypeError(f"{type(self).__name__} does not define forward_steps")

    def backward_start(self, ws: Workspace, p: LayerParams) -> None:
        """Zero gradient flowing in from beyond step T; W_hh and W_ih packed for the
        steps and the input gradient (and, to recompute, for the forward steps)."""
        ws.dh_next = ws.zeros
        packed(p.w_hh, ws.pack_bwd["w_hh"], threads=runtime.numba_threads())
        if not self.onehot and not ws.seq_packs:    # else after the steps (_dx_after)
            packed(p.w_ih, ws.pack_bwd["w_ih"], threads=runtime.numba_threads())
        if ws.chunk:
            self._pack_inputs(ws, p)

    def backward_steps(self, ws: Workspace, p: LayerParams, dy, t0: int, t1: int) -> None:
        """Steps t1-1 down to t0, given dy (T, B, H) (rows t0..t1-1 ready): the
        pre-activation gradients go into ws.xp; the gradient reaching h_{t0-1} through
        the recurrence is kept for the next chunk."""
        raise TypeError(f"{type(self).__name__} does not define backward_steps")

    # ------------------------------------------------------------------ whole passes
    # Recomputation (ws.chunk > 0, ``charrnn train --low-memory``): the forward pass keeps
    # only the state sequences (h, and c for the LSTM), writing each chunk's gates into
    # the one chunk-sized buffer; the backward pass walks the chunks from the last,
    # rebuilds the chunk's gates (:meth:`recompute`), then runs the backward steps and
    # the chunk's share of the weight gradients.  Memory of the gates drops from T to
    # chunk steps; the price is the forward products once more, but as a few large
    # products instead of a loop of small ones (every h_{t-1} of the chunk is kept).
    def _view(self, ws: Workspace, t0: int, t1: int) -> Workspace:
        """Steps t0..t1-1 of ``ws`` as a workspace of its own (T = t1 - t0): the state
        sequences and dx sliced, the step buffers the chunk-sized ones."""
        v = copy.copy(ws)
        v.T, v.toff = t1 - t0, ws.toff + t0
        for name in self.step_buffers():
            setattr(v, name, getattr(ws, name)[:t1 - t0])
        for name in self.STATE_BUFFERS:
            setattr(v, name, getattr(ws, name)[t0:t1 + 1])
        if getattr(ws, "dx", None) is not None:
            v.dx = ws.dx[t0 * ws.B:t1 * ws.B]
        return v

    def _chunks(self, ws: Workspace, t0: int, t1: int):
        return [(a, min(t1, a + ws.chunk)) for a in range(t0, t1, ws.chunk)]

    @staticmethod
    def _rows(a, t0: int, t1: int, B: int):
        return None if a is None else a[t0 * B:t1 * B]

    def run_forward(self, ws: Workspace, p: LayerParams, x, idx, t0: int, t1: int) -> None:
        """Forward steps t0..t1-1, x (N, I) or None and idx (N,) flat, chunk by chunk when
        recomputing."""
        if not ws.chunk:
            self.forward_steps(ws, p, x, idx, t0, t1)
            return
        for a, b in self._chunks(ws, t0, t1):
            self.forward_steps(self._view(ws, a, b), p, self._rows(x, a, b, ws.B),
                               idx[a * ws.B:b * ws.B], 0, b - a)

    def run_backward(self, ws: Workspace, p: LayerParams, g: LayerParams, dy, x, idx,
                     fresh: bool = False) -> None:
        """The whole backward pass of the layer: dx (when the input is dense) and the
        weight gradients accumulated into ``g``; dy (T, B, H).  ``fresh``: the caller
        has zeroed ``g`` for this pass, so a pass over all T steps at once (not chunk by
        chunk) may write its weight-gradient products straight into it."""
        T, B = ws.T, ws.B
        self.backward_start(ws, p)
        ws.fresh = fresh and not ws.chunk
        if not ws.chunk:
            self.backward_steps(ws, p, dy, 0, T)
            self._dx_after(ws, p, 0, T)
            self.backward_finish(ws, p, g, x, idx)
            return
        if not self.onehot:
            self.dx_buffer(ws)
        for a, b in reversed(self._chunks(ws, 0, T)):
            v = self._view(ws, a, b)
            xr, ir = self._rows(x, a, b, B), idx[a * B:b * B]
            self.recompute(v, p, xr, ir)                        # the chunk's gates again
            self.backward_steps(v, p, dy[a:b], 0, b - a)
            self._dx_after(v, p, 0, b - a)
            ws.dh_next = v.dh_next
            self.backward_finish(v, p, g, xr, ir)

    def recompute(self, v: Workspace, p: LayerParams, x, idx) -> None:
        """The step buffers of chunk view ``v`` as its forward steps left them, from the
        kept states: the input projection of all its steps at once, then, in blocks of
        about RECOMPUTE_ROWS rows (all their h_{t-1} are known, so the steps of a block
        are independent rows), the recurrent product and the cell's own forward step
        kernel (:meth:`_recompute_block`), the state it writes going to scratch.  The
        same kernels and the same chain of multiply-adds per element as the time loop:
        the same bits."""
        T, B = v.T, v.B
        xp2 = v.xp.reshape(T * B, self.G * self.H)               # (T*B, G*H)
        if self.onehot:
            K._gather_rows(v.w_t, idx, p.b_ih, xp2)
        else:
            matmul(x.reshape(T * B, self.I), v.pack_fwd["w_ih_t"], xp2, bias=p.b_ih,
                   threads=runtime.numba_threads())
        steps = self.recompute_rows(B, v.chunk) // B
        for s0 in range(0, T, steps):
            self._recompute_block(v, p, s0, min(T, s0 + steps))

    def _recompute_block(self, v: Workspace, p: LayerParams, s0: int, s1: int) -> None:
        """Rebuild steps s0..s1-1 of the step buffers (the input projection is there)."""
        raise TypeError(f"{type(self).__name__} does not define _recompute_block")

    @staticmethod
    def _row_threads(rows: int) -> int:
        """Threads for ``rows`` independent batch rows: each gets ROWS_PER_THREAD."""
        return max(1, min(runtime.numba_threads(), rows // ROWS_PER_THREAD))

    def dx_buffer(self, ws: Workspace) -> np.ndarray:
        """ws.dx (N, I), the gradient of the layer input, allocated at first use (a model
        that only evaluates never needs it), unless the model has set it first.  It may
        be the layer's own dy (when I == H): every step reads its rows of dy_t before it
        writes the same rows of dx_t (charrnn.kernels.steps), or dx is made after the
        loop (:meth:`_dx_after`)."""
        if ws.dx is None:
            ws.dx = np.empty((ws.T * ws.B, self.I), ws.xp.dtype)    # (N, I)
        return ws.dx

    def backward_finish(self, ws: Workspace, p: LayerParams, g: LayerParams, x, idx) -> None:
        """Accumulates the weight and bias gradients into ``g`` once all steps are done.
        db_ih is the sum of the N rows of d(pre); with one-hot input the scatter has
        already added them up by token, so it is the sum of the V rows of dW_ih^T, not
        another pass over d(pre) (LSTM 2x128 training: the bias sums 0.72 -> 0.42 ms
        per batch)."""
        self.recurrent_grads(ws, g)
        T, B = ws.T, ws.B
        dxp2 = ws.xp.reshape(T * B, self.G * self.H)  # (N, G*H)
        if self.onehot:
            ws.dw_t.fill(0)
            K._scatter_add_rows(K.scatter_threads(dxp2.shape[1], runtime.numba_threads()),
                                idx, dxp2, ws.dw_t)
            g.w_ih += ws.dw_t.T
            np.sum(ws.dw_t, axis=0, out=ws.db)        # (V, G*H) -> (G*H,)
        else:
            self._grad_product(ws, dxp2.T, x, ws.dw_ih, g.w_ih)
            np.sum(dxp2, axis=0, out=ws.db)           # (N, G*H) -> (G*H,)
        g.b_ih += ws.db
        self.hh_bias_grads(ws, g)

    def hh_bias_grads(self, ws: Workspace, g: LayerParams) -> None:
        """db_hh, once ws.db holds db_ih: b_ih and b_hh enter every pre-activation as a
        sum, so their gradients are the same (not so in the GRU's n gate)."""
        g.b_hh += ws.db


def make_layer(cfg, index: int) -> Layer:
    """The layer object for layer ``index`` of a model with config ``cfg``."""
    if cfg.cell == "lstm":
        from .lstm import LSTMLayer
        return LSTMLayer(cfg, index)
    if cfg.cell == "gru":
        from .gru import GRULayer
        return GRULayer(cfg, index)
    from .rnn import RNNLayer
    return RNNLayer(cfg, index)


__all__ = ["Layer", "LayerParams", "Workspace", "make_layer"]
