"""Checkpoints: round trips, run-directory resolution and every kind of damaged file."""
from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from charrnn.store import ckpt_format
from charrnn.store.checkpoint import (BEST_NAME, LATEST_NAME, load_model, model_from_checkpoint,
                                read_checkpoint, read_header, resolve_checkpoint, save_model)
from charrnn.config import ModelConfig
from charrnn.errors import CheckpointError
from charrnn.model.network import Model
from charrnn.store.vocab import Vocab

TEXT = "hello world\n"
RNG_STATE = np.random.PCG64(7).state       # a train_state's "rng": a real PCG64 state


def _vocab():
    return Vocab.from_text(TEXT)


def _model(cell="lstm", dtype="float32", layers=1, seed=3):
    vocab = _vocab()
    cfg = ModelConfig(cell=cell, vocab_size=len(vocab), hidden_size=3, num_layers=layers,
                      dtype=dtype)
    model = Model.from_config(cfg, seed=seed)
    model.vocab = vocab
    return model


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture
def saved(tmp_path, model):
    """A training checkpoint in a run directory: (path, model, train_state, extras)."""
    run = tmp_path / "run"
    run.mkdir()
    path = run / BEST_NAME
    train_state = {"iteration": np.int64(40), "epoch": 1, "best_val_loss": float("inf"),
                   "rng": RNG_STATE, "history": [1.5, 1.25]}
    extras = {"optim.exp_avg": np.arange(model.num_params, dtype=np.float32),
              "state.h": np.linspace(0, 1, 6).reshape(2, 3),           # (B, H) float64
              "data.positions": np.array([3, 5, 8], dtype=np.int64)}
    save_model(path, model, train_state=train_state, extra_tensors=extras)
    return path, train_state, extras


def _raise(path, match=None):
    with pytest.raises(CheckpointError) as ei:
        read_checkpoint(path)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: "), msg
    if match is not None:
        assert match in msg, msg
    return msg


def _rewrite(src, dst, meta=None, tensors=None, fix_checksums=True, drop_meta=()):
    """Re-save ``src`` with metadata/tensor changes (checksums recomputed on request)."""
    data = open(src, "rb").read()
    n = int.from_bytes(data[:8], "little")
    old_meta = json.loads(data[8:8 + n])["__metadata__"]
    new_tensors = {k: np.array(v) for k, v in st_load(data).items()}
    new_meta = dict(old_meta)
    for k in drop_meta:
        new_meta.pop(k, None)
    new_meta.update(meta or {})
    for k, v in (tensors or {}).items():
        if v is None:
            new_tensors.pop(k)
        else:
            new_tensors[k] = v
    if fix_checksums:
        sums = {k: ckpt_format.tensor_digest(v) for k, v in new_tensors.items()}
        sums["__metadata__"] = ckpt_format.metadata_digest(new_meta)
        new_meta["checksums"] = json.dumps(sums)
    with open(dst, "wb") as f:
        f.write(st_save(new_tensors, metadata=new_meta))
    return dst


# ------------------------------------------------------------------ round trips

def test_model_round_trip(tmp_path, model):
    path = tmp_path / "m.safetensors"
    save_model(path, model)
    back = load_model(path)
    assert back.config == model.config
    assert back.param_names == model.param_names
    np.testing.assert_array_equal(back.flat, model.flat)
    assert back.flat.dtype == np.float32
    assert back.vocab.to_dict() == model.vocab.to_dict()
    ck = read_checkpoint(path)
    assert ck.kind == "model" and ck.train_state is None
    assert ck.format_version == 1
    assert set(ck.tensors) == set(model.param_names)
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]      # no temp files left


