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

import numpy as np

from ...kernels import cells as K
from ...kernels import runtime
from ...kernels.matmul import matmul
from ...kernels.modes import Inputs
from ...kernels.packed import packed
from ...kernels.steps import InputGrad, StepInput
from .buffers import RECOMPUTE_ROWS, LayerBuffers, LayerParams, Workspace
from .passes import ChunkedPasses

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


class Layer(LayerBuffers, ChunkedPasses):
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
    def _input_args(self, ws: Workspace, p: LayerParams, x, idx, t0: int, t1: int):
        """The :class:`~charrnn.kernels.steps.StepInput` of the forward time loops over
        steps t0..t1-1.  ONEHOT input: each step gathers rows of the transposed copy of
        W_ih by token id, plus b_ih.  Dense input: the projection x_t W_ih^T + b_ih is
        made by each step for its rows (DENSE), or for all the steps here first, as ONE
        product with the rows shared between threads (PROJECTED), see
        :data:`PER_STEP_BYTES`.  The arrays a mode does not read are stand-ins of the
        same types."""
        ids = idx.reshape(ws.T, ws.B)                # (T, B)
        if self.onehot:
            return StepInput(Inputs.ONEHOT, ws.xp, ws.pack_fwd["w_hh_t"], p.b_ih, ids, ws.w_t)
        x3 = x.reshape(ws.T, ws.B, self.I)           # (T, B, I)
        if self.per_step_inputs(x3.dtype):
            return StepInput(Inputs.DENSE, x3, ws.pack_fwd["w_ih_t"], p.b_ih, ids, ws.dh_mm)
        if t1 > t0:
            matmul(x3[t0:t1].reshape(-1, self.I), ws.pack_fwd["w_ih_t"],
                   ws.xp[t0:t1].reshape(-1, self.G * self.H), bias=p.b_ih,
                   threads=runtime.numba_threads())
        if ws.seq_packs:                # the recurrent weights' turn (sequential_packs)
            self._pack_forward(ws, p)
        return StepInput(Inputs.PROJECTED, x3, ws.pack_fwd["w_ih_t"], p.b_ih, ids, ws.dh_mm)

    def per_step_inputs(self, dtype) -> bool:
        """Whether the time loops make the dense input products step by step."""
        size = self.G * self.H * (self.I + self.H) * np.dtype(dtype).itemsize
        return size <= PER_STEP_BYTES

    def _dx_args(self, ws: Workspace) -> InputGrad:
        """InputGrad(dense, dx (T, B, I), packed W_ih) for the backward time loops; with dense
        they compute dx_t = d(pre)_t W_ih for their rows right after each step's
        gradients, else :meth:`_dx_after` makes it after the loop (PER_STEP_BYTES)."""
        if self.onehot or not self.per_step_inputs(ws.xp.dtype):
            return InputGrad(False, ws.xp, ws.pack_bwd["w_hh"])
        return InputGrad(True, self.dx_buffer(ws).reshape(ws.T, ws.B, self.I),
                         ws.pack_bwd["w_ih"])

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


__all__ = ["RECOMPUTE_ROWS", "Layer", "LayerParams", "Workspace", "make_layer"]
