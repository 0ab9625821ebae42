"""Slow pure-numpy reference of the model, gate by gate and step by step.

Written independently of charrnn's kernels (no shared code but the parameter names):
the forward pass stores every intermediate in per-step dictionaries and the backward
pass is written by hand from the equations in charrnn/cells/*.py, step by step in
reverse.  Works in float64 whatever the dtype of the parameters it is given.

``run(cfg, params, inputs, targets, state=None, masks=None)`` returns a dict with
``loss`` (mean nats), ``grads`` (name -> array), ``logits`` (B, T, V), ``state`` (the
final state tuple, each (L, B, H)) and ``logp`` (B, T).  ``masks`` are the dropout masks
in the model's layout (a list of L arrays (T, B, H)), or None for no dropout.
"""
from __future__ import annotations

import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _lstm_step(P, x, h, c, peep):
    Wi, Wh, bi, bh = P
    H = h.shape[1]
    a = x @ Wi.T + bi + h @ Wh.T + bh                       # (B, 4H)
    ai, af, ag, ao = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    if peep is not None:
        ai = ai + peep[0] * c
        af = af + peep[1] * c
    i, f, g = sigmoid(ai), sigmoid(af), np.tanh(ag)
    c_new = f * c + i * g
    if peep is not None:
        ao = ao + peep[2] * c_new
    o = sigmoid(ao)
    h_new = o * np.tanh(c_new)
    cache = dict(x=x, h=h, c=c, i=i, f=f, g=g, o=o, c_new=c_new)
    return h_new, c_new, cache


def _lstm_step_back(P, peep, cache, dh, dc, grads):
    Wi, Wh, _, _ = P
    dWi, dWh, dbi, dbh, dpeep = grads
    i, f, g, o, c, c_new = (cache[k] for k in ("i", "f", "g", "o", "c", "c_new"))
    tc = np.tanh(c_new)
    do = dh * tc
    dao = do * o * (1 - o)
    dct = dc + dh * o * (1 - tc ** 2)
    if peep is not None:
        dct = dct + dao * peep[2]
    dai = dct * g * i * (1 - i)
    daf = dct * c * f * (1 - f)
    dag = dct * i * (1 - g ** 2)
    dc_prev = dct * f
    if peep is not None:
        dc_prev = dc_prev + dai * peep[0] + daf * peep[1]
        dpeep[0] += (dai * c).sum(0)
        dpeep[1] += (daf * c).sum(0)
        dpeep[2] += (dao * c_new).sum(0)
    da = np.concatenate([dai, daf, dag, dao], axis=1)       # (B, 4H)
    dWi += da.T @ cache["x"]
    dWh += da.T @ cache["h"]
    dbi += da.sum(0)
    dbh += da.sum(0)
    return da @ Wi, da @ Wh, dc_prev


def _gru_step(P, x, h, before):
    Wi, Wh, bi, bh = P
    H = h.shape[1]
    gx = x @ Wi.T + bi                                      # (B, 3H)
    Wr, Wz, Wn = Wh[:H], Wh[H:2 * H], Wh[2 * H:]
    br, bz, bn = bh[:H], bh[H:2 * H], bh[2 * H:]
    r = sigmoid(gx[:, :H] + h @ Wr.T + br)
    z = sigmoid(gx[:, H:2 * H] + h @ Wz.T + bz)
    if before:
        rh = r * h
        n = np.tanh(gx[:, 2 * H:] + rh @ Wn.T + bn)
        an = None
    else:
        rh = None
        an = h @ Wn.T + bn
        n = np.tanh(gx[:, 2 * H:] + r * an)
    h_new = (1 - z) * n + z * h
    return h_new, dict(x=x, h=h, r=r, z=z, n=n, rh=rh, an=an)


