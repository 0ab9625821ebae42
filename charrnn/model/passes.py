"""The passes of :class:`charrnn.model.network.Model`: its per-shape buffers, the forward
and backward pass through the layers and the head, and the loss (the part of the model
that runs the kernels; the network and its parameters are in charrnn.model.network).

Dimension letters as in charrnn.model.network: B batch, T time, H hidden, V vocab,
E embedding, L layers, N = T*B.
"""
from __future__ import annotations

import numpy as np

from ..kernels import runtime

_WORKSPACES_KEPT = 3    # (B, T) shapes whose buffers stay allocated (train, eval, tail)


class _Buffers:
    """Model-level buffers for one (B, T) shape, plus the layers' workspaces."""


class ModelPasses:
    """Buffers, forward, backward and loss (a part of the Model class)."""

    # ------------------------------------------------------------------ buffers
    def _get_buffers(self, B: int, T: int) -> _Buffers:
        chunk = min(self.recompute_steps, T) if self.recompute_steps > 0 else 0
        key = (B, T, chunk)
        buf = self._buffers.get(key)
        if buf is not None:
            self._buffers.move_to_end(key)
            return buf
        c, dt = self.config, self.dtype
        N, H, V, E, L = T * B, c.hidden_size, c.vocab_size, c.embed_size, c.num_layers
        buf = _Buffers()
        buf.idx = np.empty((T, B), np.int64)                  # (T, B) input ids
        buf.tgt = np.empty((T, B), np.int64)                  # (T, B) target ids
        if E > 0:
            buf.x0 = np.empty((N, E), dt)                     # (N, E) embedded input
            buf.zero_e = np.zeros((E,), dt)                   # (E,) no bias on the gather
        # inputs of layers 1..L-1 and of the head, dropped out (xin), and the residual
        # sums (y): allocated only for a model that has dropout or residual connections
        buf.xin = ([np.empty((T, B, H), dt) for _ in range(L)]  # (T, B, H) each
                   if c.dropout > 0 else None)
        buf.y = ([np.empty((T, B, H), dt) for _ in range(L)]    # (T, B, H) each
                 if c.residual else None)
        buf.logits = np.empty((N, V), dt)                     # (N, V)
        buf.dlogits = buf.logits         # (N, V) the loss writes the gradient over them
        buf.nll = np.empty((N,), np.float64)                  # (N,) per-position loss
        buf.dy = None                                         # (N, H), first backward
        buf.wp_head = buf.wp_head_b = None                    # head weights, packed
        buf.dw_head = np.empty((V, H), dt)                    # (V, H)
        buf.db_head = np.empty((V,), dt)                      # (V,)
        # shared by the layers, which run one after another: the weight-gradient scratch,
        # the packed weights (LSTM 2x512: 4 MB less; 3x512: 8 MB) and, when recomputing,
        # the chunk-sized gate buffers
        scratch = np.empty(max(layer.scratch_size() for layer in self._layers), dt)
        packs = np.empty(max(layer.pack_size(dt, chunk) for layer in self._layers), dt)
        steps = (np.empty(max(layer.chunk_store_size(B, chunk) for layer in self._layers), dt)
                 if chunk else None)
        buf.layers = [layer.workspace(B, T, dt, scratch, packs, chunk, steps)
                      for layer in self._layers]
        self._buffers[key] = buf
        while len(self._buffers) > _WORKSPACES_KEPT:
            self._buffers.popitem(last=False)
        return buf

    # ------------------------------------------------------------------ passes
    def _run_layers(self, order: list[int], T: int, work) -> None:
        """``work(k, 0, T)`` for every layer k in ``order``, one after another.  Each
        layer's time loop runs on all of numba's threads, which split the batch
        (charrnn.kernels.steps).  (Until 2026-11-30 the layers of a training pass ran at
        the same time in a pipeline of layer threads over chunks of steps; with the
        batch split, measured 15-20% faster at every size, it was removed.)"""
        for k in order:
            work(k, 0, T)

    def _forward(self, inputs, state, masks, head: bool = True):
        """Runs the layers and (``head``) the head; leaves everything backward needs in
        buffers."""
        from ..kernels import cells as K
        from ..kernels import packed as P
        from ..kernels.matmul import matmul

        B, T = inputs.shape
        c = self.config
        N, H, L = T * B, c.hidden_size, c.num_layers
        buf = self._get_buffers(B, T)
        buf.idx[...] = inputs.T                                # (T, B)
        idx = buf.idx.reshape(N)                               # (N,)
        if c.embed_size > 0:
            K._gather_rows(self.params["embedding.weight"], idx, buf.zero_e, buf.x0)
        # Where each layer reads its input (x3, (T, B, H)) and writes its output (out):
        # x3 of layer k is the output of layer k-1, dropped out into xin[k]; the output is
        # h (the layer's hs[1:]) plus, with residual connections, the input.
        out, x3 = [], [None]
        for k in range(L):
            if k > 0:
                x3.append(buf.xin[k] if masks is not None else out[k - 1])
            res = c.residual and k > 0
            out.append(buf.y[k] if res else buf.layers[k].hs[1:])    # (T, B, H)
        buf.layer_in = [(buf.x0 if c.embed_size > 0 else None)] + \
            [x.reshape(N, H) for x in x3[1:]]                  # (N, I) each

        def work(k: int, t0: int, t1: int) -> None:
            if t0 == 0:                  # packs the layer's weights into the shared store
                self._layers[k].forward_start(buf.layers[k], self._lp[k],
                                              tuple(s[k] for s in state))
            if k > 0 and masks is not None:
                np.multiply(out[k - 1][t0:t1], masks[k - 1][t0:t1], out=x3[k][t0:t1])
            ws = buf.layers[k]
            self._layers[k].run_forward(ws, self._lp[k], buf.layer_in[k], idx, t0, t1)
            if c.residual and k > 0:
                np.add(ws.hs[1 + t0:1 + t1], x3[k][t0:t1], out=out[k][t0:t1])

        self._run_layers(list(range(L)), T, work)
        y = out[-1]
        if masks is not None:
            np.multiply(y, masks[-1], out=buf.xin[0])
            y = buf.xin[0]
        buf.head_in = y.reshape(N, H)                          # (N, H)
        if not head:
            return buf
        w_head = self.params["head.weight"]                    # (V, H)
        buf.wp_head = P.packed(w_head.T, buf.wp_head)          # (H, V) packed
        matmul(buf.head_in, buf.wp_head, buf.logits, bias=self.params["head.bias"],
               threads=runtime.numba_threads())
        return buf

    def _eval_log_probs(self, inputs, targets, state):
        """Eval mode: log p(targets) (B, T) float64 and the final state.  The layers run as
        in :meth:`_forward`; the head and the loss are one kernel over blocks of rows
        (:mod:`charrnn.kernels.head`), so the (N, V) logits are never stored."""
        from ..kernels import packed as P
        from ..kernels.head import head_log_probs

        B, T = inputs.shape
        buf = self._forward(inputs, state, None, head=False)
        buf.tgt[...] = targets.T                               # (T, B)
        buf.wp_head = P.packed(self.params["head.weight"].T, buf.wp_head)   # (H, V) packed
        lp = np.empty((B, T), np.float64)                      # (B, T)
        buf.head_scratch = head_log_probs(buf.head_in, buf.wp_head, self.params["head.bias"],
                                          buf.tgt.reshape(T * B), lp, runtime.numba_threads(),
                                          getattr(buf, "head_scratch", None))
        return lp, self._final_state(buf)

    def _final_state(self, buf) -> tuple:
        per_layer = [layer.final_state(ws) for layer, ws in zip(self._layers, buf.layers)]
        n = len(per_layer[0])
        return tuple(np.stack([s[i] for s in per_layer]) for i in range(n))  # (L, B, H)

    def _backward(self, buf, masks) -> None:
        from ..kernels import cells as K
        from ..kernels import packed as P
        from ..kernels.matmul import matmul

        c = self.config
        T, B = buf.idx.shape
        N, H, L = T * B, c.hidden_size, c.num_layers
        idx = buf.idx.reshape(N)
        if buf.dy is None:                                     # only training needs it
            buf.dy = np.empty((N, H), self.dtype)             # (N, H) grad of head input
        matmul(buf.dlogits.T, buf.head_in, buf.dw_head)
        self.grads["head.weight"] += buf.dw_head
        np.sum(buf.dlogits, axis=0, out=buf.db_head)
        self.grads["head.bias"] += buf.db_head
        buf.wp_head_b = P.packed(self.params["head.weight"], buf.wp_head_b)   # (V, H) packed
        matmul(buf.dlogits, buf.wp_head_b, buf.dy, threads=runtime.numba_threads())
        top = buf.dy.reshape(T, B, H)                          # (T, B, H)
        if masks is not None:
            top *= masks[-1]
        # dy[k] (T, B, H): the gradient reaching layer k's output; below the top layer it
        # is layer k+1's dx (plus the residual path, times the dropout mask), built in
        # place in layer k+1's dx buffer one chunk at a time.  Without residual paths, a
        # layer whose input is H wide writes its dx over its own dy (each step reads its
        # rows of dy_t before it writes dx_t, or dx is made after the loop), so all the
        # dy are one (N, H) buffer
        # (LSTM 2x512: 10 MB less; 3x512: 20 MB).  With them, dy[k] is still needed
        # after layer k's steps (for the residual sum) and each layer has its own.
        if not c.residual:
            for layer, ws in zip(self._layers, buf.layers):
                if layer.I == H:
                    ws.dx = buf.dy
        dy = [None] * L
        dy[L - 1] = top
        for k in range(L - 1, 0, -1):
            dy[k - 1] = self._layers[k].dx_buffer(buf.layers[k]).reshape(T, B, H)

        def work(k: int, t0: int, t1: int) -> None:
            # the layer's whole backward pass: it packs its weights into the shared store,
            # runs its steps (leaving dx, if any) and accumulates its weight gradients
            self._layers[k].run_backward(buf.layers[k], self._lp[k], self._lg[k], dy[k],
                                         buf.layer_in[k], idx, fresh=True)
            if k > 0:
                dx3 = dy[k - 1][t0:t1]                         # (t1-t0, B, H)
                if c.residual:
                    dx3 += dy[k][t0:t1]
                if masks is not None:
                    dx3 *= masks[k - 1][t0:t1]

        self._run_layers(list(range(L - 1, -1, -1)), T, work)
        if c.embed_size > 0:
            dx0 = buf.layers[0].dx                             # (N, E)
            K._scatter_add_rows(K.scatter_threads(dx0.shape[1], runtime.numba_threads()),
                                idx, dx0, self.grads["embedding.weight"])

    def _loss(self, buf, targets, want_grad: bool) -> float:
        from ..kernels import cells as K

        T, B = buf.idx.shape
        buf.tgt[...] = targets.T                               # (T, B)
        K._softmax_xent(buf.logits, buf.tgt.reshape(T * B), 1.0 / (T * B),
                        1 if want_grad else 0, buf.dlogits, buf.nll)
        return float(buf.nll.sum() / (T * B))


__all__ = ["ModelPasses"]