def test_training_round_trip_keeps_state_and_dtypes(saved, model):
    path, train_state, extras = saved
    ck = read_checkpoint(path.parent)
    assert ck.path == path and ck.kind == "training"
    assert ck.train_state == {"iteration": 40, "epoch": 1, "best_val_loss": float("inf"),
                              "rng": RNG_STATE, "history": [1.5, 1.25]}
    for name, arr in extras.items():
        assert ck.tensors[name].dtype == arr.dtype
        np.testing.assert_array_equal(ck.tensors[name], arr)
    ck.tensors["state.h"][0, 0] = 9.0          # tensors are writable copies
    m2 = model_from_checkpoint(ck)
    np.testing.assert_array_equal(m2.flat, model.flat)


def test_metadata_layout(saved, model):
    path, _, _ = saved
    meta = read_checkpoint(path).metadata
    assert meta["format"] == "charrnn" and meta["format_version"] == "1"
    assert meta["kind"] == "training"
    assert json.loads(meta["config"]) == model.config.to_dict()
    assert json.loads(meta["vocab"]) == model.vocab.to_dict()
    from charrnn import __version__
    assert meta["charrnn_version"] == __version__
    assert dt.datetime.fromisoformat(meta["created"]).tzinfo is not None
    sums = json.loads(meta["checksums"])
    assert set(sums) == set(model.param_names) | {"optim.exp_avg", "state.h",
                                                  "data.positions", "__metadata__"}
    assert all(len(v) == 8 and int(v, 16) >= 0 for v in sums.values())
    _, hmeta, entries = read_header(path)
    assert hmeta == meta and entries["head.weight"]["dtype"] == "F32"


def test_float64_model_and_overwrite(tmp_path):
    m = _model(cell="gru", dtype="float64", layers=2)
    path = tmp_path / "x.safetensors"
    save_model(path, _model(cell="rnn"))
    save_model(path, m)                                 # replaces the old file
    back = load_model(path)
    assert back.config.cell == "gru" and back.flat.dtype == np.float64
    np.testing.assert_array_equal(back.flat, m.flat)


def test_parameters_load_in_pytorch(tmp_path, model):
    torch = pytest.importorskip("torch", reason="torch is needed to load into PyTorch")
    from safetensors.torch import load_file

    path = tmp_path / "m.safetensors"
    save_model(path, model)
    sd = load_file(str(path))
    for name in model.param_names:
        assert sd[name].dtype == torch.float32
        np.testing.assert_array_equal(sd[name].numpy(), model.params[name])


def test_extra_tensor_names_are_checked(tmp_path, model):
    with pytest.raises(CheckpointError, match="name of a model parameter"):
        save_model(tmp_path / "a.safetensors", model,
                   extra_tensors={"head.weight": np.zeros(2)})
    with pytest.raises(CheckpointError, match="invalid extra tensor name"):
        save_model(tmp_path / "a.safetensors", model, extra_tensors={"__metadata__": np.zeros(2)})
    with pytest.raises(CheckpointError, match="cannot hold"):
        save_model(tmp_path / "a.safetensors", model,
                   extra_tensors={"c": np.zeros(2, np.complex128)})
    with pytest.raises(CheckpointError, match="JSON"):
        save_model(tmp_path / "a.safetensors", model, train_state={"x": object()})
    assert not (tmp_path / "a.safetensors").exists()


# ------------------------------------------------------------------ resolution

def test_resolve_files_and_run_dirs(tmp_path, model):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError) as ei:
        resolve_checkpoint(run)
    assert str(ei.value) == (f"{run}: no checkpoint in this directory "
                             "(expected best.safetensors or latest.safetensors)")
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError) as ei:
        load_model(missing)
    assert str(ei.value) == f"{missing}: no such file or directory"

    save_model(run / LATEST_NAME, model)
    assert resolve_checkpoint(run) == run / LATEST_NAME          # best missing: latest
    assert resolve_checkpoint(run, latest=True) == run / LATEST_NAME
    save_model(run / BEST_NAME, model)
    assert resolve_checkpoint(run) == run / BEST_NAME
    assert resolve_checkpoint(run, latest=True) == run / LATEST_NAME
    assert resolve_checkpoint(run / BEST_NAME, latest=True) == run / BEST_NAME
    os.unlink(run / LATEST_NAME)
    with pytest.raises(CheckpointError, match="no latest.safetensors in this directory"):
        resolve_checkpoint(run, latest=True)


