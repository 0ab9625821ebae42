"""Hostile checkpoints: crafted files, re-signed with charrnn's own checksums, must never
crash, hang or exhaust memory (issue 29, the checkpoint-loading part).

One tiny model is trained once; every case rewrites its latest.safetensors (config,
vocabulary, train_state, tensor table, tensor values, raw header bytes) and signs the
result again, so the checksums pass and only the loading checks stand in the way.

Each case runs ``info``, ``info --json``, ``sample -n 5``, ``eval`` (on a small text
file), ``train --init-from`` and a resume (the case as a run directory's
latest.safetensors).  All of them run in one driver process (this file run as a script)
that imports charrnn once and forks one child per command: under an address-space limit
(RLIMIT_AS), with stdin closed, stdout and stderr in files, killed after a timeout, its
peak RSS measured with wait4.  Every command must end cleanly (exit 0 or 1, no signal,
no traceback, no "internal error", at most one ``Error:`` line, in time and memory,
strict JSON from ``--json``); the commands a case names (all by default) must exit 1
with exactly one ``Error:`` line.  The untouched, re-signed base is the control: every
command succeeds under the same limits.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ADDRESS_SPACE = 2 * 2 ** 30        # RLIMIT_AS of every command
TIMEOUT_S = 60                     # a command still running then is a hang
MAX_RSS = 1024 * 2 ** 20           # peak resident memory of any command
COMMANDS = ("info", "json", "sample", "eval", "init", "resume")
DEEP = 20_000                      # nesting that overflows Python's recursion limit


# ---------------------------------------------------------------------- crafting

def _read(path):
    """(metadata, {name: array}) of a safetensors file, read without charrnn."""
    from safetensors.numpy import load as st_load

    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + n])["__metadata__"]
    return meta, {k: np.array(v) for k, v in st_load(data).items()}


def _sign(meta: dict, tensors: dict) -> dict:
    """``meta`` with a checksum table that charrnn accepts for ``tensors``."""
    from charrnn.store import ckpt_format

    meta = {k: v for k, v in meta.items() if k != "checksums"}
    sums = {k: ckpt_format.tensor_digest(v) for k, v in tensors.items()}
    sums["__metadata__"] = ckpt_format.metadata_digest(meta)
    meta["checksums"] = json.dumps(sums)
    return meta


def craft(base, dst, meta=None, tensors=None, drop_meta=(), json_fields=None):
    """Rewrite ``base`` into ``dst``: metadata entries replaced (``meta``) or removed
    (``drop_meta``), JSON metadata fields changed (``json_fields``: key -> function of
    the parsed value returning the new value, or a string taken as the raw JSON text),
    tensors replaced or removed (value None); then re-signed."""
    from safetensors.numpy import save as st_save

    m, t = _read(base)
    for k in drop_meta:
        m.pop(k, None)
    for key, change in (json_fields or {}).items():
        m[key] = change if isinstance(change, str) else json.dumps(change(json.loads(m[key])))
    m.update(meta or {})
    for k, v in (tensors or {}).items():
        if v is None:
            t.pop(k)
        else:
            t[k] = np.ascontiguousarray(v) if np.ndim(v) else np.asarray(v)   # 0-d stays
    Path(dst).write_bytes(st_save(t, metadata=_sign(m, t)))
    return dst


def raw_file(dst, header: dict | str, data: bytes = b"", size: int | None = None):
    """A file of the safetensors layout with this exact header (a dict is dumped as
    JSON, a string is taken as is); ``size`` extends it, sparse, to that many bytes."""
    text = header if isinstance(header, str) else json.dumps(header)
    hb = text.encode("utf-8", "surrogatepass")
    with open(dst, "wb") as f:
        f.write(len(hb).to_bytes(8, "little") + hb + data)
        if size is not None:
            f.truncate(size)
    return dst


def _header_of(base):
    data = Path(base).read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def _with_config(**changes):
    return {"json_fields": {"config": lambda c: {**c, **changes}}}


def _with_ts(**changes):
    return {"json_fields": {"train_state": lambda s: {**s, **changes}}}


def _with_vocab(fn):
    return {"json_fields": {"vocab": fn}}


def _deep(n: int, inner: str = "0") -> str:
    return "[" * n + inner + "]" * n


def _chars_without_surrogates(n: int) -> list[str]:
    out, c = [], 0
    while len(out) < n:
        if not 0xD800 <= c <= 0xDFFF:
            out.append(chr(c))
        c += 1
    return out


def _sparse_giant(base, dst):
    """A consistent header for LSTM 2 x 16384 (about 13 GB of float32) over a sparse
    file of that size: every header check passes, the memory check must refuse it."""
    from charrnn.config import ModelConfig
    from charrnn.model.network import Model

    meta, _ = _read(base)
    cfg = {**json.loads(meta["config"]), "hidden_size": 16384, "num_layers": 2}
    layout = Model._make_layout(ModelConfig.from_dict(cfg))
    header, off = {}, 0
    for name, shape in layout:
        nbytes = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    m = {k: v for k, v in meta.items() if k not in ("checksums", "train_state")}
    m["kind"] = "model"
    m["config"] = json.dumps(cfg)
    sums = {name: "00000000" for name in header}
    from charrnn.store import ckpt_format

    sums["__metadata__"] = ckpt_format.metadata_digest(m)
    m["checksums"] = json.dumps(sums)
    header = {"__metadata__": m, **header}
    hb = json.dumps(header).encode()
    return raw_file(dst, header, size=8 + len(hb) + off)


def _nan_at(t, name, value, index=0):
    a = t[name].copy()
    a.reshape(-1)[index] = value
    return a


# name -> (builder(base, dst, tensors) -> path, expected message part or None,
#          commands that must fail (None: all of them))
CASES: dict = {}


def case(name, want=None, fail=None):
    def deco(fn):
        CASES[name] = (fn, want, fail)
        return fn
    return deco


def simple(name, want=None, fail=None, **kw):
    CASES[name] = (lambda base, dst, t: craft(base, dst, **kw), want, fail)


def tensor_case(name, want, make, fail=None):
    CASES[name] = (lambda base, dst, t: craft(base, dst, tensors=make(t)), want, fail)


# --- the model config: types and ranges, checked before anything is built
simple("hidden 8000", "has shape", **_with_config(hidden_size=8000))
simple("hidden 30000", "hidden_size must be an integer in [1, 16384]",
       **_with_config(hidden_size=30000))
simple("hidden true", "hidden_size must be an integer", **_with_config(hidden_size=True))
simple("hidden 1e100", "hidden_size must be an integer", **_with_config(hidden_size=1e100))
simple("hidden 16.0", "hidden_size must be an integer", **_with_config(hidden_size=16.0))
simple("hidden '16'", "hidden_size must be an integer", **_with_config(hidden_size="16"))
simple("hidden -16", "hidden_size must be an integer", **_with_config(hidden_size=-16))
simple("hidden 0", "hidden_size must be an integer", **_with_config(hidden_size=0))
simple("hidden null", "hidden_size must be an integer", **_with_config(hidden_size=None))
simple("layers 10**9", "num_layers must be an integer in [1, 64]",
       **_with_config(num_layers=10 ** 9))
simple("layers 65", "num_layers must be an integer in [1, 64]", **_with_config(num_layers=65))
simple("layers 2, tensors of 1", "lacks tensor 'rnn.weight_ih_l1'",
       **_with_config(num_layers=2))
simple("vocab_size 10**12", "vocab_size must be an integer", **_with_config(vocab_size=10 ** 12))
simple("vocab_size 0", "vocab_size must be >= 1", **_with_config(vocab_size=0))
simple("vocab_size V+1", "vocabulary has 45 symbols but the model config says vocab_size 46",
       **_with_config(vocab_size=46))
simple("embed -1", "embed_size must be an integer", **_with_config(embed_size=-1))
simple("embed 8, no embedding tensor", "lacks tensor 'embedding.weight'",
       **_with_config(embed_size=8))
simple("dropout NaN", "dropout must be a number",
       json_fields={"config": lambda c: {**c, "dropout": float("nan")}})
simple("dropout true", "dropout must be a number", **_with_config(dropout=True))
simple("peepholes 'yes'", "peepholes must be true or false", **_with_config(peepholes="yes"))
simple("cell transformer", "cell must be one of", **_with_config(cell="transformer"))
simple("cell ['lstm']", "cell must be a string", **_with_config(cell=["lstm"]))
simple("cell gru on LSTM tensors", "has shape", **_with_config(cell="gru"))
simple("dtype float16", "dtype must be one of", **_with_config(dtype="float16"))
simple("dtype float64 on F32 tensors", "has dtype float32 but the config says float64",
       **_with_config(dtype="float64"))
simple("config unknown field", "unknown ModelConfig field", **_with_config(evil=1))
simple("config is a list", "model config is not a JSON object", json_fields={"config": "[]"})
simple("config missing", "it has no model config", drop_meta=("config",))
simple("config not JSON", "'config' metadata is not JSON", json_fields={"config": "{nope"})
simple("config nested deeply", "'config' metadata is not JSON",
       json_fields={"config": '{"cell": ' + _deep(DEEP) + "}"})
simple("config of a megabyte", "its model config is",
       json_fields={"config": json.dumps({"cell": "lstm", "pad": "x" * 2 ** 20})})

# --- the vocabulary: its size is vocab_size, its entries are characters
simple("vocab shorter than V", "vocabulary has 44 symbols but the model config says "
       "vocab_size 45", **_with_vocab(lambda v: {**v, "chars": v["chars"][:-1]}))
simple("vocab longer than V", "vocabulary has 46 symbols",
       **_with_vocab(lambda v: {**v, "chars": v["chars"] + ["\u00e9"]}))
simple("newline at index 1,111,862", "more than a vocabulary of vocab_size 45",
       **_with_vocab(lambda v: {**v, "chars": _chars_without_surrogates(1_111_863)[11:]
                                + ["\n"]}))
simple("vocab of 5055, newline at 5054", "vocab_size 45",
       **_with_vocab(lambda v: {**v, "chars": _chars_without_surrogates(5065)[11:] + ["\n"]}))
simple("vocab of 45 without a newline", None, fail=(),      # consistent, foreign text
       **_with_vocab(lambda v: {**v, "chars": _chars_without_surrogates(5100)[5055:]}))
simple("vocab lone surrogate", "lone surrogate U+D800",
       **_with_vocab(lambda v: {**v, "chars": v["chars"][:-1] + ["\ud800"]}))
simple("vocab unknown symbol a surrogate", "lone surrogate U+DFFF",
       **_with_vocab(lambda v: {**v, "chars": v["chars"][:-1], "unk": "\udfff"}))
simple("vocab duplicate", "duplicate characters",
       **_with_vocab(lambda v: {**v, "chars": v["chars"][:-1] + [v["chars"][0]]}))
simple("vocab two-character entry", "single characters",
       **_with_vocab(lambda v: {**v, "chars": v["chars"][:-1] + ["ab"]}))
simple("vocab entry a number", "single characters",
       **_with_vocab(lambda v: {**v, "chars": v["chars"][:-1] + [7]}))
simple("vocab is a list", "invalid vocabulary", json_fields={"vocab": "[1, 2]"})
simple("vocab version 2", "newer than this charrnn", **_with_vocab(lambda v: {**v, "version": 2}))
simple("vocab empty", "invalid vocabulary", **_with_vocab(lambda v: {**v, "chars": []}))
simple("vocab nested deeply", "more than a vocabulary of vocab_size 45",
       json_fields={"vocab": '{"chars": ' + _deep(DEEP) + "}"})
simple("vocab nested 40 levels", "nests deeper than",
       json_fields={"vocab": '{"chars": ' + _deep(40) + "}"})

# --- tensors: names, dtypes, shapes from the header; finite values
tensor_case("tensor missing", "lacks tensor 'rnn.weight_hh_l0'",
            lambda t: {"rnn.weight_hh_l0": None})
tensor_case("head.weight transposed", "'head.weight' has shape (16, 45) but the config needs "
            "(45, 16)", lambda t: {"head.weight": t["head.weight"].T})
tensor_case("head.bias a scalar", "'head.bias' has shape ()",
            lambda t: {"head.bias": np.float32(0.5)})
tensor_case("head.weight int32", "has dtype int32",
            lambda t: {"head.weight": t["head.weight"].astype(np.int32)})
tensor_case("head.weight float64", "has dtype float64",
            lambda t: {"head.weight": t["head.weight"].astype(np.float64)})
tensor_case("head.weight float16", "has dtype float16",
            lambda t: {"head.weight": t["head.weight"].astype(np.float16)})
tensor_case("head.weight bool", "has dtype bool",
            lambda t: {"head.weight": t["head.weight"] > 0})
tensor_case("NaN weight", "'head.weight' holds nan",
            lambda t: {"head.weight": _nan_at(t, "head.weight", np.nan, 7)})
tensor_case("Inf weight", "'rnn.weight_hh_l0' holds inf",
            lambda t: {"rnn.weight_hh_l0": _nan_at(t, "rnn.weight_hh_l0", np.inf, 100)})
tensor_case("-Inf bias", "'rnn.bias_ih_l0' holds -inf",
            lambda t: {"rnn.bias_ih_l0": _nan_at(t, "rnn.bias_ih_l0", -np.inf, 63)})
tensor_case("all weights NaN", "holds nan",
            lambda t: {k: np.full_like(v, np.nan) for k, v in t.items()
                       if k.startswith(("rnn.", "head."))})
tensor_case("NaN optimizer moment", "'optim.exp_avg' holds nan",
            lambda t: {"optim.exp_avg": _nan_at(t, "optim.exp_avg", np.nan)})
tensor_case("NaN carried state", "'state.h' holds nan",
            lambda t: {"state.h": _nan_at(t, "state.h", np.nan)})
tensor_case("huge finite weights", None, fail=(),
            make=lambda t: {"head.weight": np.full_like(t["head.weight"], 3e38),
                            "rnn.weight_ih_l0": np.full_like(t["rnn.weight_ih_l0"], -3e38)})
tensor_case("optimizer moment of the wrong size", "optimizer tensor", fail=("resume",),
            make=lambda t: {"optim.exp_avg": t["optim.exp_avg"][:-1]})
tensor_case("carried state of the wrong shape", "carried state has the wrong shape",
            fail=("resume",), make=lambda t: {"state.h": t["state.h"][:, :2]})

# --- train_state: every field the trainer reads has the type it writes
simple("kind training without train_state", "without its train_state",
       drop_meta=("train_state",))
simple("kind unknown", "unknown kind", meta={"kind": "weights"})
simple("train_state a list", "train_state is not a JSON object",
       json_fields={"train_state": "[1, 2]"})
simple("train_state not JSON", "'train_state' metadata is not JSON",
       json_fields={"train_state": "{"})
simple("iteration Infinity", "'iteration' must be an integer",
       json_fields={"train_state": lambda s: {**s, "iteration": float("inf")}})
simple("iteration '5'", "'iteration' must be an integer", **_with_ts(iteration="5"))
simple("iteration 10**30", "'iteration' must be an integer", **_with_ts(iteration=10 ** 30))
simple("iteration true", "'iteration' must be an integer", **_with_ts(iteration=True))
simple("pos -3", "'pos' must be an integer", **_with_ts(pos=-3))
simple("epoch 1.5", "'epoch' must be an integer", **_with_ts(epoch=1.5))
simple("data_chars 'many'", "'data_chars' must be an integer", **_with_ts(data_chars="many"))
simple("best_val_loss 'low'", "'best_val_loss' must be a number",
       **_with_ts(best_val_loss="low"))
simple("best_val_loss NaN", "'best_val_loss' must be a number",
       json_fields={"train_state": lambda s: {**s, "best_val_loss": float("nan")}})
simple("elapsed Infinity", "'elapsed' must be a finite number",
       json_fields={"train_state": lambda s: {**s, "elapsed": float("inf")}})
simple("rng state too large", "'rng' is not a PCG64 random state",
       json_fields={"train_state": lambda s: {**s, "rng": {**s["rng"], "state": {
           "state": 2 ** 300, "inc": 1}}}})
simple("rng a string", "'rng' must be a JSON object", **_with_ts(rng="PCG64"))
simple("optimizer a string", "'optimizer' must be a JSON object", **_with_ts(optimizer="adam"))
simple("optimizer step_count -1", "invalid step_count", fail=("resume",),
       json_fields={"train_state": lambda s: {**s, "optimizer": {**s["optimizer"],
                                                                  "step_count": -1}}})
simple("train_config batch_size 0", "batch_size must be >= 1",
       json_fields={"train_state": lambda s: {**s, "train_config": {
           **s["train_config"], "batch_size": 0}}})
simple("train_config a list", "'train_config' must be a JSON object", **_with_ts(train_config=[]))
simple("data_dir with NUL", "'data_dir' must be a path", **_with_ts(data_dir="a\0b"))
simple("data_sources nested 500 levels", "nests deeper than",
       json_fields={"train_state": lambda s: {**s, "data_sources": json.loads(_deep(500))}})
simple("train_state of a million numbers", "'train_state' metadata holds more JSON values",
       json_fields={"train_state": '{"history": [' + "1.5, " * 1_100_000 + "0]}"})
simple("train_state nested deeply", "'train_state' metadata is not JSON",
       json_fields={"train_state": '{"a": ' + _deep(DEEP) + "}"})


# --- the header itself
@case("header nested deeply", "header is not valid JSON")
def _(base, dst, t):
    return raw_file(dst, '{"x": ' + _deep(DEEP) + "}")


@case("header of a million empty objects", "header holds more JSON values")
def _(base, dst, t):
    return raw_file(dst, '{"x": [' + "{}," * 1_100_000 + "{}]}")


@case("header of a million numbers", "header holds more JSON values")
def _(base, dst, t):
    return raw_file(dst, '{"x": [' + "0.5," * 1_100_000 + "0]}")


@case("header of 5 million strings", "header holds more JSON values")
def _(base, dst, t):
    return raw_file(dst, '{"x": [' + '"ab",' * 5_000_000 + "0]}")


@case("header is a list", "header is not a JSON object")
def _(base, dst, t):
    return raw_file(dst, "[]")


@case("header length 2**60", "header length field claims")
def _(base, dst, t):
    Path(dst).write_bytes((2 ** 60).to_bytes(8, "little") + b"{}")
    return dst


@case("header past the end", "does not fit")
def _(base, dst, t):
    Path(dst).write_bytes((10_000).to_bytes(8, "little") + b'{"__metadata__": {}}')
    return dst


@case("tensor claiming a terabyte", "file is truncated")
def _(base, dst, t):
    header, data = _header_of(base)
    e = header["head.weight"]
    begin, end = e["data_offsets"]
    grow = 4 * 2 ** 38 - (end - begin)
    e["shape"], e["data_offsets"] = [2 ** 38, 1], [begin, begin + 4 * 2 ** 38]
    for k, o in header.items():          # the tensors after it move up
        if k != "__metadata__" and o["data_offsets"][0] >= end:
            o["data_offsets"] = [x + grow for x in o["data_offsets"]]
    return raw_file(dst, header, data)


@case("tensor of 100000 dimensions", "malformed header entry")
def _(base, dst, t):
    header, data = _header_of(base)
    header["head.bias"]["shape"] = [1] * 100_000
    return raw_file(dst, header, data)


@case("negative shape", "malformed header entry")
def _(base, dst, t):
    header, data = _header_of(base)
    header["head.bias"]["shape"] = [-45]
    return raw_file(dst, header, data)


@case("overlapping offsets", "does not start where the previous one ends")
def _(base, dst, t):
    header, data = _header_of(base)
    a, b = header["head.bias"]["data_offsets"]
    header["head.bias"]["data_offsets"] = [a + 4, b + 4]
    return raw_file(dst, header, data)


@case("duplicate tensor key", "does not start where the previous one ends")
def _(base, dst, t):
    header, data = _header_of(base)
    text = json.dumps(header)
    dup = json.dumps({"dtype": "F32", "shape": [1], "data_offsets": [0, 4]})
    return raw_file(dst, text[:-1] + ', "head.bias": ' + dup + "}", data)


@case("metadata not a string map", "metadata is not a string map")
def _(base, dst, t):
    header, data = _header_of(base)
    header["__metadata__"]["format_version"] = 1
    return raw_file(dst, header, data)


@case("format_version of 5000 digits", "is not a number")
def _(base, dst, t):
    return craft(base, dst, meta={"format_version": "9" * 5000})


@case("checksum not hexadecimal", "fails its checksum")
def _(base, dst, t):
    header, data = _header_of(base)
    m = header["__metadata__"]
    sums = json.loads(m["checksums"])
    sums["head.bias"] = "zzzzzzzz"
    m["checksums"] = json.dumps(sums)
    return raw_file(dst, header, data)


@case("lone surrogate in 'created'", None, fail=())
def _(base, dst, t):
    header, data = _header_of(base)
    m = header["__metadata__"]
    m["created"] = "\udcff"
    m = _sign(m, {k: v for k, v in t.items()})
    header["__metadata__"] = m
    return raw_file(dst, json.dumps(header), data)


simple("rich markup in 'created'", None, fail=(), meta={"created": "[/]"})
simple("rich markup in the vocabulary", None, fail=(),
       **_with_vocab(lambda v: {**v, "chars": v["chars"][:-3] + ["[", "/", "]"]}))
simple("lone surrogate in a data_sources key", None, fail=(),
       json_fields={"train_state": lambda s: {**s, "data_sources": [{"\udc80": 1}]}})


@case("sparse 13 GB model", "of memory but only")
def _(base, dst, t):
    return _sparse_giant(base, dst)


# ---------------------------------------------------------------------- the driver

def _drive(spec_path: str) -> None:
    """Run every job of the spec in a forked child (see the module docstring) and write
    {id: {"rc", "signal", "timed_out", "seconds", "maxrss", "stderr"}} to spec["out"]."""
    import resource
    import signal
    import traceback

    spec = json.loads(Path(spec_path).read_text())
    os.environ["CHARRNN_THREADS"] = "1"
    os.environ.setdefault("NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING", "1")
    import charrnn.cli.app as cli
    from charrnn.kernels import runtime

    # Imported once here rather than in every child, but nothing that starts numba's
    # threads (runtime.ensure_numba, the kernel modules): a child of a process whose
    # OpenMP threads run is killed by GNU OpenMP.
    runtime._choose_cache_dir()
    import numba  # noqa: F401
    import charrnn.evaluate  # noqa: F401
    import charrnn.sampling  # noqa: F401
    import charrnn.training.loop  # noqa: F401

    jobs = list(spec["jobs"])
    tmp = Path(spec["tmp"])
    results, running = {}, {}
    while jobs or running:
        while jobs and len(running) < spec["parallel"]:
            job = jobs.pop(0)
            err = tmp / f"{job['id']}.err"
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:                               # the child: one command
                code = 70
                try:
                    lim = spec["address_space"]
                    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
                    os.chdir(job["cwd"])
                    fd_in = os.open(os.devnull, os.O_RDONLY)
                    fd_out = os.open(tmp / f"{job['id']}.out", os.O_WRONLY | os.O_CREAT)
                    fd_err = os.open(err, os.O_WRONLY | os.O_CREAT)
                    os.dup2(fd_in, 0)
                    os.dup2(fd_out, 1)
                    os.dup2(fd_err, 2)
                    try:
                        cli.main(job["argv"])
                    except SystemExit as e:
                        code = e.code if isinstance(e.code, int) else 1
                finally:
                    try:
                        if code == 70:
                            traceback.print_exc()
                        sys.stdout.flush()
                        sys.stderr.flush()
                    finally:
                        os._exit(code)
            running[pid] = (job, time.monotonic(), err)
        pid, status, ru = os.wait4(-1, os.WNOHANG)
        if pid == 0:
            now = time.monotonic()
            for p, (job, t0, _) in running.items():
                if now - t0 > spec["timeout"] and not job.get("killed"):
                    job["killed"] = True
                    os.kill(p, signal.SIGKILL)
            time.sleep(0.01)
            continue
        job, t0, err = running.pop(pid)
        results[job["id"]] = {
            "rc": os.waitstatus_to_exitcode(status),
            "timed_out": bool(job.get("killed")),
            "seconds": time.monotonic() - t0,
            "maxrss": ru.ru_maxrss * 1024,
            "stderr": err.read_text(encoding="utf-8", errors="replace"),
            "stdout": ((tmp / f"{job['id']}.out").read_text(encoding="utf-8", errors="replace")
                       if job["argv"][-1] == "--json" else None),
        }
    Path(spec["out"]).write_text(json.dumps(results))


# ---------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A trained LSTM 1 x 16 run directory, its prepared data and an eval text."""
    from conftest import make_text, run_cli

    root = tmp_path_factory.mktemp("hostile")
    (root / "corpus.txt").write_text(make_text(5000), encoding="utf-8")
    (root / "eval.txt").write_text(make_text(300, seed=1), encoding="utf-8")
    r = run_cli("train", root / "corpus.txt", "-o", root / "run", "--layers", "1",
                "--hidden", "16", "--max-iters", "5", "-b", "4", "-t", "16",
                "--eval-every", "5", "-q", env={"CHARRNN_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    return root


def _argv(root: Path, cmd: str, path: Path, work: Path) -> list[str]:
    data = str(root / "run" / "data")
    if cmd == "info":
        return ["info", str(path)]
    if cmd == "json":
        return ["info", str(path), "--json"]
    if cmd == "sample":
        return ["sample", str(path), "-n", "5", "--seed", "1"]
    if cmd == "eval":
        return ["eval", str(path), str(root / "eval.txt")]
    if cmd == "init":
        return ["train", data, "-o", str(work / "init"), "--init-from", str(path),
                "--max-iters", "1", "-b", "4", "-t", "16", "-q"]
    run = work / "resume"
    run.mkdir(parents=True, exist_ok=True)
    os.link(path, run / "latest.safetensors")
    return ["train", data, "-o", str(run), "--max-iters", "6", "-q"]


@pytest.fixture(scope="module")
def outcomes(base):
    """Every case's commands, run by the driver: {(case, command): result}."""
    crafted = base / "crafted"
    crafted.mkdir()
    src = base / "run" / "latest.safetensors"
    _, tensors = _read(src)
    paths = {"control": craft(src, crafted / "control.safetensors")}
    for i, (name, (build, _, _)) in enumerate(CASES.items()):
        paths[name] = build(src, crafted / f"case{i:03d}.safetensors", tensors)
    jobs = []
    for i, (name, path) in enumerate(paths.items()):
        work = base / "work" / f"{i:03d}"
        for cmd in _commands(i, name):
            jobs.append({"id": f"{i:03d}-{cmd}", "case": name, "cmd": cmd, "cwd": str(base),
                         "argv": _argv(base, cmd, path, work / cmd)})
    spec = {"jobs": jobs, "tmp": str(base / "work"), "out": str(base / "results.json"),
            "parallel": 2, "timeout": TIMEOUT_S, "address_space": ADDRESS_SPACE}
    (base / "spec.json").write_text(json.dumps(spec))
    r = subprocess.run([sys.executable, __file__, str(base / "spec.json")],
                       capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "CHARRNN_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((base / "results.json").read_text())
    return {(j["case"], j["cmd"]): res[j["id"]] for j in jobs}


def _commands(i: int, name: str) -> tuple:
    """The commands a case runs: `info --json` (the header checks), `sample` (the kernel)
    and `eval` always; the text `info` and the two training paths on every third case
    and on the cases that name the commands they fail (the suite's time budget)."""
    if name == "control" or i % 3 == 0 or CASES[name][2] is not None:
        return COMMANDS
    return ("json", "sample", "eval")


def _clean(name, cmd, r):
    where = f"{name} / {cmd}: {r}"
    assert not r["timed_out"], where
    assert r["rc"] >= 0, where                             # no death by signal
    assert r["rc"] in (0, 1), where
    assert "Traceback" not in r["stderr"] and "internal error" not in r["stderr"], where
    assert r["maxrss"] < MAX_RSS, where
    errors = [ln for ln in r["stderr"].splitlines() if ln.startswith("Error:")]
    assert len(errors) <= 1, where
    if r["stdout"] and r["rc"] == 0:                  # info --json: strict JSON only
        json.loads(r["stdout"], parse_constant=_refuse_constant)
    return errors


def _refuse_constant(name):
    raise AssertionError(f"bare {name} in JSON output")


def test_control_loads_everywhere_under_the_same_limits(outcomes):
    for cmd in COMMANDS:
        r = outcomes[("control", cmd)]
        assert _clean("control", cmd, r) == [] and r["rc"] == 0, (cmd, r)


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_checkpoint(outcomes, name):
    _, want, fail = CASES[name]
    fail = COMMANDS if fail is None else fail
    ran = [cmd for cmd in COMMANDS if (name, cmd) in outcomes]
    assert {"json", "sample", "eval"} <= set(ran)
    for cmd in ran:
        r = outcomes[(name, cmd)]
        errors = _clean(name, cmd, r)
        if cmd in fail:
            assert r["rc"] == 1 and len(errors) == 1, (name, cmd, r)
            if want is not None:
                assert want in errors[0], (name, cmd, errors[0])


# ---------------------------------------------------------------------- in process

def test_shapes_are_checked_before_anything_is_allocated(base, tmp_path):
    """hidden_size 8000 in a 60 kB file: refused from the header, with no model built
    (it used to reach 3.1 GB before the shape error)."""
    import tracemalloc

    from charrnn.store.checkpoint import read_checkpoint
    from charrnn.errors import CheckpointError

    p = craft(base / "run" / "latest.safetensors", tmp_path / "h.safetensors",
              **_with_config(hidden_size=8000))
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="has shape"):
            read_checkpoint(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000


def test_a_model_that_cannot_fit_is_refused_with_one_message(base, monkeypatch, invoke):
    from charrnn.store import checkpoint as ck

    src = base / "run" / "latest.safetensors"
    h = ck.inspect_header(src)
    assert ck.load_memory(h) == h.data_bytes + 2 * 4 * h.num_params
    assert ck.load_memory(h, model=False) == h.data_bytes
    monkeypatch.setattr(ck, "available_memory", lambda: 1000)
    for argv in (["info", src], ["sample", src, "-n", "3"]):
        code, out, err = invoke(argv)
        assert code == 1 and err.count("Error:") == 1, err
        assert "of memory but only 1000 bytes is available" in err, err
    monkeypatch.setattr(ck, "available_memory", lambda: None)     # unknown: no check
    assert ck.read_checkpoint(src).config.hidden_size == 16


def test_available_memory_respects_an_address_space_limit():
    from charrnn.store.checkpoint import available_memory

    code = ("import resource; from charrnn.store.checkpoint import available_memory; "
            "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
            "print(available_memory())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 0 < int(r.stdout) < 2 << 30
    assert available_memory() is None or available_memory() > 0


def test_info_json_is_strict_json(base, tmp_path, invoke):
    """NaN and infinities (a metrics line, a train_state) are null, never bare NaN."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    craft(base / "run" / "latest.safetensors", run / "latest.safetensors",
          json_fields={"train_state": lambda s: {**s, "best_val_loss": float("inf"),
                                                 "data_sources": [{"x": float("nan")}]}})
    shutil.copy(base / "run" / "metrics.jsonl", run / "metrics.jsonl")
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"iter": 9, "train_loss": NaN, "val_loss": Infinity}\n')
        f.write('{"iter": 10, "deep": ' + _deep(DEEP) + "}\n")
    code, out, err = invoke(["info", run, "--json"])
    assert code == 0, err

    def refuse(name):
        raise ValueError(f"bare {name} in the output")

    info = json.loads(out, parse_constant=refuse)
    assert info["training"]["best_val_loss"] is None
    assert info["training"]["data_sources"] == [{"x": None}]
    assert info["metrics"]["recent"][-1] == {"iter": 9, "train_loss": None, "val_loss": None}
    assert info["checksums"] == "verified"


def test_the_config_ranges_are_the_cli_ranges():
    """ModelConfig.validate and `charrnn train`'s options agree on every size."""
    import click

    from charrnn.cli.train import OPTIONS
    from charrnn.config import MAX_EMBED, MAX_HIDDEN, MAX_LAYERS, ModelConfig
    from charrnn.errors import ConfigError

    ranges = {name: (typ.min, typ.max) for _, section, name, typ, _ in OPTIONS
              if section == "model" and isinstance(typ, click.IntRange)}
    assert ranges == {"num_layers": (1, MAX_LAYERS), "hidden_size": (1, MAX_HIDDEN),
                      "embed_size": (0, MAX_EMBED)}
    for name, (lo, hi) in ranges.items():
        ModelConfig(vocab_size=3, **{name: lo}).validate()
        ModelConfig(vocab_size=3, **{name: hi}).validate()
        for bad in (lo - 1, hi + 1, True, float(hi), str(hi), None):
            with pytest.raises(ConfigError, match=f"{name} must be an integer"):
                ModelConfig(vocab_size=3, **{name: bad}).validate()


if __name__ == "__main__":
    _drive(sys.argv[1])
