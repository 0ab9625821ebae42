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

Reading never trusts the file (a crafted one can carry valid checksums): the 8-byte
header length is checked against the file size and :data:`MAX_HEADER_BYTES`, then the
header alone is parsed and checked (dtypes, shapes, offsets tiling the data exactly,
the checksum table, the config's types and ranges, the vocabulary's size against
``vocab_size``, the train_state's field types, every model parameter's name, dtype and
shape against the config).  Only then is the memory the load needs compared with what
is available, the tensor data read once, every checksum verified and every float
checked to be finite; nothing is built before all of that passed.  Every failure is one
:class:`~charrnn.errors.CheckpointError` line that starts with the file's path.
"""
from __future__ import annotations
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import ModelConfig
from ..errors import CharrnnError, CheckpointError
from ..units import fmt_bytes
from .ckpt_check import MAX_HEADER_BYTES, Header, header_from, open_checkpoint, read_exact
from .ckpt_format import (FORMAT, FORMAT_VERSION, MAX_JSON_DEPTH, META_KEY, NP_KINDS, ST_DTYPES,
                          canonical, err, json_depth, metadata_digest, tensor_digest)

BEST_NAME = "best.safetensors"
LATEST_NAME = "latest.safetensors"


@dataclass
class Checkpoint:
    """A checkpoint read and verified by :func:`read_checkpoint`."""

    path: Path
    config: ModelConfig
    vocab: Any | None
    train_state: dict | None
    tensors: dict[str, np.ndarray]
    metadata: dict[str, str] = field(repr=False)
    header: Any = field(default=None, repr=False, compare=False)   # the checked Header

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
    return NP_KINDS.get(arr.dtype.str.lstrip("<>|=")) if arr.dtype.kind in "fiub" else None


# ---------------------------------------------------------------------- writing

def save_model(path, model, train_state: dict | None = None,
               extra_tensors: dict | None = None) -> None:
    """Write ``model`` (and a trainer's state) to ``path`` atomically.

    The bytes go to a temporary file in the same directory, which is fsynced and renamed
    over ``path``, then the directory is fsynced (charrnn.store.fsutil.atomic_open): a crash
    leaves either the old file or the new one, never a partial one.
    """
    path = Path(path)
    tensors: dict[str, np.ndarray] = {}
    for name in model.param_names:
        tensors[name] = canonical(np.asarray(model.params[name]))
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
        tensors[name] = canonical(arr)

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
    sums = {name: tensor_digest(arr) for name, arr in tensors.items()}
    sums[META_KEY] = metadata_digest(meta)
    meta["checksums"] = _dumps(sums)

    from safetensors.numpy import save as st_save

    data = st_save(tensors, metadata=meta)
    from .fsutil import atomic_open

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------- reading
#
# A file is read in two stages, and nothing is built from it before both agree:
#
# 1. the header (``inspect_header``): its length against the file size and
#    MAX_HEADER_BYTES, the JSON, the tensor table (dtypes, shapes, offsets tiling the
#    data), the checksum table and the metadata's own checksum, then the contents: the
#    kind, the model config (types and ranges, ModelConfig.validate), the vocabulary
#    (its size equals vocab_size, no lone surrogates), the train_state fields, and every
#    model parameter's name, dtype and shape against the config.  Only the header's
#    bytes have been read, and no tensor or Model has been allocated.
# 2. the data (``read_checkpoint``): the memory it and the model need is estimated and
#    refused when it cannot fit, then the tensor bytes are read once, every checksum is
#    verified and every float tensor is checked to be finite.

#: elements checked at a time for NaN/Inf (bounds the temporary mask to 1 MB)
_FINITE_CHUNK = 1 << 20
#: headroom kept free when the memory a load needs is compared with what is available
_MEMORY_MARGIN = 64 * 2 ** 20


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
                    raise err(p, f"no {LATEST_NAME} in this directory "
                                 f"({BEST_NAME} exists: leave out --latest to use it)")
            else:
                if best.is_file():
                    return best
                if last.is_file():
                    return last
            raise err(p, f"no checkpoint in this directory "
                         f"(expected {BEST_NAME} or {LATEST_NAME})")
        if p.is_file():
            return p
        if p.exists():
            raise err(p, "not a regular file")
    except OSError as e:
        raise err(p, f"cannot access ({e.strerror or e})") from None
    except ValueError as e:          # e.g. an embedded NUL in the path
        raise err(p, f"invalid path ({e})") from None
    raise err(p, "no such file or directory")

def inspect_header(path, latest: bool = False) -> Header:
    """Every check of a checkpoint that its header allows (see the comment above), with
    no tensor data read: a file that passes holds a model its config describes."""
    p = resolve_checkpoint(path, latest)
    with open_checkpoint(p) as f:
        return header_from(p, f)


def read_header(path, latest: bool = False) -> tuple[Path, dict[str, str], dict[str, dict]]:
    """(resolved path, metadata, tensor entries) after the header checks; no tensors."""
    h = inspect_header(path, latest)
    return h.path, h.metadata, h.entries


# ---------------------------------------------------------------------- memory

def available_memory() -> int | None:
    """Bytes this process can still allocate: the system's MemAvailable, lowered to the
    room left under an address-space limit (ulimit -v) when there is one; None when
    neither can be read."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, ValueError):
        limit = None
    if limit is not None and limit != getattr(resource, "RLIM_INFINITY", -1) and limit > 0:
        used = _address_space_used()
        if used is not None:
            room = max(0, limit - used)
            avail = room if avail is None else min(avail, room)
    return avail


def _address_space_used() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_memory(h: Header, model: bool = True) -> int:
    """Bytes that reading the checkpoint ``h`` needs: its tensor data, read once, plus
    (``model``) the Model built from it: the parameters and their gradients."""
    return h.data_bytes + (2 * h.param_bytes if model else 0)


def _check_memory(h: Header, model: bool) -> None:
    need = load_memory(h, model)
    avail = available_memory()
    if avail is not None and need + _MEMORY_MARGIN > avail:
        what = "its model" if model else "its tensors"
        raise err(h.path, f"loading {what} needs about {fmt_bytes(need)} of memory but "
                          f"only {fmt_bytes(avail)} is available")


# ---------------------------------------------------------------------- tensors

def _decode(h: Header, buf: bytearray) -> dict[str, np.ndarray]:
    """Writable arrays over ``buf`` (no copies, except of a tensor whose offset is not a
    multiple of its item size)."""
    out = {}
    for name, e in h.entries.items():
        dt = ST_DTYPES[e["dtype"]]
        begin = e["data_offsets"][0]
        count = math.prod(e["shape"])
        arr = np.frombuffer(buf, dtype=dt, count=count, offset=begin).reshape(e["shape"])
        if begin % dt.itemsize:
            arr = arr.copy()
        out[name] = arr
    return out


def _verify_tensors(h: Header, tensors: dict[str, np.ndarray]) -> None:
    sums = json.loads(h.metadata["checksums"])           # checked by inspect_header
    for name in sorted(tensors):
        want = sums[name]
        if tensor_digest(tensors[name], len(want)) != want:
            raise err(h.path, f"checkpoint is corrupt: tensor {name!r} fails its checksum")


def _check_finite(h: Header, tensors: dict[str, np.ndarray]) -> None:
    for name in sorted(tensors):
        flat = tensors[name].reshape(-1)
        if flat.dtype.kind != "f":
            continue
        for i in range(0, flat.size, _FINITE_CHUNK):
            part = flat[i:i + _FINITE_CHUNK]
            ok = np.isfinite(part)
            if not ok.all():
                j = i + int(np.argmin(ok))
                raise err(h.path, f"tensor {name!r} holds {flat[j]} at index {j}: weights "
                                  "and states must be finite numbers")


def read_checkpoint(path, latest: bool = False, model: bool = True) -> Checkpoint:
    """Read and fully verify a checkpoint (file or run directory): every header check
    (:func:`inspect_header`), the memory the tensors and (``model``) the model built from
    them need, every checksum, and finite values.  The file is opened once."""
    p = resolve_checkpoint(path, latest)
    with open_checkpoint(p) as f:
        h = header_from(p, f)
        _check_memory(h, model)
        buf = read_exact(p, f, h.data_bytes)
        if f.read(1):
            raise err(p, "file changed while being read; try again")
    tensors = _decode(h, buf)
    _verify_tensors(h, tensors)
    _check_finite(h, tensors)
    return Checkpoint(path=p, config=h.config, vocab=h.vocab, train_state=h.train_state,
                      tensors=tensors, metadata=dict(h.metadata), header=h)


def model_from_checkpoint(ck: Checkpoint):
    """A Model with the checkpoint's config, parameters and vocabulary."""
    from ..model.network import Model

    try:
        model = Model(ck.config)
    except CharrnnError as e:
        raise err(ck.path, f"cannot build the model its config describes: {e}") from None
    cfg = ck.config
    missing = [n for n in model.param_names if n not in ck.tensors]
    if missing:
        raise err(ck.path, f"checkpoint lacks tensor {missing[0]!r} that its config "
                           f"({cfg.cell}, {cfg.num_layers} layer(s) of {cfg.hidden_size}) "
                           "needs" + (f" (and {len(missing) - 1} more)" if len(missing) > 1
                                      else ""))
    for name in model.param_names:
        src = ck.tensors[name]
        dst = model.params[name]
        if tuple(src.shape) != tuple(dst.shape):
            raise err(ck.path, f"tensor {name!r} has shape {tuple(src.shape)} but the config "
                               f"needs {tuple(dst.shape)}")
        if src.dtype.kind != "f":
            raise err(ck.path, f"tensor {name!r} has dtype {src.dtype}, expected {cfg.dtype}")
    for name in model.param_names:
        model.params[name][...] = ck.tensors[name]
    model.vocab = ck.vocab
    return model


def load_model(path, latest: bool = False):
    """The Model stored at ``path`` (a checkpoint file or a run directory)."""
    return model_from_checkpoint(read_checkpoint(path, latest))


__all__ = ["Checkpoint", "Header", "save_model", "load_model", "read_checkpoint",
           "read_header", "inspect_header", "resolve_checkpoint", "model_from_checkpoint",
           "available_memory", "load_memory", "FORMAT", "FORMAT_VERSION", "BEST_NAME",
           "LATEST_NAME", "MAX_HEADER_BYTES", "MAX_JSON_DEPTH", "json_depth"]