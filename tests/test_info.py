"""charrnn info: config, parameters, vocabulary, training progress, metrics of a run
directory, --json, and one-line errors for missing/truncated/corrupt/foreign/newer files."""
from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

from charrnn.config import ModelConfig
from charrnn.info import checkpoint_info, sparkline
from charrnn.model.network import Model
from charrnn.store.vocab import Vocab
from charrnn.store.checkpoint import save_model

TEXT = "hello world, the quick brown fox.\nAnd more lines here!\n"


def _model(**kw):
    v = Vocab.from_text(TEXT)
    m = Model.from_config(ModelConfig(vocab_size=len(v), hidden_size=8, num_layers=2, **kw), 0)
    m.vocab = v
    return m


TS = {"iteration": 120, "epoch": 3, "best_val_loss": 1.5, "elapsed": 3723.4,
      "train_config": {"optimizer": "adam", "lr": 0.002, "batch_size": 4, "seq_len": 16},
      "data_dir": "data"}


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    m = _model(peepholes=True)
    save_model(run / "best.safetensors", m, train_state=TS,
           extra_tensors={"optim.m": np.zeros(3, np.float32)})
    save_model(run / "latest.safetensors", m, train_state={**TS, "iteration": 130})
    with open(run / "metrics.jsonl", "w", encoding="utf-8") as f:
        for i in range(12):
            f.write(json.dumps({"iter": 10 * i, "epoch": i / 4, "train_loss": 3 - 0.1 * i,
                                "val_loss": 3.1 - 0.1 * i, "val_bpc": (3.1 - 0.1 * i) / 0.693,
                                "lr": 0.002, "chars_per_sec": 1000.0, "elapsed": 2.0 * i,
                                "time": "t"}) + "\n")
        f.write("{not json\n")
        f.write(json.dumps({"iter": 120}) + "\n")          # missing keys are tolerated
    return run


def test_info_json_of_a_run_directory(run_dir, tmp_path, invoke):
    code, out, err = invoke(["info", run_dir, "--json", "--no-verify"])
    assert code == 0, err
    info = json.loads(out)
    m = _model(peepholes=True)
    assert info["path"].endswith("best.safetensors") and info["kind"] == "training"
    assert info["format"] == "charrnn" and info["format_version"] == 1
    assert info["params"] == m.num_params and info["config"]["peepholes"] is True
    assert info["extra_tensors"] == ["optim.m"]
    assert info["vocab"]["size"] == len(m.vocab) and info["vocab"]["preview"].startswith("\\n")
    tr = info["training"]
    assert tr["iteration"] == 120 and tr["epoch"] == 3 and tr["best_val_loss"] == 1.5
    assert tr["best_val_bpc"] == pytest.approx(1.5 / np.log(2))
    assert tr["elapsed_text"] == "1h02m03s" and tr["train_config"]["lr"] == 0.002
    assert info["metrics"]["count"] == 13 and len(info["metrics"]["recent"]) == 5
    assert info["checksums"] == "not verified"
    no_time = tmp_path / "no_time.safetensors"          # a missing time: null, not "?"
    save_model(no_time, m, train_state={k: v for k, v in TS.items() if k != "elapsed"})
    assert checkpoint_info(no_time)["training"]["elapsed_text"] is None
    code, out, err = invoke(["info", run_dir, "--latest", "--json"])
    info = json.loads(out)
    assert info["training"]["iteration"] == 130 and info["checksums"] == "verified"


def test_info_plain_output(run_dir, invoke):
    code, out, err = invoke(["info", run_dir])
    assert code == 0, err
    for want in ("LSTM 2 x 8, one-hot input, peepholes, float32", "parameters",
                 "iteration 120, epoch 3, trained 1h02m03s",
                 "best val", "loss 1.5000 nats/char, bpc 2.1640",
                 "metrics.jsonl (last 5 of 13)", "val loss", "train loss"):
        assert want in out, want
    # sizes and durations as charrnn.units writes them: the file in KiB, the metrics'
    # elapsed seconds (2.0 * i) as durations
    assert re.search(r"\(training, format charrnn v1, \d+\.\d KiB\)", out), out
    assert re.search(r"110 .* 22s ", out), out
    code, out, err = invoke(["info", run_dir / "best.safetensors"])
    assert code == 0 and "metrics.jsonl" not in out


def test_model_checkpoint_without_training(tmp_path, invoke):
    p = tmp_path / "m.safetensors"
    save_model(p, _model(cell="gru", gru_reset="before", embed_size=4))
    info = checkpoint_info(p, verify=False)
    assert info["checksums"] == "not verified"
    assert info["training"] is None and info["kind"] == "model" and info["metrics"] is None
    code, out, err = invoke(["info", p])
    assert code == 0 and "GRU 2 x 8, embedding 4, reset before" in out


def test_helpers():
    s = sparkline([3.0, 2.0, 1.0, None, float("nan")])
    assert s == "█▅▁"
    assert len(sparkline(list(range(500)), width=40)) == 40


def _future_version(src, dst):
    """Rewrite the header with format_version 2 (checksums are not what is checked)."""
    raw = src.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["__metadata__"]["format_version"] = "2"
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    dst.write_bytes(len(hb).to_bytes(8, "little") + hb + raw[8 + n:])


@pytest.mark.parametrize("command", ["info", "sample", "eval"])
def test_broken_checkpoints_are_one_line_errors(tmp_path, invoke, command):
    good = tmp_path / "good.safetensors"
    save_model(good, _model())
    raw = good.read_bytes()
    cases = {}
    cases["missing"] = (tmp_path / "nope.safetensors", "no such file or directory")
    (tmp_path / "trunc.safetensors").write_bytes(raw[:len(raw) // 2])
    cases["truncated"] = (tmp_path / "trunc.safetensors", "truncated")
    (tmp_path / "text.safetensors").write_text("just some text, not a checkpoint\n")
    cases["foreign"] = (tmp_path / "text.safetensors", "")
    from safetensors.numpy import save_file
    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    cases["other"] = (tmp_path / "other.safetensors", "not a charrnn checkpoint")
    _future_version(good, tmp_path / "future.safetensors")
    cases["future"] = (tmp_path / "future.safetensors",
                       "written by a newer charrnn (format version 2; this charrnn reads 1): "
                       "upgrade charrnn")
    (tmp_path / "empty_run").mkdir()
    cases["empty run dir"] = (tmp_path / "empty_run", "no checkpoint in this directory")
    flipped = bytearray(raw)
    flipped[-5] ^= 0xFF
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    cases["flipped"] = (tmp_path / "flip.safetensors", "fails its checksum")
    extra = ["-"] if command == "eval" else []
    for name, (path, want) in cases.items():
        code, out, err = invoke([command, path, *extra])
        assert code == 1, (name, err)
        assert err.startswith(f"Error: {path}") and err.count("\n") == 1, (name, err)
        assert want in err and "Traceback" not in err, (name, err)


def test_plot_png_or_a_clean_error(run_dir, tmp_path, invoke, monkeypatch):
    png = tmp_path / "loss.png"
    try:
        import matplotlib  # noqa: F401
        have = True
    except ImportError:
        have = False
    if have:
        code, out, err = invoke(["info", run_dir, "--plot", png])
        assert code == 0, err
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # as if not installed
    code, out, err = invoke(["info", run_dir, "--plot", tmp_path / "x.png"])
    assert (code, out) == (1, "")
    assert err == "Error: --plot needs matplotlib (pip install matplotlib)\n"
    code, out, err = invoke(["info", run_dir / "best.safetensors", "--plot", png])
    assert code == 1
