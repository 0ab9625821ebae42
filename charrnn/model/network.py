"""The character-level language model: L recurrent layers, a linear head, softmax.

Dimension letters (used in every shape comment of the numerical core):

====  ==========================================================
B     batch: parallel character streams
T     time: characters per stream in one call (the BPTT length)
H     hidden: width of every recurrent layer
V     vocab: number of symbols
E     embedding width (0 = one-hot input)
L     layers
G     gate blocks per layer (LSTM 4, GRU 3, RNN 1)
I     a layer's input width (layer 0: E or V; above: H)
N     T * B, all positions of a batch
====  ==========================================================

The public arrays are batch-first like PyTorch's ``batch_first=True`` (inputs and
targets (B, T), logits (B, T, V), states (L, B, H)); inside, activations are time-major
(T, B, .) so that one time step is a contiguous block.

Network (x_t the input symbol at step t, y_k the output of layer k)::

    x^0_t = embedding[x_t]  (E > 0)   or  one-hot(x_t)  (E = 0: a gather of W_ih's columns)
    h^k_t = cell_k(x^k_t, h^k_{t-1})                         (charrnn.model.cells)
    y^k   = h^k + x^k  if residual and k > 0, else h^k
    x^k   = drop(y^{k-1})                                    for k >= 1
    logits_t = head.weight drop(y^{L-1}_t) + head.bias
    loss  = mean over the B*T positions of -log softmax(logits_t)[target_t]   (nats)

``drop`` is inverted dropout (Zaremba et al. 2014): only on the connections between
layers and before the head, never on the recurrent ones or the input symbols, and only
in training mode; masks come from :meth:`Model.dropout_masks`.

All parameters live in ONE contiguous buffer ``flat`` (and their gradients in
``grad_flat``); ``params``/``grads`` are views with PyTorch's names and shapes, so
``{"rnn.weight_ih_l0": ...}`` loads into ``torch.nn.LSTM/GRU/RNN`` + ``nn.Linear``.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..config import ModelConfig
from ..errors import ConfigError, InputError
from .passes import ModelPasses


class Model(ModelPasses):
    """A stack of recurrent layers with a softmax head; see the module docstring."""

    def __init__(self, config: ModelConfig, flat: np.ndarray | None = None):
        config.validate()
        if config.vocab_size < 1:
            raise ConfigError("vocab_size must be >= 1 to build a model "
                              "(it is set from the vocabulary)")
        self.config = config
        self.vocab = None
        self.dtype = np.dtype(config.dtype)
        self._layout = self._make_layout(config)
        self.param_names = [name for name, _ in self._layout]
        self.num_params = int(sum(int(np.prod(shape)) for _, shape in self._layout))
        if flat is None:
            flat = np.zeros(self.num_params, self.dtype)          # (num_params,)
        elif flat.shape != (self.num_params,) or flat.dtype != self.dtype:
            raise ConfigError(f"flat parameter buffer must have shape ({self.num_params},) "
                              f"and dtype {self.dtype.name}")
        self.flat = np.ascontiguousarray(flat)
        self.grad_flat = np.zeros(self.num_params, self.dtype)   # (num_params,)
        self.params = self._views(self.flat)
        self.grads = self._views(self.grad_flat)
        from .cells import LayerParams, make_layer
        self._layers = [make_layer(config, k) for k in range(config.num_layers)]
        self._lp = [self._layer_views(self.params, k, LayerParams)
                    for k in range(config.num_layers)]
        self._lg = [self._layer_views(self.grads, k, LayerParams)
                    for k in range(config.num_layers)]
        self._buffers: OrderedDict = OrderedDict()
        #: 0: a training pass keeps every step's gate activations for backward (fastest).
        #: k > 0: it keeps only the states h (and c) and backward recomputes the gates k
        #: steps at a time (``charrnn train --low-memory``): the gate buffers shrink from
        #: T to k steps for one more forward pass of time.  Loss and states are the same
        #: bits; the weight gradients are summed chunk by chunk (last bits may differ).
        self.recompute_steps = 0

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _make_layout(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
        H, V, E, G = cfg.hidden_size, cfg.vocab_size, cfg.embed_size, cfg.gates
        layout: list[tuple[str, tuple[int, ...]]] = []
        if E > 0:
            layout.append(("embedding.weight", (V, E)))
        for k in range(cfg.num_layers):
            inp = cfg.input_size if k == 0 else H
            layout += [(f"rnn.weight_ih_l{k}", (G * H, inp)),
                       (f"rnn.weight_hh_l{k}", (G * H, H)),
                       (f"rnn.bias_ih_l{k}", (G * H,)),
                       (f"rnn.bias_hh_l{k}", (G * H,))]
            if cfg.peepholes:
                layout.append((f"rnn.weight_peephole_l{k}", (3, H)))
        layout += [("head.weight", (V, H)), ("head.bias", (V,))]
        return layout

    def _views(self, buf: np.ndarray) -> dict[str, np.ndarray]:
        views, off = {}, 0
        for name, shape in self._layout:
            n = int(np.prod(shape))
            views[name] = buf[off:off + n].reshape(shape)
            off += n
        return views

    def _layer_views(self, d: dict, k: int, cls):
        return cls(w_ih=d[f"rnn.weight_ih_l{k}"], w_hh=d[f"rnn.weight_hh_l{k}"],
                   b_ih=d[f"rnn.bias_ih_l{k}"], b_hh=d[f"rnn.bias_hh_l{k}"],
                   peep=d.get(f"rnn.weight_peephole_l{k}"))

    @classmethod
    def from_config(cls, cfg: ModelConfig, seed: int = 0) -> "Model":
        """A model with PyTorch's default initialisation, drawn from ``seed``.

        Every tensor is drawn in float64 from ``np.random.default_rng(seed)`` in the order
        of ``param_names`` and then cast, so the same seed gives bit-identical parameters
        and a float32 and a float64 model agree up to rounding.  rnn.* and head.*:
        uniform(-1/sqrt(H), 1/sqrt(H)); embedding.weight: N(0, 1).
        """
        model = cls(cfg)
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(cfg.hidden_size)
        for name in model.param_names:
            shape = model.params[name].shape
            if name == "embedding.weight":
                values = rng.standard_normal(shape)
            else:
                values = rng.uniform(-bound, bound, shape)
            model.params[name][...] = values
        return model

    def cast(self, dtype) -> "Model":
        """A copy of this model (parameters and vocabulary) in another dtype."""
        name = np.dtype(dtype).name
        other = Model(self.config.replace(dtype=name), self.flat.astype(name))
        other.vocab = self.vocab
        return other

    def __repr__(self) -> str:
        c = self.config
        return (f"Model(cell={c.cell}, layers={c.num_layers}, hidden={c.hidden_size}, "
                f"vocab={c.vocab_size}, embed={c.embed_size}, params={self.num_params}, "
                f"dtype={c.dtype})")

    # ------------------------------------------------------------------ state and checks
    def initial_state(self, B: int) -> tuple[np.ndarray, ...]:
        """Zero state: LSTM (h, c), GRU/RNN (h,); each (L, B, H)."""
        c = self.config
        n = 2 if c.cell == "lstm" else 1
        return tuple(np.zeros((c.num_layers, B, c.hidden_size), self.dtype)  # (L, B, H)
                     for _ in range(n))

    def _check_tokens(self, a, what: str) -> np.ndarray:
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
            raise InputError(f"{what} must be a non-empty 2-D (B, T) array "
                             f"(got shape {a.shape})")
        if not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"{what} must hold integers (got dtype {a.dtype})")
        V = self.config.vocab_size
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= V:
            raise InputError(f"{what} holds symbol ids in [{lo}, {hi}], outside the "
                             f"vocabulary [0, {V - 1}]")
        return a

    def _check_state(self, state, B: int) -> tuple:
        if state is None:
            return self.initial_state(B)
        c = self.config
        n = 2 if c.cell == "lstm" else 1
        if not isinstance(state, (tuple, list)) or len(state) != n:
            raise InputError(f"state must be a tuple of {n} array(s) for a {c.cell} model")
        want = (c.num_layers, B, c.hidden_size)
        out = []
        for s in state:
            s = np.asarray(s)
            if s.shape != want:
                raise InputError(f"state arrays must have shape (L, B, H) = {want} "
                                 f"(got {s.shape})")
            out.append(s)
        return tuple(out)


    def dropout_masks(self, B: int, T: int, rng: np.random.Generator) -> list[np.ndarray]:
        """The L inverted-dropout masks of one training call, each (T, B, H) time-major:
        masks[k-1] multiplies the input of layer k (k = 1..L-1), masks[L-1] the head's
        input.  Values are 0 or 1/(1-p); drawn from ``rng`` in that order."""
        c = self.config
        p = c.dropout
        keep = 1.0 / (1.0 - p)
        masks = []
        for _ in range(c.num_layers):
            u = rng.random((T, B, c.hidden_size))              # (T, B, H)
            masks.append(((u >= p) * keep).astype(self.dtype))  # (T, B, H)
        return masks


    def _prepare(self, inputs, targets, state):
        inputs = self._check_tokens(inputs, "inputs")
        if targets is not None:
            targets = self._check_tokens(targets, "targets")
            if targets.shape != inputs.shape:
                raise InputError(f"targets shape {targets.shape} differs from inputs "
                                 f"shape {inputs.shape}")
        state = self._check_state(state, inputs.shape[0])
        return inputs, targets, state

    def forward_backward(self, inputs, targets, state=None, train: bool = True, rng=None,
                         masks=None):
        """One truncated-BPTT step: zeroes ``grad_flat``, accumulates the gradient of the
        mean loss into it and returns ``(loss, final_state)`` (new arrays, detached).

        Dropout applies when ``train`` and ``config.dropout > 0``; its masks are drawn
        from ``rng`` (a ``np.random.Generator``, required then), unless ``masks`` gives
        them: L arrays (T, B, H) as :meth:`dropout_masks` returns (data-parallel training
        draws the masks of the whole batch and passes each rank its streams' slice).
        """
        inputs, targets, state = self._prepare(inputs, targets, state)
        if masks is not None:
            if not (train and self.config.dropout > 0):
                masks = None
            else:
                T, B, H = inputs.shape[1], inputs.shape[0], self.config.hidden_size
                if len(masks) != self.config.num_layers or \
                        any(np.shape(m) != (T, B, H) for m in masks):
                    raise InputError(f"masks must be {self.config.num_layers} arrays of shape "
                                     f"(T, B, H) = {(T, B, H)}")
        elif train and self.config.dropout > 0:
            if not isinstance(rng, np.random.Generator):
                raise ConfigError("dropout in training mode needs rng=np.random.Generator")
            masks = self.dropout_masks(inputs.shape[0], inputs.shape[1], rng)
        self.grad_flat.fill(0)
        buf = self._forward(inputs, state, masks)
        loss = self._loss(buf, targets, want_grad=True)
        final = self._final_state(buf)
        self._backward(buf, masks)
        return loss, final

    def loss_and_grad(self, inputs, targets, state=None) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy (nats) and copies of the gradients; dropout off."""
        loss, _ = self.forward_backward(inputs, targets, state, train=False)
        return loss, {name: g.copy() for name, g in self.grads.items()}

    def forward(self, inputs, state=None) -> tuple[np.ndarray, tuple]:
        """Eval mode: logits (B, T, V) and the final state."""
        inputs, _, state = self._prepare(inputs, None, state)
        buf = self._forward(inputs, state, None)
        B, T = inputs.shape
        logits = buf.logits.reshape(T, B, self.config.vocab_size)    # (T, B, V)
        return np.ascontiguousarray(logits.transpose(1, 0, 2)), self._final_state(buf)

    def log_probs(self, inputs, targets, state=None) -> tuple[np.ndarray, tuple]:
        """Eval mode: log p(targets[b, t] | inputs[b, :t+1], state) as (B, T) float64,
        and the final state."""
        inputs, targets, state = self._prepare(inputs, targets, state)
        return self._eval_log_probs(inputs, targets, state)


__all__ = ["Model"]