def _gru_step_back(P, before, cache, dh, grads):
    Wi, Wh, _, _ = P
    dWi, dWh, dbi, dbh = grads
    H = dh.shape[1]
    Wr, Wz, Wn = Wh[:H], Wh[H:2 * H], Wh[2 * H:]
    x, h, r, z, n = (cache[k] for k in ("x", "h", "r", "z", "n"))
    dn = dh * (1 - z)
    dz = dh * (h - n)
    dh_prev = dh * z
    dan = dn * (1 - n ** 2)                                 # d(pre-activation of n)
    daz = dz * z * (1 - z)
    if before:
        rh = cache["rh"]
        dWh[2 * H:] += dan.T @ rh
        dbh[2 * H:] += dan.sum(0)
        drh = dan @ Wn
        dr = drh * h
        dh_prev = dh_prev + drh * r
    else:
        an = cache["an"]
        dhn = dan * r                                       # d(W_hn h + b_hn)
        dWh[2 * H:] += dhn.T @ h
        dbh[2 * H:] += dhn.sum(0)
        dh_prev = dh_prev + dhn @ Wn
        dr = dan * an
    dar = dr * r * (1 - r)
    dWh[:H] += dar.T @ h
    dWh[H:2 * H] += daz.T @ h
    dbh[:H] += dar.sum(0)
    dbh[H:2 * H] += daz.sum(0)
    dh_prev = dh_prev + dar @ Wr + daz @ Wz
    dgx = np.concatenate([dar, daz, dan], axis=1)           # (B, 3H)
    dWi += dgx.T @ x
    dbi += dgx.sum(0)
    return dgx @ Wi, dh_prev


def _rnn_step(P, x, h, relu):
    Wi, Wh, bi, bh = P
    a = x @ Wi.T + bi + h @ Wh.T + bh
    h_new = np.maximum(a, 0.0) if relu else np.tanh(a)
    return h_new, dict(x=x, h=h, a=a, h_new=h_new)


def _rnn_step_back(P, relu, cache, dh, grads):
    Wi, Wh, _, _ = P
    dWi, dWh, dbi, dbh = grads
    if relu:
        da = dh * (cache["a"] > 0)
    else:
        da = dh * (1 - cache["h_new"] ** 2)
    dWi += da.T @ cache["x"]
    dWh += da.T @ cache["h"]
    dbi += da.sum(0)
    dbh += da.sum(0)
    return da @ Wi, da @ Wh


