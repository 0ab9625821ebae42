"""Checkpoints: one safetensors file per model, with string metadata.

Tensors: every model parameter under its PyTorch name (``rnn.weight_ih_l0``,
``head.weight``, ...; ``safetensors.torch.load_file`` gives a state dict), plus the
extra tensors a trainer passes (optimizer moments ``optim.*``, carried hidden state),
each in its own dtype.

Metadata (all strings, as safetensors requires):

==================  ===================================================================
``format``          ``"charrnn"``
``format_version``  ``"1"`` (a reader refuses a larger number: upgrade charrnn)
``kind``            ``"model"`` or ``"training"`` (has ``train_state``)
``config``          ModelConfig as JSON
``vocab``           Vocab.to_dict() as JSON (absent when the model has no vocabulary)
``train_state``     the trainer's JSON-able dict (absent in a ``model`` checkpoint)
``checksums``       JSON: tensor name -> crc32 of its raw little-endian bytes as 8 hex
                    digits (64 hex digits are read as sha256), plus ``__metadata__`` ->
                    crc32 of the other metadata entries as canonical JSON (sorted keys,
                    ASCII, no spaces), so a flipped byte anywhere is detected
``created``         ISO 8601 time of writing
``charrnn_version`` the version that wrote the file
==================  ===================================================================

Reading never trusts the file: the 8-byte header length is checked against the file
size and :data:`MAX_HEADER_BYTES` before anything is allocated, the header is parsed
and checked here (dtypes, shapes, offsets tiling the data exactly), then safetensors
decodes the tensors and every checksum is verified.  Every failure is one
:class:`~charrnn.errors.CheckpointError` line that starts with the file's path.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .config import ModelConfig
from .errors import CharrnnError, CheckpointError

FORMAT = "charrnn"
FORMAT_VERSION = 1
BEST_NAME = "best.safetensors"
LATEST_NAME = "latest.safetensors"
# A charrnn header is a few kB (tens of kB with a large Unicode vocabulary).
MAX_HEADER_BYTES = 100 * 1024 * 1024
KINDS = ("model", "training")
_META_KEY = "__metadata__"

# safetensors dtype name -> numpy dtype (the ones charrnn reads and writes).
_ST_DTYPES = {
    "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"), "I16": np.dtype("<i2"), "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"), "U8": np.dtype("u1"), "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"), "U64": np.dtype("<u8"), "BOOL": np.dtype("?"),
}
_NP_KINDS = {dt.str.lstrip("<|"): name for name, dt in _ST_DTYPES.items()}


@dataclass
class Checkpoint:
    """A checkpoint read and verified by :func:`read_checkpoint`."""

    path: Path
    config: ModelConfig
    vocab: Any | None
    train_state: dict | None
    tensors: dict[str, np.ndarray]
    metadata: dict[str, str] = field(repr=False)

    @property
    def kind(self) -> str:
        return self.metadata.get("kind", "model")

    @property
    def format_version(self) -> int:
        return int(self.metadata["format_version"])

    @property
    def created(self) -> str | None:
        return self.metadata.get("created")

    @property
    def charrnn_version(self) -> str | None:
        return self.metadata.get("charrnn_version")


# ---------------------------------------------------------------------- helpers

def _err(path, msg: str) -> CheckpointError:
    return CheckpointError(f"{path}: {msg}")


def _canonical(arr: np.ndarray) -> np.ndarray:
    """C-contiguous, little-endian: the bytes safetensors stores."""
    dt = arr.dtype
    if dt.byteorder == ">" or (dt.byteorder == "=" and sys.byteorder != "little"):
        dt = dt.newbyteorder("<")
    return np.ascontiguousarray(arr, dtype=dt)


def _crc32_hex(buf) -> str:
    return f"{zlib.crc32(buf) & 0xFFFFFFFF:08x}"


def _tensor_digest(arr: np.ndarray, algo_len: int = 8) -> str:
    raw = _canonical(arr).reshape(-1).view(np.uint8)   # (nbytes,)
    if algo_len == 64:
        return hashlib.sha256(raw).hexdigest()
    return _crc32_hex(raw)


def _metadata_digest(meta: dict[str, str]) -> str:
    rest = {k: v for k, v in meta.items() if k != "checksums"}
    text = json.dumps(rest, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return _crc32_hex(text.encode("ascii"))


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=True, default=_json_default)


def _st_dtype(arr: np.ndarray) -> str | None:
    return _NP_KINDS.get(arr.dtype.str.lstrip("<>|=")) if arr.dtype.kind in "fiub" else None


# ---------------------------------------------------------------------- writing

def save_model(path, model, train_state: dict | None = None,
               extra_tensors: dict | None = None) -> None:
    """Write ``model`` (and a trainer's state) to ``path`` atomically.

    The bytes go to a temporary file in the same directory, which is fsynced and renamed
    over ``path``, then the directory is fsynced (charrnn.fsutil.atomic_open): a crash
    leaves either the old file or the new one, never a partial one.
    """
    path = Path(path)
    tensors: dict[str, np.ndarray] = {}
    for name in model.param_names:
        tensors[name] = _canonical(np.asarray(model.params[name]))
    for name, value in (extra_tensors or {}).items():
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise CheckpointError(f"{path}: invalid extra tensor name {name!r}")
        if name in tensors:
            raise CheckpointError(
                f"{path}: extra tensor {name!r} has the name of a model parameter")
        arr = np.asarray(value)
        if _st_dtype(arr) is None:
            raise CheckpointError(
                f"{path}: extra tensor {name!r} has dtype {arr.dtype}, which a checkpoint "
                "cannot hold (use a float, integer or bool dtype)")
        tensors[name] = _canonical(arr)

    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "kind": "training" if train_state is not None else "model",
        "config": _dumps(model.config.to_dict()),
        "created": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "charrnn_version": __version__,
    }
    if getattr(model, "vocab", None) is not None:
        meta["vocab"] = _dumps(model.vocab.to_dict())
    if train_state is not None:
        if not isinstance(train_state, dict):
            raise CheckpointError(f"{path}: train_state must be a dict "
                                  f"(got {type(train_state).__name__})")
        try:
            meta["train_state"] = _dumps(train_state)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: train_state cannot be stored as JSON: {e}") from None
    sums = {name: _tensor_digest(arr) for name, arr in tensors.items()}
    sums[_META_KEY] = _metadata_digest(meta)
    meta["checksums"] = _dumps(sums)

    from safetensors.numpy import save as st_save

    data = st_save(tensors, metadata=meta)
    from .fsutil import atomic_open

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------- reading

def resolve_checkpoint(path, latest: bool = False) -> Path:
    """A file -> itself; a run directory -> its best (or latest) checkpoint."""
    p = Path(path)
    try:
        if p.is_dir():
            best, last = p / BEST_NAME, p / LATEST_NAME
            if latest:
                if last.is_file():
                    return last
                if best.is_file():
                    raise _err(p, f"no {LATEST_NAME} in this directory "
                                  f"({BEST_NAME} exists: leave out --latest to use it)")
            else:
                if best.is_file():
                    return best
                if last.is_file():
                    return last
            raise _err(p, f"no checkpoint in this directory "
                          f"(expected {BEST_NAME} or {LATEST_NAME})")
        if p.is_file():
            return p
        if p.exists():
            raise _err(p, "not a regular file")
    except OSError as e:
        raise _err(p, f"cannot access ({e.strerror or e})") from None
    raise _err(p, "no such file or directory")


def _read_bytes(path: Path) -> bytes:
    """The whole file, after checking the header length field against its size."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise _err(path, "empty file (0 bytes): not a checkpoint")
            if size < 8:
                raise _err(path, f"file is truncated or not a checkpoint (only {size} bytes)")
            head = f.read(8)
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES:
                raise _err(path, f"not a safetensors checkpoint (its header length field "
                                 f"claims {n} bytes, over the {MAX_HEADER_BYTES} limit)")
            if 8 + n > size:
                raise _err(path, f"file is truncated or not a checkpoint (header of {n} bytes "
                                 f"does not fit in a {size}-byte file)")
            data = head + f.read(size - 8)
    except IsADirectoryError:
        raise _err(path, "is a directory") from None
    except FileNotFoundError:
        raise _err(path, "no such file or directory") from None
    except OSError as e:
        raise _err(path, f"cannot read ({e.strerror or e})") from None
    if len(data) != size:
        raise _err(path, "file changed while being read; try again")
    return data


def _parse_header(path: Path, data: bytes) -> tuple[dict[str, str], dict[str, dict]]:
    """Metadata and tensor entries of a safetensors file, checked for consistency."""
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _err(path, "header is not valid JSON: the file is corrupt or not a "
                         "safetensors checkpoint") from None
    if not isinstance(header, dict):
        raise _err(path, "header is not a JSON object: not a safetensors checkpoint")
    meta = header.get(_META_KEY)
    if meta is None:
        raise _err(path, "not a charrnn checkpoint (no 'format' metadata)")
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise _err(path, "checkpoint is corrupt: its metadata is not a string map")
    fmt = meta.get("format")
    if fmt is None:
        raise _err(path, "not a charrnn checkpoint (no 'format' metadata)")
    if fmt != FORMAT:
        raise _err(path, f"not a charrnn checkpoint (format {fmt!r})")
    ver_text = meta.get("format_version", "")
    try:
        version = int(ver_text)
    except ValueError:
        raise _err(path, f"checkpoint is corrupt: format_version {ver_text!r} "
                         "is not a number") from None
    if version > FORMAT_VERSION:
        raise _err(path, f"written by a newer charrnn (format version {version}; this charrnn "
                         f"reads {FORMAT_VERSION}): upgrade charrnn")
    if version < 1:
        raise _err(path, f"checkpoint is corrupt: format_version {version} is invalid")

    entries: dict[str, dict] = {}
    spans = []
    for name, e in header.items():
        if name == _META_KEY:
            continue
        ok = (isinstance(e, dict) and isinstance(e.get("dtype"), str)
              and isinstance(e.get("shape"), list) and isinstance(e.get("data_offsets"), list)
              and len(e["data_offsets"]) == 2
              and all(type(x) is int and x >= 0 for x in e["shape"] + e["data_offsets"]))
        if not ok:
            raise _err(path, f"checkpoint is corrupt: malformed header entry for {name!r}")
        dt = _ST_DTYPES.get(e["dtype"])
        if dt is None:
            raise _err(path, f"tensor {name!r} has dtype {e['dtype']!r}, "
                             "which charrnn cannot read")
        begin, end = e["data_offsets"]
        nbytes = math.prod(e["shape"]) * dt.itemsize
        if end < begin or end - begin != nbytes:
            raise _err(path, f"checkpoint is corrupt: tensor {name!r} has offsets "
                             f"{begin}..{end} for {nbytes} bytes of data")
        entries[name] = e
        spans.append((begin, end, name))
    data_len = len(data) - 8 - n
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            raise _err(path, f"checkpoint is corrupt: tensor {name!r} does not start "
                             "where the previous one ends")
        pos = end
    if pos > data_len:
        raise _err(path, f"file is truncated (its tensors need {pos} bytes of data, "
                         f"{data_len} are present)")
    if pos < data_len:
        raise _err(path, f"checkpoint is corrupt: {data_len - pos} unexpected bytes "
                         "after the tensor data")
    return meta, entries


def _load_tensors(path: Path, data: bytes, entries: dict) -> dict[str, np.ndarray]:
    from safetensors.numpy import load as st_load

    try:
        loaded = st_load(data)
    except Exception as e:  # safetensors raises SafetensorError and friends
        raise _err(path, f"cannot decode the tensors ({e})") from None
    if set(loaded) != set(entries):
        raise _err(path, "checkpoint is corrupt: tensor table does not match the header")
    return {name: np.array(arr) for name, arr in loaded.items()}   # writable copies


def _verify(path: Path, meta: dict[str, str], tensors: dict[str, np.ndarray]) -> None:
    raw = meta.get("checksums")
    if raw is None:
        raise _err(path, "checkpoint is corrupt: it has no checksums")
    try:
        sums = json.loads(raw)
    except ValueError:
        sums = None
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        raise _err(path, "checkpoint is corrupt: its checksums are not readable")
    if sums.get(_META_KEY) != _metadata_digest(meta):
        raise _err(path, "checkpoint is corrupt: its metadata fails its checksum")
    for name in sorted(tensors):
        want = sums.get(name)
        if want is None:
            raise _err(path, f"checkpoint is corrupt: tensor {name!r} has no checksum")
        if len(want) not in (8, 64) or _tensor_digest(tensors[name], len(want)) != want:
            raise _err(path, f"checkpoint is corrupt: tensor {name!r} fails its checksum")
    lost = sorted(set(sums) - set(tensors) - {_META_KEY})
    if lost:
        raise _err(path, f"checkpoint is corrupt: tensor {lost[0]!r} is missing")


def _json_field(path: Path, meta: dict[str, str], key: str):
    try:
        return json.loads(meta[key])
    except ValueError:
        raise _err(path, f"checkpoint is corrupt: its {key!r} metadata is not JSON") from None


def read_header(path, latest: bool = False) -> tuple[Path, dict[str, str], dict[str, dict]]:
    """(resolved path, metadata, tensor entries) after the header checks; no tensors."""
    p = resolve_checkpoint(path, latest)
    data = _read_bytes(p)
    meta, entries = _parse_header(p, data)
    return p, meta, entries


def read_checkpoint(path, latest: bool = False) -> Checkpoint:
    """Read and fully verify a checkpoint (file or run directory)."""
    p = resolve_checkpoint(path, latest)
    data = _read_bytes(p)
    meta, entries = _parse_header(p, data)
    tensors = _load_tensors(p, data, entries)
    del data
    _verify(p, meta, tensors)

    kind = meta.get("kind", "model")
    if kind not in KINDS:
        raise _err(p, f"checkpoint is corrupt: unknown kind {kind!r}")
    if "config" not in meta:
        raise _err(p, "checkpoint is corrupt: it has no model config")
    cfg_dict = _json_field(p, meta, "config")
    if not isinstance(cfg_dict, dict):
        raise _err(p, "checkpoint is corrupt: its model config is not a JSON object")
    try:
        config = ModelConfig.from_dict(cfg_dict)
    except CharrnnError as e:
        raise _err(p, f"invalid model config: {e}") from None
    except TypeError as e:
        raise _err(p, f"invalid model config: {e}") from None

    vocab = None
    if "vocab" in meta:
        from .vocab import Vocab

        vd = _json_field(p, meta, "vocab")
        try:
            vocab = Vocab.from_dict(vd)
        except CharrnnError as e:
            raise _err(p, f"invalid vocabulary: {e}") from None
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise _err(p, f"invalid vocabulary: {e}") from None

    train_state = None
    if "train_state" in meta:
        train_state = _json_field(p, meta, "train_state")
        if not isinstance(train_state, dict):
            raise _err(p, "checkpoint is corrupt: its train_state is not a JSON object")
    return Checkpoint(path=p, config=config, vocab=vocab, train_state=train_state,
                      tensors=tensors, metadata=dict(meta))


def model_from_checkpoint(ck: Checkpoint):
    """A Model with the checkpoint's config, parameters and vocabulary."""
    from .model import Model

    try:
        model = Model.from_config(ck.config, seed=0)
    except CharrnnError as e:
        raise _err(ck.path, f"cannot build the model its config describes: {e}") from None
    cfg = ck.config
    missing = [n for n in model.param_names if n not in ck.tensors]
    if missing:
        raise _err(ck.path, f"checkpoint lacks tensor {missing[0]!r} that its config "
                            f"({cfg.cell}, {cfg.num_layers} layer(s) of {cfg.hidden_size}) "
                            "needs" + (f" (and {len(missing) - 1} more)" if len(missing) > 1
                                       else ""))
    for name in model.param_names:
        src = ck.tensors[name]
        dst = model.params[name]
        if tuple(src.shape) != tuple(dst.shape):
            raise _err(ck.path, f"tensor {name!r} has shape {tuple(src.shape)} but the config "
                                f"needs {tuple(dst.shape)}")
        if src.dtype.kind != "f":
            raise _err(ck.path, f"tensor {name!r} has dtype {src.dtype}, expected {cfg.dtype}")
    for name in model.param_names:
        model.params[name][...] = ck.tensors[name]
    model.vocab = ck.vocab
    return model


def load_model(path, latest: bool = False):
    """The Model stored at ``path`` (a checkpoint file or a run directory)."""
    return model_from_checkpoint(read_checkpoint(path, latest))


__all__ = ["Checkpoint", "save_model", "load_model", "read_checkpoint", "read_header",
           "resolve_checkpoint", "model_from_checkpoint", "FORMAT", "FORMAT_VERSION",
           "BEST_NAME", "LATEST_NAME", "MAX_HEADER_BYTES"]
