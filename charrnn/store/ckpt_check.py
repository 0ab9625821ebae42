"""Reading and checking a checkpoint's header before any tensor data is read: the header
length against the file size, the JSON, the tensor table (dtypes, shapes, offsets tiling
the data), the checksum table and the metadata's own checksum, then the contents: the
kind, the model config (types and ranges, ModelConfig.validate), the vocabulary (its
size equals vocab_size, no lone surrogates), the train_state fields, and every model
parameter's name, dtype and shape against the config.  Every failure is one
CheckpointError line that starts with the file's path."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..errors import CharrnnError
from .ckpt_format import (FORMAT, FORMAT_VERSION, KINDS, META_KEY, NP_KINDS, ST_DTYPES,
                          TooLarge, bounded_json, err, loads, metadata_digest)

# A charrnn header is a few kB (tens of kB with a large Unicode vocabulary).
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: metadata texts parsed as JSON are refused above these sizes before they are parsed
#: (a real config is a few hundred bytes; a vocabulary is at most 16 bytes a symbol)
MAX_CONFIG_BYTES = 64 * 1024
_VOCAB_BYTES_PER_SYMBOL = 16
_VOCAB_BYTES_EXTRA = 1024
#: the largest integer a train_state counter may hold (it must fit an int64)
_MAX_COUNT = 2 ** 63 - 1


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

def open_checkpoint(path: Path):
    try:
        return open(path, "rb")
    except IsADirectoryError:
        raise err(path, "is a directory") from None
    except FileNotFoundError:
        raise err(path, "no such file or directory") from None
    except OSError as e:
        raise err(path, f"cannot read ({e.strerror or e})") from None


def read_exact(path: Path, f, n: int) -> bytearray:
    """``n`` bytes from ``f``, or a one-line error."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    try:
        while got < n:
            k = f.readinto(view[got:])
            if not k:
                raise err(path, "file changed while being read; try again")
            got += k
    except OSError as e:
        raise err(path, f"cannot read ({e.strerror or e})") from None
    finally:
        view.release()
    return buf

def _parse_header(path: Path, raw, data_len: int) -> tuple[dict[str, str], dict[str, dict]]:
    """Metadata and tensor entries of a safetensors header, checked for consistency with
    ``data_len`` bytes of tensor data."""
    try:
        header = bounded_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise err(path, "header is not valid JSON: the file is corrupt or not a "
                        "safetensors checkpoint") from None
    except TooLarge:
        raise err(path, "header holds more JSON values than a charrnn checkpoint has: "
                        "the file is corrupt or not a charrnn checkpoint") from None
    if not isinstance(header, dict):
        raise err(path, "header is not a JSON object: not a safetensors checkpoint")
    meta = header.get(META_KEY)
    if meta is None:
        raise err(path, "not a charrnn checkpoint (no 'format' metadata)")
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise err(path, "checkpoint is corrupt: its metadata is not a string map")
    fmt = meta.get("format")
    if fmt is None:
        raise err(path, "not a charrnn checkpoint (no 'format' metadata)")
    if fmt != FORMAT:
        raise err(path, f"not a charrnn checkpoint (format {fmt[:40]!r})")
    ver_text = meta.get("format_version", "")
    if not (ver_text.isascii() and ver_text.isdigit() and len(ver_text) <= 9):
        raise err(path, f"checkpoint is corrupt: format_version {ver_text[:40]!r} "
                        "is not a number")
    version = int(ver_text)
    if version > FORMAT_VERSION:
        raise err(path, f"written by a newer charrnn (format version {version}; this charrnn "
                        f"reads {FORMAT_VERSION}): upgrade charrnn")
    if version < 1:
        raise err(path, f"checkpoint is corrupt: format_version {version} is invalid")

    entries: dict[str, dict] = {}
    spans = []
    for name, e in header.items():
        if name == META_KEY:
            continue
        ok = (isinstance(e, dict) and isinstance(e.get("dtype"), str)
              and isinstance(e.get("shape"), list) and isinstance(e.get("data_offsets"), list)
              and len(e["data_offsets"]) == 2 and len(e["shape"]) <= 8
              and all(type(x) is int and x >= 0 for x in e["shape"] + e["data_offsets"]))
        if not ok:
            raise err(path, f"checkpoint is corrupt: malformed header entry for {name[:80]!r}")
        dt = ST_DTYPES.get(e["dtype"])
        if dt is None:
            raise err(path, f"tensor {name[:80]!r} has dtype {e['dtype'][:20]!r}, "
                            "which charrnn cannot read")
        begin, end = e["data_offsets"]
        nbytes = math.prod(e["shape"]) * dt.itemsize
        if end < begin or end - begin != nbytes:
            raise err(path, f"checkpoint is corrupt: tensor {name[:80]!r} has offsets "
                            f"{begin}..{end} for {nbytes} bytes of data")
        entries[name] = e
        spans.append((begin, end, name))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            raise err(path, f"checkpoint is corrupt: tensor {name[:80]!r} does not start "
                            "where the previous one ends")
        pos = end
    if pos > data_len:
        raise err(path, f"file is truncated (its tensors need {pos} bytes of data, "
                        f"{data_len} are present)")
    if pos < data_len:
        raise err(path, f"checkpoint is corrupt: {data_len - pos} unexpected bytes "
                        "after the tensor data")
    return meta, entries


