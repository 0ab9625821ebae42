"""The checkpoint format's fixed parts, shared by writing and reading: its names and
version, the safetensors dtypes charrnn uses, the checksums (crc32, or sha256 when a
digest has 64 hex digits) of tensors and metadata, and JSON parsing bounded in depth and
in the number of values it builds (a crafted file must not cost gigabytes to parse)."""
from __future__ import annotations

import hashlib
import json
import sys
import zlib
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

FORMAT = "charrnn"
FORMAT_VERSION = 1
KINDS = ("model", "training")
META_KEY = "__metadata__"

# safetensors dtype name -> numpy dtype (the ones charrnn reads and writes).
ST_DTYPES = {
    "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"), "I16": np.dtype("<i2"), "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"), "U8": np.dtype("u1"), "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"), "U64": np.dtype("<u8"), "BOOL": np.dtype("?"),
}
NP_KINDS = {dt.str.lstrip("<|"): name for name, dt in ST_DTYPES.items()}
#: JSON in the metadata nests at most this deep (charrnn writes 3 levels)
MAX_JSON_DEPTH = 32
#: parsing one JSON text (the header, or one metadata entry) builds at most this many
#: objects and numbers (a header has 1 object and 4 or 5 numbers a tensor) and lists,
#: and at most MAX_JSON_STRINGS strings (a vocabulary of every code point has 1.1M)
MAX_JSON_ITEMS = 1_000_000
MAX_JSON_STRINGS = 4_000_000


def err(path, msg: str) -> CheckpointError:
    return CheckpointError(f"{path}: {msg}")


def canonical(arr: np.ndarray) -> np.ndarray:
    """C-contiguous, little-endian: the bytes safetensors stores."""
    dt = arr.dtype
    if dt.byteorder == ">" or (dt.byteorder == "=" and sys.byteorder != "little"):
        dt = dt.newbyteorder("<")
    return np.ascontiguousarray(arr, dtype=dt)


def _crc32_hex(buf) -> str:
    return f"{zlib.crc32(buf) & 0xFFFFFFFF:08x}"


def tensor_digest(arr: np.ndarray, algo_len: int = 8) -> str:
    raw = canonical(arr).reshape(-1).view(np.uint8)   # (nbytes,)
    if algo_len == 64:
        return hashlib.sha256(raw).hexdigest()
    return _crc32_hex(raw)


def metadata_digest(meta: dict[str, str]) -> str:
    rest = {k: v for k, v in meta.items() if k != "checksums"}
    text = json.dumps(rest, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return _crc32_hex(text.encode("ascii"))


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


class TooLarge(Exception):
    pass


def bounded_json(text):
    """json.loads that builds at most MAX_JSON_ITEMS objects and numbers and refuses a
    text with more than MAX_JSON_ITEMS lists or 2 * MAX_JSON_STRINGS quotes (raising
    TooLarge), so that what parsing builds stays within a small multiple of the text:
    100 MB of ``{},`` or ``0.5,`` would otherwise become gigabytes of Python objects."""
    quote, bracket = ('"', "[") if isinstance(text, str) else (b'"', b"[")
    if text.count(quote) > 2 * MAX_JSON_STRINGS or text.count(bracket) > MAX_JSON_ITEMS:
        raise TooLarge
    made = 0

    def count(value):
        nonlocal made
        made += 1
        if made > MAX_JSON_ITEMS:
            raise TooLarge
        return value

    return json.loads(text, object_pairs_hook=lambda pairs: count(dict(pairs)),
                      parse_int=lambda t: count(int(t)), parse_float=lambda t: count(float(t)))


def loads(path: Path, text, what: str):
    """json.loads with every failure as one CheckpointError; nesting deeper than
    MAX_JSON_DEPTH is refused too (writing such an object out again would recurse), and
    so is a text that would build too many objects (:func:`bounded_json`)."""
    try:
        obj = bounded_json(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise err(path, f"checkpoint is corrupt: {what} is not JSON") from None
    except TooLarge:
        raise err(path, f"checkpoint is corrupt: {what} holds more JSON values than a "
                        "charrnn checkpoint has") from None
    if json_depth(obj, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise err(path, f"checkpoint is corrupt: {what} nests deeper than "
                        f"{MAX_JSON_DEPTH} levels")
    return obj



__all__ = ["FORMAT", "FORMAT_VERSION", "KINDS", "META_KEY", "ST_DTYPES", "NP_KINDS",
           "MAX_JSON_DEPTH", "MAX_JSON_ITEMS", "MAX_JSON_STRINGS", "err", "canonical",
           "tensor_digest", "metadata_digest", "json_depth", "TooLarge", "bounded_json",
           "loads"]