# ------------------------------------------------------------------ damaged files

def test_zero_length_and_tiny_files(tmp_path):
    p = tmp_path / "empty.safetensors"
    p.write_bytes(b"")
    _raise(p, "empty file (0 bytes)")
    p.write_bytes(b"\x01\x02\x03")
    _raise(p, "truncated or not a checkpoint")


def test_truncated_at_every_point(tmp_path, saved):
    path, _, _ = saved
    data = path.read_bytes()
    bad = tmp_path / "cut.safetensors"
    for cut in range(len(data)):
        bad.write_bytes(data[:cut])
        _raise(bad)
    n = int.from_bytes(data[:8], "little")
    bad.write_bytes(data[:-1])
    _raise(bad, "file is truncated (its tensors need")
    bad.write_bytes(data[:8 + n // 2])
    _raise(bad, "does not fit")


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "noise.safetensors"
    for size in (1, 7, 8, 9, 64, 1000, 100_000):
        p.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        _raise(p)
    # plausible header length followed by garbage
    p.write_bytes((40).to_bytes(8, "little") + bytes(rng.integers(0, 256, 60, dtype=np.uint8)))
    _raise(p, "header is not valid JSON")


def test_header_length_claiming_gigabytes_is_refused_before_allocating(tmp_path, saved):
    import tracemalloc

    path, _, _ = saved
    data = path.read_bytes()
    p = tmp_path / "huge.safetensors"
    p.write_bytes((5 * 2 ** 30).to_bytes(8, "little") + data[8:])
    tracemalloc.start()
    try:
        msg = _raise(p, "header length field claims 5368709120 bytes")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
    assert "limit" in msg
    # under the cap but larger than the file
    p.write_bytes((50 * 2 ** 20).to_bytes(8, "little") + data[8:])
    _raise(p, "does not fit")


def test_flipped_byte_in_header_json(tmp_path, saved):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    data[8] ^= 0xFF                               # the opening '{'
    p = tmp_path / "flip.safetensors"
    p.write_bytes(bytes(data))
    _raise(p, "header is not valid JSON")


def test_flipped_byte_in_tensor_fails_its_checksum(tmp_path, saved):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    begin, end = json.loads(data[8:8 + n])["head.weight"]["data_offsets"]
    data[8 + n + begin + (end - begin) // 2] ^= 0x10
    p = tmp_path / "flip.safetensors"
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as ei:
        load_model(p)
    assert str(ei.value) == f"{p}: checkpoint is corrupt: tensor 'head.weight' fails its checksum"


def test_every_single_bit_flip_is_detected(tmp_path):
    small = _model(cell="rnn")
    src = tmp_path / "small.safetensors"
    save_model(src, small, train_state={"iteration": 3},
               extra_tensors={"optim.square_avg": np.ones(small.num_params, np.float32)})
    data = src.read_bytes()
    p = tmp_path / "flip.safetensors"
    n = int.from_bytes(data[:8], "little")
    data_positions = range(8 + n, len(data), 7)          # a sample of the tensor bytes
    for i in [*range(8 + n), *data_positions]:
        for bit in (0, 2, 5, 7):
            d = bytearray(data)
            d[i] ^= 1 << bit
            p.write_bytes(bytes(d))
            _raise(p)


def test_foreign_safetensors_files(tmp_path):
    p = tmp_path / "foreign.safetensors"
    p.write_bytes(st_save({"w": np.zeros((2, 2), np.float32)}))
    _raise(p, "not a charrnn checkpoint (no 'format' metadata)")
    p.write_bytes(st_save({"w": np.zeros(2, np.float32)}, metadata={"framework": "pt"}))
    _raise(p, "not a charrnn checkpoint (no 'format' metadata)")
    p.write_bytes(st_save({"w": np.zeros(2, np.float32)}, metadata={"format": "pt"}))
    _raise(p, "not a charrnn checkpoint (format 'pt')")


def test_future_format_version(tmp_path, saved):
    path, _, _ = saved
    p = _rewrite(path, tmp_path / "v2.safetensors", meta={"format_version": "2"})
    msg = _raise(p)
    assert msg == (f"{p}: written by a newer charrnn (format version 2; this charrnn reads 1): "
                   "upgrade charrnn")
    p = _rewrite(path, tmp_path / "vx.safetensors", meta={"format_version": "one"})
    _raise(p, "format_version 'one' is not a number")


def test_missing_and_misshaped_tensors(tmp_path, saved, model):
    path, _, _ = saved
    p = _rewrite(path, tmp_path / "miss.safetensors", tensors={"head.bias": None})
    with pytest.raises(CheckpointError) as ei:            # consistent file, wrong content:
        read_checkpoint(p)                                # refused from its header
    assert str(ei.value).startswith(f"{p}: checkpoint lacks tensor 'head.bias'")
    with pytest.raises(CheckpointError, match="lacks tensor 'head.bias'"):
        read_header(p)
    w = model.params["head.weight"]
    p = _rewrite(path, tmp_path / "shape.safetensors",
                 tensors={"head.weight": np.ascontiguousarray(w.T)})
    with pytest.raises(CheckpointError) as ei:
        load_model(p)
    assert str(ei.value) == (f"{p}: tensor 'head.weight' has shape {w.T.shape} but the config "
                             f"needs {w.shape}")


def test_dropped_tensor_with_old_checksums(tmp_path, saved):
    path, _, _ = saved
    p = _rewrite(path, tmp_path / "drop.safetensors", tensors={"head.bias": None},
                 fix_checksums=False)
    _raise(p, "checkpoint is corrupt: tensor 'head.bias' is missing")


def test_metadata_problems(tmp_path, saved):
    path, _, _ = saved
    p = _rewrite(path, tmp_path / "a.safetensors", drop_meta=("checksums",), fix_checksums=False)
    _raise(p, "checkpoint is corrupt: it has no checksums")
    p = _rewrite(path, tmp_path / "b.safetensors", meta={"created": "yesterday"},
                 fix_checksums=False)
    _raise(p, "checkpoint is corrupt: its metadata fails its checksum")
    cfg = json.loads(read_checkpoint(path).metadata["config"])
    p = _rewrite(path, tmp_path / "c.safetensors", meta={"config": json.dumps(dict(cfg, cell="x"))})
    _raise(p, "invalid model config")
    p = _rewrite(path, tmp_path / "d.safetensors", meta={"config": "{not json"})
    _raise(p, "its 'config' metadata is not JSON")
    p = _rewrite(path, tmp_path / "e.safetensors", meta={"train_state": "[1, 2]"})
    _raise(p, "train_state is not a JSON object")
    p = _rewrite(path, tmp_path / "f.safetensors", meta={"vocab": json.dumps({"bogus": 1})})
    _raise(p, "invalid vocabulary")
    p = _rewrite(path, tmp_path / "g.safetensors", drop_meta=("config",))
    _raise(p, "it has no model config")


def test_unsupported_dtype_in_hand_made_file(tmp_path):
    meta = {"format": "charrnn", "format_version": "1"}
    header = json.dumps({"__metadata__": meta,
                         "w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    p = tmp_path / "bf16.safetensors"
    p.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    _raise(p, "tensor 'w' has dtype 'BF16', which charrnn cannot read")
    header = json.dumps({"__metadata__": meta,
                         "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    p.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 12)
    _raise(p, "4 unexpected bytes after the tensor data")


def test_directory_given_as_file_path(tmp_path):
    d = tmp_path / "d.safetensors"
    d.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in this directory"):
        read_checkpoint(d)