def _check_sums_table(path: Path, meta: dict[str, str], entries: dict) -> dict[str, str]:
    """The checksum table: readable, one well-formed digest per tensor and none for a
    tensor the file lacks, and the metadata's own digest right."""
    raw = meta.get("checksums")
    if raw is None:
        raise err(path, "checkpoint is corrupt: it has no checksums")
    try:
        sums = bounded_json(raw)
    except (ValueError, RecursionError, TooLarge):
        sums = None
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        raise err(path, "checkpoint is corrupt: its checksums are not readable")
    if sums.get(META_KEY) != metadata_digest(meta):
        raise err(path, "checkpoint is corrupt: its metadata fails its checksum")
    for name in sorted(entries):
        want = sums.get(name)
        if want is None:
            raise err(path, f"checkpoint is corrupt: tensor {name[:80]!r} has no checksum")
        if len(want) not in (8, 64) or not all(c in "0123456789abcdef" for c in want):
            raise err(path, f"checkpoint is corrupt: tensor {name[:80]!r} fails its checksum")
    lost = sorted(set(sums) - set(entries) - {META_KEY})
    if lost:
        raise err(path, f"checkpoint is corrupt: tensor {lost[0][:80]!r} is missing")
    return sums


def _json_field(path: Path, meta: dict[str, str], key: str):
    return loads(path, meta[key], f"its {key!r} metadata")


