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

from .. import __version__
from ..config import ModelConfig
from ..errors import CharrnnError, CheckpointError

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
    over ``path``, then the directory is fsynced (charrnn.store.fsutil.atomic_open): a crash
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

#: metadata texts parsed as JSON are refused above these sizes before they are parsed
#: (a real config is a few hundred bytes; a vocabulary is at most 16 bytes a symbol)
MAX_CONFIG_BYTES = 64 * 1024
#: JSON in the metadata nests at most this deep (charrnn writes 3 levels)
MAX_JSON_DEPTH = 32
#: parsing one JSON text (the header, or one metadata entry) builds at most this many
#: objects and numbers (a header has 1 object and 4 or 5 numbers a tensor) and lists,
#: and at most MAX_JSON_STRINGS strings (a vocabulary of every code point has 1.1M)
MAX_JSON_ITEMS = 1_000_000
MAX_JSON_STRINGS = 4_000_000
_VOCAB_BYTES_PER_SYMBOL = 16
_VOCAB_BYTES_EXTRA = 1024
#: the largest integer a train_state counter may hold (it must fit an int64)
_MAX_COUNT = 2 ** 63 - 1
#: elements checked at a time for NaN/Inf (bounds the temporary mask to 1 MB)
_FINITE_CHUNK = 1 << 20
#: headroom kept free when the memory a load needs is compared with what is available
_MEMORY_MARGIN = 64 * 2 ** 20


@dataclass
class Header:
    """A checkpoint's header after every check of :func:`inspect_header` (no tensor data
    read).  ``entries``: tensor name -> {"dtype", "shape", "data_offsets"}."""

    path: Path
    metadata: dict[str, str]
    entries: dict[str, dict]
    config: ModelConfig
    vocab: Any | None
    train_state: dict | None
    file_bytes: int
    data_start: int          # offset of the tensor data in the file (8 + header length)
    data_bytes: int
    param_names: list[str]
    param_bytes: int         # bytes of the model's parameters in the config's dtype

    @property
    def kind(self) -> str:
        return self.metadata.get("kind", "model")

    @property
    def num_params(self) -> int:
        return self.param_bytes // np.dtype(self.config.dtype).itemsize


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
    except ValueError as e:          # e.g. an embedded NUL in the path
        raise _err(p, f"invalid path ({e})") from None
    raise _err(p, "no such file or directory")


def _open(path: Path):
    try:
        return open(path, "rb")
    except IsADirectoryError:
        raise _err(path, "is a directory") from None
    except FileNotFoundError:
        raise _err(path, "no such file or directory") from None
    except OSError as e:
        raise _err(path, f"cannot read ({e.strerror or e})") from None


