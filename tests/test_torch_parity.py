"""Loss and every gradient against PyTorch (nn.LSTM/GRU/RNN + nn.Embedding + nn.Linear),
loading charrnn's parameters into torch by name with load_state_dict."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch parity needs PyTorch")

from charrnn.config import ModelConfig  # noqa: E402
from charrnn.model.network import Model  # noqa: E402

pytestmark = pytest.mark.torch

B, T, H, V = 3, 5, 6, 9

CONFIGS = [
    dict(cell="lstm"),
    dict(cell="lstm", embed_size=4, num_layers=2),
    dict(cell="gru", num_layers=2),
    dict(cell="gru", embed_size=4),
    dict(cell="rnn", nonlinearity="tanh", num_layers=2),
    dict(cell="rnn", nonlinearity="relu", embed_size=4, num_layers=2),
]


class TorchTwin(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        nn = torch.nn
        inp = cfg.embed_size if cfg.embed_size else cfg.vocab_size
        self.embed = cfg.embed_size > 0
        if self.embed:
            self.embedding = nn.Embedding(cfg.vocab_size, cfg.embed_size)
        if cfg.cell == "lstm":
            self.rnn = nn.LSTM(inp, cfg.hidden_size, cfg.num_layers, batch_first=True)
        elif cfg.cell == "gru":
            self.rnn = nn.GRU(inp, cfg.hidden_size, cfg.num_layers, batch_first=True)
        else:
            self.rnn = nn.RNN(inp, cfg.hidden_size, cfg.num_layers, batch_first=True,
                              nonlinearity=cfg.nonlinearity)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        self.V = cfg.vocab_size

    def forward(self, x, state):
        if self.embed:
            inp = self.embedding(x)
        else:
            inp = torch.nn.functional.one_hot(x, self.V).to(self.head.weight.dtype)
        out, final = self.rnn(inp, state)
        return self.head(out), final


def _ids(o):
    return "-".join(f"{k}={v}" for k, v in o.items())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opts", CONFIGS, ids=_ids)
def test_loss_and_grads_match_torch(opts, dtype):
    opts = dict(opts)
    layers = opts.pop("num_layers", 1)
    cfg = ModelConfig(vocab_size=V, hidden_size=H, num_layers=layers, dtype=dtype, **opts)
    model = Model.from_config(cfg, seed=9)
    tdt = torch.float64 if dtype == "float64" else torch.float32
    twin = TorchTwin(cfg).to(tdt)
    twin.load_state_dict({n: torch.from_numpy(model.params[n].copy()) for n in model.param_names})

    rng = np.random.default_rng(0)
    x = rng.integers(0, V, (B, T))
    y = rng.integers(0, V, (B, T))
    state = tuple((0.5 * rng.standard_normal(s.shape)).astype(dtype)
                  for s in model.initial_state(B))
    loss, grads = model.loss_and_grad(x, y, state)
    _, final = model.forward(x, state)

    tstate = tuple(torch.from_numpy(s) for s in state)
    tstate = tstate if cfg.cell == "lstm" else tstate[0]
    logits, tfinal = twin(torch.from_numpy(x), tstate)
    tloss = torch.nn.functional.cross_entropy(logits.reshape(-1, V),
                                              torch.from_numpy(y).reshape(-1))
    tloss.backward()
    tgrads = {n: p.grad.numpy() for n, p in twin.named_parameters()}

    rtol = 1e-10 if dtype == "float64" else 1e-5
    assert loss == pytest.approx(tloss.item(), rel=rtol)
    assert set(tgrads) == set(model.param_names)
    for name in model.param_names:
        g, tg = grads[name], tgrads[name]
        assert g.shape == tg.shape, name
        scale = np.abs(tg).max()
        assert np.abs(g - tg).max() <= 2 * rtol * scale, name
    tfinal = tfinal if cfg.cell == "lstm" else (tfinal,)
    for a, b in zip(final, tfinal):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=2 * rtol, atol=2 * rtol)