def run(cfg, params, inputs, targets, state=None, masks=None):
    P = {k: np.asarray(v, np.float64) for k, v in params.items()}
    inputs = np.asarray(inputs)
    targets = np.asarray(targets)
    B, T = inputs.shape
    L, H, V, E = cfg.num_layers, cfg.hidden_size, cfg.vocab_size, cfg.embed_size
    lstm = cfg.cell == "lstm"
    masks = None if masks is None else [np.asarray(m, np.float64) for m in masks]
    if state is None:
        h0 = np.zeros((L, B, H))
        c0 = np.zeros((L, B, H))
    else:
        h0 = np.asarray(state[0], np.float64)
        c0 = np.asarray(state[1], np.float64) if lstm else None

    def lp(k):
        return (P[f"rnn.weight_ih_l{k}"], P[f"rnn.weight_hh_l{k}"],
                P[f"rnn.bias_ih_l{k}"], P[f"rnn.bias_hh_l{k}"])

    # ---- input: explicit one-hot vectors or embedding rows, per step
    xs0 = []
    for t in range(T):
        if E > 0:
            xs0.append(P["embedding.weight"][inputs[:, t]])
        else:
            oh = np.zeros((B, V))
            oh[np.arange(B), inputs[:, t]] = 1.0
            xs0.append(oh)

    # ---- forward, layer by layer
    caches = [[None] * T for _ in range(L)]
    layer_x = [xs0]                      # layer_x[k][t]: input of layer k at step t
    final_h, final_c = [], []
    prev_y = None
    for k in range(L):
        if k > 0:
            xs = [prev_y[t] * (masks[k - 1][t] if masks is not None else 1.0) for t in range(T)]
            layer_x.append(xs)
        xs = layer_x[k]
        h = h0[k].copy()
        c = c0[k].copy() if lstm else None
        ys = []
        for t in range(T):
            if lstm:
                peep = P.get(f"rnn.weight_peephole_l{k}")
                h, c, caches[k][t] = _lstm_step(lp(k), xs[t], h, c, peep)
            elif cfg.cell == "gru":
                h, caches[k][t] = _gru_step(lp(k), xs[t], h, cfg.gru_reset == "before")
            else:
                h, caches[k][t] = _rnn_step(lp(k), xs[t], h, cfg.nonlinearity == "relu")
            y = h + xs[t] if (cfg.residual and k > 0) else h
            ys.append(y)
        final_h.append(h)
        final_c.append(c)
        prev_y = ys
    head_in = [prev_y[t] * (masks[L - 1][t] if masks is not None else 1.0) for t in range(T)]

    # ---- head and loss
    W, b = P["head.weight"], P["head.bias"]
    logits = np.stack([head_in[t] @ W.T + b for t in range(T)], axis=1)  # (B, T, V)
    m = logits.max(axis=2, keepdims=True)
    lse = m[..., 0] + np.log(np.exp(logits - m).sum(axis=2))
    logp = np.take_along_axis(logits, targets[..., None], axis=2)[..., 0] - lse   # (B, T)
    loss = -logp.mean()

    # ---- backward
    G = {k: np.zeros_like(v) for k, v in P.items()}
    prob = np.exp(logits - lse[..., None])
    dlogits = prob.copy()
    dlogits[np.arange(B)[:, None], np.arange(T)[None, :], targets] -= 1.0
    dlogits /= B * T
    dy = []
    for t in range(T):
        G["head.weight"] += dlogits[:, t].T @ head_in[t]
        G["head.bias"] += dlogits[:, t].sum(0)
        d = dlogits[:, t] @ W
        if masks is not None:
            d = d * masks[L - 1][t]
        dy.append(d)
    for k in range(L - 1, -1, -1):
        if lstm:
            pk = P.get(f"rnn.weight_peephole_l{k}")
            gk = (G[f"rnn.weight_ih_l{k}"], G[f"rnn.weight_hh_l{k}"],
                  G[f"rnn.bias_ih_l{k}"], G[f"rnn.bias_hh_l{k}"],
                  G.get(f"rnn.weight_peephole_l{k}"))
        else:
            gk = (G[f"rnn.weight_ih_l{k}"], G[f"rnn.weight_hh_l{k}"],
                  G[f"rnn.bias_ih_l{k}"], G[f"rnn.bias_hh_l{k}"])
        dh_next = np.zeros((B, H))
        dc_next = np.zeros((B, H))
        dxs = [None] * T
        for t in range(T - 1, -1, -1):
            dh = dy[t] + dh_next
            if lstm:
                dxs[t], dh_next, dc_next = _lstm_step_back(lp(k), pk, caches[k][t], dh,
                                                           dc_next, gk)
            elif cfg.cell == "gru":
                dxs[t], dh_next = _gru_step_back(lp(k), cfg.gru_reset == "before",
                                                 caches[k][t], dh, gk)
            else:
                dxs[t], dh_next = _rnn_step_back(lp(k), cfg.nonlinearity == "relu",
                                                 caches[k][t], dh, gk)
        if k > 0:
            new_dy = []
            for t in range(T):
                d = dxs[t] + (dy[t] if cfg.residual else 0.0)
                if masks is not None:
                    d = d * masks[k - 1][t]
                new_dy.append(d)
            dy = new_dy
        elif E > 0:
            for t in range(T):
                np.add.at(G["embedding.weight"], inputs[:, t], dxs[t])
    state_out = (np.stack(final_h), np.stack(final_c)) if lstm else (np.stack(final_h),)
    return dict(loss=float(loss), grads=G, logits=logits, state=state_out, logp=logp)