def _check_config(path: Path, meta: dict[str, str]) -> ModelConfig:
    if "config" not in meta:
        raise err(path, "checkpoint is corrupt: it has no model config")
    if len(meta["config"]) > MAX_CONFIG_BYTES:
        raise err(path, f"checkpoint is corrupt: its model config is {len(meta['config'])} "
                        f"bytes (a config takes well under {MAX_CONFIG_BYTES})")
    cfg_dict = _json_field(path, meta, "config")
    if not isinstance(cfg_dict, dict):
        raise err(path, "checkpoint is corrupt: its model config is not a JSON object")
    try:
        config = ModelConfig.from_dict(cfg_dict)
    except (CharrnnError, TypeError) as e:
        raise err(path, f"invalid model config: {e}") from None
    if config.vocab_size < 1:
        raise err(path, "invalid model config: vocab_size must be >= 1 "
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
        raise err(path, f"invalid vocabulary: its metadata is {len(meta['vocab'])} bytes, "
                        f"more than a vocabulary of vocab_size {V} symbols can take")
    vd = _json_field(path, meta, "vocab")
    if isinstance(vd, dict):
        # Lone surrogates (U+D800..U+DFFF) are not characters: no text can hold them,
        # and they cannot be written out as UTF-8.
        chars = vd.get("chars")
        for c in (chars if isinstance(chars, list) else []) + [vd.get("unk")]:
            if _is_surrogate(c):
                raise err(path, f"invalid vocabulary: it holds the lone surrogate "
                                f"U+{ord(c):04X}, which is not a character")
    try:
        vocab = Vocab.from_dict(vd)
    except (CharrnnError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise err(path, f"invalid vocabulary: {e}") from None
    if len(vocab) != V:
        raise err(path, f"the vocabulary has {len(vocab)} symbols but the model config "
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
            raise err(path, "checkpoint is corrupt: a training checkpoint without "
                            "its train_state")
        return None
    ts = _json_field(path, meta, "train_state")
    if not isinstance(ts, dict):
        raise err(path, "checkpoint is corrupt: its train_state is not a JSON object")
    for key, (ok, what) in _TS_FIELDS.items():
        if key in ts and not ok(ts[key]):
            raise err(path, f"checkpoint is corrupt: train_state field {key!r} must be "
                            f"{what} (got {_shown(ts[key])})")
    if "rng" in ts:
        try:
            np.random.PCG64().state = ts["rng"]
        except (TypeError, ValueError, OverflowError, KeyError, RecursionError):
            raise err(path, "checkpoint is corrupt: train_state field 'rng' is not a "
                            "PCG64 random state") from None
    if "train_config" in ts:
        from ..config import TrainConfig

        try:
            TrainConfig.from_dict(ts["train_config"])
        except (CharrnnError, TypeError) as e:
            raise err(path, f"checkpoint is corrupt: invalid train_config in its "
                            f"train_state: {e}") from None
    return ts


def _check_params(path: Path, config: ModelConfig, entries: dict) -> tuple[list[str], int]:
    """Every parameter the config needs is in the tensor table with the config's dtype
    and shape (read from the header: nothing is allocated).  (names, bytes)."""
    from ..model.network import Model

    layout = Model._make_layout(config)          # at most a few hundred entries
    want_dtype = NP_KINDS[np.dtype(config.dtype).str.lstrip("<|")]
    missing = [n for n, _ in layout if n not in entries]
    if missing:
        raise err(path, f"checkpoint lacks tensor {missing[0]!r} that its config "
                        f"({config.cell}, {config.num_layers} layer(s) of "
                        f"{config.hidden_size}) needs"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    total = 0
    for name, shape in layout:
        e = entries[name]
        if tuple(e["shape"]) != tuple(shape):
            raise err(path, f"tensor {name!r} has shape {tuple(e['shape'])} but the config "
                            f"needs {tuple(shape)}")
        if e["dtype"] != want_dtype:
            raise err(path, f"tensor {name!r} has dtype {ST_DTYPES[e['dtype']].name} but "
                            f"the config says {config.dtype}")
        total += math.prod(shape) * np.dtype(config.dtype).itemsize
    return [n for n, _ in layout], total


def header_from(path: Path, f) -> Header:
    try:
        size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise err(path, f"cannot read ({e.strerror or e})") from None
    if size == 0:
        raise err(path, "empty file (0 bytes): not a checkpoint")
    if size < 8:
        raise err(path, f"file is truncated or not a checkpoint (only {size} bytes)")
    n = int.from_bytes(read_exact(path, f, 8), "little")
    if n > MAX_HEADER_BYTES:
        raise err(path, f"not a safetensors checkpoint (its header length field "
                        f"claims {n} bytes, over the {MAX_HEADER_BYTES} limit)")
    if 8 + n > size:
        raise err(path, f"file is truncated or not a checkpoint (header of {n} bytes "
                        f"does not fit in a {size}-byte file)")
    raw = read_exact(path, f, n)
    meta, entries = _parse_header(path, raw, size - 8 - n)
    del raw
    _check_sums_table(path, meta, entries)
    kind = meta.get("kind", "model")
    if kind not in KINDS:
        raise err(path, f"checkpoint is corrupt: unknown kind {kind[:40]!r}")
    config = _check_config(path, meta)
    vocab = _check_vocab(path, meta, config)
    train_state = _check_train_state(path, meta, kind)
    names, param_bytes = _check_params(path, config, entries)
    return Header(path=path, metadata=meta, entries=entries, config=config, vocab=vocab,
                  train_state=train_state, file_bytes=size, data_start=8 + n,
                  data_bytes=size - 8 - n, param_names=names, param_bytes=param_bytes)


__all__ = ["Header", "MAX_HEADER_BYTES", "MAX_CONFIG_BYTES", "open_checkpoint", "read_exact",
           "header_from"]