def _read_exact(path: Path, f, n: int) -> bytearray:
    """``n`` bytes from ``f``, or a one-line error."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    try:
        while got < n:
            k = f.readinto(view[got:])
            if not k:
                raise _err(path, "file changed while being read; try again")
            got += k
    except OSError as e:
        raise _err(path, f"cannot read ({e.strerror or e})") from None
    finally:
        view.release()
    return buf


def json_depth(obj, limit: int) -> int:
    """How deep lists and dicts nest in ``obj`` (a scalar is 0), counted without
    recursion and given up past ``limit`` (then limit + 1)."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (list, dict)):
            d += 1
            if d > limit:
                return d
            deepest = max(deepest, d)
            stack.extend((v, d) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


class _TooLarge(Exception):
    pass


def _bounded_json(text):
    """json.loads that builds at most MAX_JSON_ITEMS objects and numbers and refuses a
    text with more than MAX_JSON_ITEMS lists or 2 * MAX_JSON_STRINGS quotes (raising
    _TooLarge), so that what parsing builds stays within a small multiple of the text:
    100 MB of ``{},`` or ``0.5,`` would otherwise become gigabytes of Python objects."""
    quote, bracket = ('"', "[") if isinstance(text, str) else (b'"', b"[")
    if text.count(quote) > 2 * MAX_JSON_STRINGS or text.count(bracket) > MAX_JSON_ITEMS:
        raise _TooLarge
    made = 0

    def count(value):
        nonlocal made
        made += 1
        if made > MAX_JSON_ITEMS:
            raise _TooLarge
        return value

    return json.loads(text, object_pairs_hook=lambda pairs: count(dict(pairs)),
                      parse_int=lambda t: count(int(t)), parse_float=lambda t: count(float(t)))


def _loads(path: Path, text, what: str):
    """json.loads with every failure as one CheckpointError; nesting deeper than
    MAX_JSON_DEPTH is refused too (writing such an object out again would recurse), and
    so is a text that would build too many objects (:func:`_bounded_json`)."""
    try:
        obj = _bounded_json(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _err(path, f"checkpoint is corrupt: {what} is not JSON") from None
    except _TooLarge:
        raise _err(path, f"checkpoint is corrupt: {what} holds more JSON values than a "
                         "charrnn checkpoint has") from None
    if json_depth(obj, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise _err(path, f"checkpoint is corrupt: {what} nests deeper than "
                         f"{MAX_JSON_DEPTH} levels")
    return obj


def _parse_header(path: Path, raw, data_len: int) -> tuple[dict[str, str], dict[str, dict]]:
    """Metadata and tensor entries of a safetensors header, checked for consistency with
    ``data_len`` bytes of tensor data."""
    try:
        header = _bounded_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _err(path, "header is not valid JSON: the file is corrupt or not a "
                         "safetensors checkpoint") from None
    except _TooLarge:
        raise _err(path, "header holds more JSON values than a charrnn checkpoint has: "
                         "the file is corrupt or not a charrnn checkpoint") from None
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
        raise _err(path, f"not a charrnn checkpoint (format {fmt[:40]!r})")
    ver_text = meta.get("format_version", "")
    if not (ver_text.isascii() and ver_text.isdigit() and len(ver_text) <= 9):
        raise _err(path, f"checkpoint is corrupt: format_version {ver_text[:40]!r} "
                         "is not a number")
    version = int(ver_text)
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
              and len(e["data_offsets"]) == 2 and len(e["shape"]) <= 8
              and all(type(x) is int and x >= 0 for x in e["shape"] + e["data_offsets"]))
        if not ok:
            raise _err(path, f"checkpoint is corrupt: malformed header entry for {name[:80]!r}")
        dt = _ST_DTYPES.get(e["dtype"])
        if dt is None:
            raise _err(path, f"tensor {name[:80]!r} has dtype {e['dtype'][:20]!r}, "
                             "which charrnn cannot read")
        begin, end = e["data_offsets"]
        nbytes = math.prod(e["shape"]) * dt.itemsize
        if end < begin or end - begin != nbytes:
            raise _err(path, f"checkpoint is corrupt: tensor {name[:80]!r} has offsets "
                             f"{begin}..{end} for {nbytes} bytes of data")
        entries[name] = e
        spans.append((begin, end, name))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            raise _err(path, f"checkpoint is corrupt: tensor {name[:80]!r} does not start "
                             "where the previous one ends")
        pos = end
    if pos > data_len:
        raise _err(path, f"file is truncated (its tensors need {pos} bytes of data, "
                         f"{data_len} are present)")
    if pos < data_len:
        raise _err(path, f"checkpoint is corrupt: {data_len - pos} unexpected bytes "
                         "after the tensor data")
    return meta, entries


def _check_sums_table(path: Path, meta: dict[str, str], entries: dict) -> dict[str, str]:
    """The checksum table: readable, one well-formed digest per tensor and none for a
    tensor the file lacks, and the metadata's own digest right."""
    raw = meta.get("checksums")
    if raw is None:
        raise _err(path, "checkpoint is corrupt: it has no checksums")
    try:
        sums = _bounded_json(raw)
    except (ValueError, RecursionError, _TooLarge):
        sums = None
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        raise _err(path, "checkpoint is corrupt: its checksums are not readable")
    if sums.get(_META_KEY) != _metadata_digest(meta):
        raise _err(path, "checkpoint is corrupt: its metadata fails its checksum")
    for name in sorted(entries):
        want = sums.get(name)
        if want is None:
            raise _err(path, f"checkpoint is corrupt: tensor {name[:80]!r} has no checksum")
        if len(want) not in (8, 64) or not all(c in "0123456789abcdef" for c in want):
            raise _err(path, f"checkpoint is corrupt: tensor {name[:80]!r} fails its checksum")
    lost = sorted(set(sums) - set(entries) - {_META_KEY})
    if lost:
        raise _err(path, f"checkpoint is corrupt: tensor {lost[0][:80]!r} is missing")
    return sums


def _json_field(path: Path, meta: dict[str, str], key: str):
    return _loads(path, meta[key], f"its {key!r} metadata")


def _check_config(path: Path, meta: dict[str, str]) -> ModelConfig:
    if "config" not in meta:
        raise _err(path, "checkpoint is corrupt: it has no model config")
    if len(meta["config"]) > MAX_CONFIG_BYTES:
        raise _err(path, f"checkpoint is corrupt: its model config is {len(meta['config'])} "
                         f"bytes (a config takes well under {MAX_CONFIG_BYTES})")
    cfg_dict = _json_field(path, meta, "config")
    if not isinstance(cfg_dict, dict):
        raise _err(path, "checkpoint is corrupt: its model config is not a JSON object")
    try:
        config = ModelConfig.from_dict(cfg_dict)
    except (CharrnnError, TypeError) as e:
        raise _err(path, f"invalid model config: {e}") from None
    if config.vocab_size < 1:
        raise _err(path, "invalid model config: vocab_size must be >= 1 "
                         f"(got {config.vocab_size})")
    return config


def _is_surrogate(c) -> bool:
    return isinstance(c, str) and len(c) == 1 and 0xD800 <= ord(c) <= 0xDFFF


def _check_vocab(path: Path, meta: dict[str, str], config: ModelConfig):
    """The vocabulary, or None when the file stores none; its size must be vocab_size."""
    if "vocab" not in meta:
        return None
    from .vocab import Vocab

    V = config.vocab_size
    limit = _VOCAB_BYTES_PER_SYMBOL * (V + 1) + _VOCAB_BYTES_EXTRA
    if len(meta["vocab"]) > limit:
        raise _err(path, f"invalid vocabulary: its metadata is {len(meta['vocab'])} bytes, "
                         f"more than a vocabulary of vocab_size {V} symbols can take")
    vd = _json_field(path, meta, "vocab")
    if isinstance(vd, dict):
        # Lone surrogates (U+D800..U+DFFF) are not characters: no text can hold them,
        # and they cannot be written out as UTF-8.
        chars = vd.get("chars")
        for c in (chars if isinstance(chars, list) else []) + [vd.get("unk")]:
            if _is_surrogate(c):
                raise _err(path, f"invalid vocabulary: it holds the lone surrogate "
                                 f"U+{ord(c):04X}, which is not a character")
    try:
        vocab = Vocab.from_dict(vd)
    except (CharrnnError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise _err(path, f"invalid vocabulary: {e}") from None
    if len(vocab) != V:
        raise _err(path, f"the vocabulary has {len(vocab)} symbols but the model config "
                         f"says vocab_size {V}: the file is inconsistent")
    return vocab


def _shown(v, limit: int = 40) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_count(v) -> bool:
    return type(v) is int and 0 <= v <= _MAX_COUNT


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


# train_state field -> (check, what it must be); absent fields are not checked (a reader
# that needs one says so), present ones must have the type the trainer writes.
_TS_FIELDS = {
    **{k: (_is_count, f"an integer in [0, {_MAX_COUNT}]")
       for k in ("iteration", "epoch", "pos", "batches_per_epoch", "best_iteration",
                 "bad_evals", "chars_seen", "data_chars", "threads", "world_size")},
    "best_val_loss": (lambda v: v is None or _is_number(v), "a number or null"),
    "last_val_loss": (lambda v: v is None or _is_number(v), "a number or null"),
    "elapsed": (lambda v: _is_number(v) and 0 <= v < math.inf, "a finite number >= 0"),
    "optimizer": (lambda v: isinstance(v, dict), "a JSON object"),
    "rng": (lambda v: isinstance(v, dict), "a JSON object"),
    "train_config": (lambda v: isinstance(v, dict), "a JSON object"),
    "data_dir": (lambda v: v is None or (isinstance(v, str) and "\0" not in v),
                 "a path or null"),
    "data_sources": (lambda v: v is None or isinstance(v, list), "a list or null"),
    "stopped": (lambda v: v is None or isinstance(v, str), "a string or null"),
}


def _check_train_state(path: Path, meta: dict[str, str], kind: str) -> dict | None:
    if "train_state" not in meta:
        if kind == "training":
            raise _err(path, "checkpoint is corrupt: a training checkpoint without "
                             "its train_state")
        return None
    ts = _json_field(path, meta, "train_state")
    if not isinstance(ts, dict):
        raise _err(path, "checkpoint is corrupt: its train_state is not a JSON object")
    for key, (ok, what) in _TS_FIELDS.items():
        if key in ts and not ok(ts[key]):
            raise _err(path, f"checkpoint is corrupt: train_state field {key!r} must be "
                             f"{what} (got {_shown(ts[key])})")
    if "rng" in ts:
        try:
            np.random.PCG64().state = ts["rng"]
        except (TypeError, ValueError, OverflowError, KeyError, RecursionError):
            raise _err(path, "checkpoint is corrupt: train_state field 'rng' is not a "
                             "PCG64 random state") from None
    if "train_config" in ts:
        from ..config import TrainConfig

        try:
            TrainConfig.from_dict(ts["train_config"])
        except (CharrnnError, TypeError) as e:
            raise _err(path, f"checkpoint is corrupt: invalid train_config in its "
                             f"train_state: {e}") from None
    return ts


def _check_params(path: Path, config: ModelConfig, entries: dict) -> tuple[list[str], int]:
    """Every parameter the config needs is in the tensor table with the config's dtype
    and shape (read from the header: nothing is allocated).  (names, bytes)."""
    from ..model.network import Model

    layout = Model._make_layout(config)          # at most a few hundred entries
    want_dtype = _NP_KINDS[np.dtype(config.dtype).str.lstrip("<|")]
    missing = [n for n, _ in layout if n not in entries]
    if missing:
        raise _err(path, f"checkpoint lacks tensor {missing[0]!r} that its config "
                         f"({config.cell}, {config.num_layers} layer(s) of "
                         f"{config.hidden_size}) needs"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    total = 0
    for name, shape in layout:
        e = entries[name]
        if tuple(e["shape"]) != tuple(shape):
            raise _err(path, f"tensor {name!r} has shape {tuple(e['shape'])} but the config "
                             f"needs {tuple(shape)}")
        if e["dtype"] != want_dtype:
            raise _err(path, f"tensor {name!r} has dtype {_ST_DTYPES[e['dtype']].name} but "
                             f"the config says {config.dtype}")
        total += math.prod(shape) * np.dtype(config.dtype).itemsize
    return [n for n, _ in layout], total


def _header_from(path: Path, f) -> Header:
    try:
        size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise _err(path, f"cannot read ({e.strerror or e})") from None
    if size == 0:
        raise _err(path, "empty file (0 bytes): not a checkpoint")
    if size < 8:
        raise _err(path, f"file is truncated or not a checkpoint (only {size} bytes)")
    n = int.from_bytes(_read_exact(path, f, 8), "little")
    if n > MAX_HEADER_BYTES:
        raise _err(path, f"not a safetensors checkpoint (its header length field "
                         f"claims {n} bytes, over the {MAX_HEADER_BYTES} limit)")
    if 8 + n > size:
        raise _err(path, f"file is truncated or not a checkpoint (header of {n} bytes "
                         f"does not fit in a {size}-byte file)")
    raw = _read_exact(path, f, n)
    meta, entries = _parse_header(path, raw, size - 8 - n)
    del raw
    _check_sums_table(path, meta, entries)
    kind = meta.get("kind", "model")
    if kind not in KINDS:
        raise _err(path, f"checkpoint is corrupt: unknown kind {kind[:40]!r}")
    config = _check_config(path, meta)
    vocab = _check_vocab(path, meta, config)
    train_state = _check_train_state(path, meta, kind)
    names, param_bytes = _check_params(path, config, entries)
    return Header(path=path, metadata=meta, entries=entries, config=config, vocab=vocab,
                  train_state=train_state, file_bytes=size, data_start=8 + n,
                  data_bytes=size - 8 - n, param_names=names, param_bytes=param_bytes)


def inspect_header(path, latest: bool = False) -> Header:
    """Every check of a checkpoint that its header allows (see the comment above), with
    no tensor data read: a file that passes holds a model its config describes."""
    p = resolve_checkpoint(path, latest)
    with _open(p) as f:
        return _header_from(p, f)


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


def _fmt_bytes(n: float) -> str:
    if n >= 2 ** 30:
        return f"{n / 2 ** 30:.1f} GiB"
    return f"{n / 2 ** 20:.0f} MiB"


def load_memory(h: Header, model: bool = True) -> int:
    """Bytes that reading the checkpoint ``h`` needs: its tensor data, read once, plus
    (``model``) the Model built from it: the parameters and their gradients."""
    return h.data_bytes + (2 * h.param_bytes if model else 0)


def _check_memory(h: Header, model: bool) -> None:
    need = load_memory(h, model)
    avail = available_memory()
    if avail is not None and need + _MEMORY_MARGIN > avail:
        what = "its model" if model else "its tensors"
        raise _err(h.path, f"loading {what} needs about {_fmt_bytes(need)} of memory but "
                           f"only {_fmt_bytes(avail)} is available")


# ---------------------------------------------------------------------- tensors

def _decode(h: Header, buf: bytearray) -> dict[str, np.ndarray]:
    """Writable arrays over ``buf`` (no copies, except of a tensor whose offset is not a
    multiple of its item size)."""
    out = {}
    for name, e in h.entries.items():
        dt = _ST_DTYPES[e["dtype"]]
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
        if _tensor_digest(tensors[name], len(want)) != want:
            raise _err(h.path, f"checkpoint is corrupt: tensor {name!r} fails its checksum")


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
                raise _err(h.path, f"tensor {name!r} holds {flat[j]} at index {j}: weights "
                                   "and states must be finite numbers")


def read_checkpoint(path, latest: bool = False, model: bool = True) -> Checkpoint:
    """Read and fully verify a checkpoint (file or run directory): every header check
    (:func:`inspect_header`), the memory the tensors and (``model``) the model built from
    them need, every checksum, and finite values.  The file is opened once."""
    p = resolve_checkpoint(path, latest)
    with _open(p) as f:
        h = _header_from(p, f)
        _check_memory(h, model)
        buf = _read_exact(p, f, h.data_bytes)
        if f.read(1):
            raise _err(p, "file changed while being read; try again")
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


__all__ = ["Checkpoint", "Header", "save_model", "load_model", "read_checkpoint",
           "read_header", "inspect_header", "resolve_checkpoint", "model_from_checkpoint",
           "available_memory", "load_memory", "FORMAT", "FORMAT_VERSION", "BEST_NAME",
           "LATEST_NAME", "MAX_HEADER_BYTES", "MAX_JSON_DEPTH", "json_depth"]
