"""Optimizers over one flat parameter buffer.

Every parameter of a model lives in ONE contiguous 1-D buffer (``model.flat``) and its
gradient in another (``model.grad_flat``); each optimizer moment is one flat buffer of
the same size and dtype.  A step is two fused parallel kernels
(:mod:`charrnn.kernels.optim`): the global gradient norm, then clipping + weight decay +
update in one pass.

Formulas (``g`` the gradient, ``p`` a parameter, ``t`` the step count after this step):

clipping (``clip`` > 0, as ``torch.nn.utils.clip_grad_norm_``)
    ``norm = ||g||_2`` over ALL parameters; if ``norm > clip`` the gradient is scaled by
    ``clip / (norm + 1e-6)``.  Then, if ``clip_value`` > 0, each element is clamped to
    ``[-clip_value, clip_value]`` (the norm is always that of the raw gradient).
    ``step`` returns the raw norm; nothing is skipped, so a NaN/inf norm reaches the
    parameters and the trainer's divergence check sees it.
adam (``torch.optim.Adam``)
    ``g += wd*p``; ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g^2``;
    ``p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``
adamw (``torch.optim.AdamW``)
    ``p *= 1 - lr*wd`` (decoupled), then the adam update without the L2 term.
sgd (``torch.optim.SGD``, dampening 0, no Nesterov)
    ``g += wd*p``; if momentum > 0: ``buf = momentum*buf + g`` (``buf`` starts at 0, so
    the first step gives ``buf = g`` as in torch) and ``g = buf``; ``p -= lr*g``.
rmsprop (char-rnn's ``optim.rmsprop``; identical to ``torch.optim.RMSprop`` without
momentum or centering)
    ``g += wd*p``; ``s = alpha*s + (1-alpha)*g^2`` with ``s`` starting at 0;
    ``p -= lr * g / (sqrt(s) + eps)`` -- eps is added AFTER the square root
    (char-rnn: alpha = decay_rate = 0.95, eps = 1e-8).

The weight-decay coefficient ``wd`` is TrainConfig.weight_decay; beta1, beta2, eps,
momentum and rmsprop_alpha come from TrainConfig too.  The learning rate is passed to
every ``step`` (the schedule lives in :mod:`charrnn.model.schedule`).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..config import OPTIMIZERS, TrainConfig
from ..errors import CheckpointError, ConfigError

_MOMENTS = {
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
    "sgd": ("momentum_buffer",),
    "rmsprop": ("square_avg",),
}
_PREFIX = "optim."
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _as_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ConfigError(
            f"optimizer dtype must be float32 or float64 (got {dtype!r})") from None
    if dt not in _DTYPES:
        raise ConfigError(f"optimizer dtype must be float32 or float64 (got {dt.name})")
    return dt


def _kernels():
    from ..kernels import optim as k  # compiled on first use (imports numba)
    return k


def _check_flat(name: str, a, n: int | None, dtype: np.dtype | None) -> None:
    if not isinstance(a, np.ndarray):
        raise ConfigError(f"{name} must be a numpy array (got {type(a).__name__})")
    if a.ndim != 1:
        raise ConfigError(f"{name} must be 1-D (got shape {a.shape})")
    if not a.flags.c_contiguous:
        raise ConfigError(f"{name} must be contiguous")
    if dtype is not None and a.dtype != dtype:
        raise ConfigError(f"{name} has dtype {a.dtype.name}, expected {dtype.name}")
    if dtype is None and a.dtype not in _DTYPES:
        raise ConfigError(f"{name} must be float32 or float64 (got {a.dtype.name})")
    if n is not None and a.shape[0] != n:
        raise ConfigError(f"{name} has {a.shape[0]} elements, expected {n}")


def grad_norm(grad_flat: np.ndarray) -> float:
    """Global L2 norm of a flat float32/float64 gradient (deterministic, parallel)."""
    _check_flat("grad_flat", grad_flat, None, None)
    k = _kernels()
    partials = np.empty(max(1, k.n_chunks(grad_flat.shape[0])), dtype=np.float64)  # (chunks,)
    return math.sqrt(k.sumsq_kernel(grad_flat, partials))


class Optimizer:
    """One of adam, adamw, sgd, rmsprop over flat buffers of ``n_params`` elements.

    ``Optimizer(cfg, n_params, dtype)``; ``n_params`` may also be a model (an object
    with ``num_params`` and ``config.dtype``), then ``dtype`` defaults to the model's.
    """

    def __init__(self, cfg: TrainConfig, n_params, dtype=None):
        if not isinstance(cfg, TrainConfig):
            raise ConfigError(f"cfg must be a TrainConfig (got {type(cfg).__name__})")
        if hasattr(n_params, "num_params"):
            model = n_params
            n_params = int(model.num_params)
            if dtype is None:
                dtype = model.config.dtype
        if isinstance(n_params, bool) or not isinstance(n_params, (int, np.integer)) \
                or n_params < 0:
            raise ConfigError(f"n_params must be an integer >= 0 (got {n_params!r})")
        if cfg.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)} "
                              f"(got {cfg.optimizer!r})")
        self.name: str = cfg.optimizer
        self.cfg = cfg
        self.n_params = int(n_params)
        self.dtype = _as_dtype("float32" if dtype is None else dtype)
        self.step_count = 0
        names = _MOMENTS[self.name]
        if self.name == "sgd" and cfg.momentum == 0.0:
            names = ()
        self._buffers: dict[str, np.ndarray] = {
            nm: np.zeros(self.n_params, dtype=self.dtype) for nm in names}  # (n_params,)
        self._empty = np.zeros(0, dtype=self.dtype)  # (0,) stands in for an unused moment
        self._partials: np.ndarray | None = None  # (chunks,) norm partials, made on first step

    # ------------------------------------------------------------------ stepping
    def step(self, params_flat: np.ndarray, grad_flat: np.ndarray, lr: float) -> float:
        """Clip, decay and update ``params_flat`` in place; return the pre-clip norm."""
        _check_flat("params_flat", params_flat, self.n_params, self.dtype)
        _check_flat("grad_flat", grad_flat, self.n_params, self.dtype)
        lr = float(lr)
        if not math.isfinite(lr) or lr < 0:
            raise ConfigError(f"learning rate must be finite and >= 0 (got {lr})")
        if np.may_share_memory(params_flat, grad_flat):
            raise ConfigError("params_flat and grad_flat must be different buffers")
        k = _kernels()
        nc = max(1, k.n_chunks(self.n_params))
        if self._partials is None or self._partials.shape[0] != nc:
            self._partials = np.empty(nc, dtype=np.float64)  # (chunks,)
        norm = math.sqrt(k.sumsq_kernel(grad_flat, self._partials))
        cfg = self.cfg
        scale = 1.0
        if cfg.clip > 0 and norm > cfg.clip:  # NaN norm: no scaling, NaN propagates
            scale = cfg.clip / (norm + 1e-6)
        self.step_count += 1
        t = self.step_count
        m1 = m2 = self._empty
        step_size = inv_sqrt_bc2 = 0.0
        if self.name in ("adam", "adamw"):
            kind = k.ADAM if self.name == "adam" else k.ADAMW
            m1 = self._buffers["exp_avg"]
            m2 = self._buffers["exp_avg_sq"]
            step_size = lr / (1.0 - cfg.beta1 ** t)
            inv_sqrt_bc2 = 1.0 / math.sqrt(1.0 - cfg.beta2 ** t)
        elif self.name == "sgd":
            kind = k.SGD
            m1 = self._buffers.get("momentum_buffer", self._empty)
        else:
            kind = k.RMSPROP
            m1 = self._buffers["square_avg"]
        hp = k.Hyper(lr=lr, scale=float(scale), clip_value=float(cfg.clip_value),
                     wd=float(cfg.weight_decay), beta1=float(cfg.beta1),
                     beta2=float(cfg.beta2), eps=float(cfg.eps), step_size=float(step_size),
                     inv_sqrt_bc2=float(inv_sqrt_bc2), momentum=float(cfg.momentum),
                     alpha=float(cfg.rmsprop_alpha))
        k.update_kernel(kind, params_flat, grad_flat, k.Moments(m1, m2), hp)
        return norm

    # ------------------------------------------------------------------ state
    def state_tensors(self) -> dict[str, np.ndarray]:
        """The moment buffers by checkpoint name, e.g. ``optim.exp_avg`` (not copies)."""
        return {_PREFIX + nm: buf for nm, buf in self._buffers.items()}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able scalars: name, step count, sizes and hyperparameters."""
        cfg = self.cfg
        return {
            "name": self.name,
            "step_count": self.step_count,
            "n_params": self.n_params,
            "dtype": self.dtype.name,
            "tensors": sorted(self.state_tensors()),
            "hyperparameters": {
                "beta1": cfg.beta1, "beta2": cfg.beta2, "eps": cfg.eps,
                "momentum": cfg.momentum, "rmsprop_alpha": cfg.rmsprop_alpha,
                "weight_decay": cfg.weight_decay, "clip": cfg.clip,
                "clip_value": cfg.clip_value,
            },
        }

    def load_state(self, tensors: dict, meta: dict) -> None:
        """Restore moments and step count saved by :meth:`state_tensors`/:meth:`state_dict`.

        ``tensors`` may hold other entries (model parameters); only ``optim.*`` names are
        read.  Hyperparameters in ``meta`` are informational: the current TrainConfig
        wins, so a resumed run may change them.  Raises CheckpointError on any mismatch.
        """
        if not isinstance(meta, dict):
            raise CheckpointError("optimizer state is not a JSON object")
        name = meta.get("name")
        if name != self.name:
            raise CheckpointError(
                f"optimizer state is for {name!r} but this run uses {self.name!r}; "
                f"resume with --optimizer {name} or start a new run")
        step_count = meta.get("step_count")
        if isinstance(step_count, bool) or not isinstance(step_count, int) or step_count < 0:
            raise CheckpointError(f"optimizer state has an invalid step_count {step_count!r}")
        if "n_params" in meta and meta["n_params"] != self.n_params:
            raise CheckpointError(
                f"optimizer state is for {meta['n_params']} parameters, "
                f"this model has {self.n_params}")
        found = {k for k in tensors if isinstance(k, str) and k.startswith(_PREFIX)}
        expected = set(self.state_tensors())
        missing = sorted(expected - found)
        if missing:
            raise CheckpointError(f"optimizer state lacks tensor(s) {', '.join(missing)}")
        extra = sorted(found - expected)
        if extra:
            raise CheckpointError(
                f"optimizer state has unexpected tensor(s) {', '.join(extra)} "
                f"for optimizer {self.name!r}")
        staged = {}
        for full in sorted(expected):
            src = np.asarray(tensors[full])
            if src.shape != (self.n_params,):
                raise CheckpointError(
                    f"optimizer tensor {full!r} has shape {tuple(src.shape)}, "
                    f"expected ({self.n_params},)")
            if src.dtype not in _DTYPES:
                raise CheckpointError(
                    f"optimizer tensor {full!r} has dtype {src.dtype.name}, "
                    f"expected {self.dtype.name}")
            staged[full[len(_PREFIX):]] = src
        for nm, src in staged.items():   # all checked: now copy
            np.copyto(self._buffers[nm], src, casting="same_kind")
        self.step_count = step_count


def make_optimizer(cfg: TrainConfig, n_params: int, dtype="float32") -> Optimizer:
    """The optimizer named by ``cfg.optimizer`` for ``n_params`` parameters of ``dtype``."""
    return Optimizer(cfg, n_params, dtype)


__all__ = ["Optimizer", "make_optimizer", "grad_norm"]
