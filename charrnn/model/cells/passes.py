"""Whole passes of a recurrent layer, over all T steps or chunk by chunk with the
gates recomputed (``charrnn train --low-memory``): :class:`ChunkedPasses`, a part of
:class:`charrnn.model.cells.Layer`.

Dimension letters: B batch, T time, H hidden, I layer input width, G gates, N = T*B.
"""
from __future__ import annotations

import copy

from ...kernels import cells as K
from ...kernels import runtime
from ...kernels.matmul import matmul
from .buffers import LayerParams, Workspace


class ChunkedPasses:
    """run_forward, run_backward and the recomputation (a part of
    :class:`charrnn.model.cells.Layer`)."""

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


__all__ = ["ChunkedPasses"]
