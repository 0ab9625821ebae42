"""Loading charrnn's cached kernels without starting numba's compiler.

When numba loads a kernel from its cache (``Cache.load_overload``), it first calls the
target context's ``refresh()``, which

* imports every lowering registry numba has (numba.np.arraymath and linalg, the typed
  containers, the random generators, ...; with scipy installed, scipy.linalg too), and
* initialises the NRT, numba's runtime, by compiling its atomic reference-count
  functions from LLVM IR.

A cached kernel needs neither registry: it is object code, linked against the NRT's
functions and numba's C helpers.  Only the compiler needs the registries, and its
pipeline refreshes the context itself (``numba.core.compiler.CompilerBase``), so a kernel
that is not in the cache still compiles as before.  So :func:`fast_cache` gives a
charrnn dispatcher a cache whose ``load_overload`` only makes sure the NRT is ready, and
:func:`init_nrt` readies it from the NRT's object code, cached next to the kernels the
first time it is compiled (``nrt-*.bin``, keyed by numba and llvmlite versions and the
CPU; never pickled).

Measured on the 2-core AMD EPYC (Zen 3) of 2026-12-03, a fresh process loading one
cached kernel: 0.55 s and 27 MB anonymous + 39 MB file-backed resident memory with
numba's path, 0.04 s and 2 + 14 MB with this one; peak RSS of LSTM 2x512 training
(benchmarks/_worker.py rss) 371 -> 343 MB without the registries, 324 MB with the NRT
cached, 310 MB once the kernels' IR is kept as bitcode (with that day's smaller
training buffers, charrnn.model.cells).

Everything here falls back to numba's own path on any error, and :data:`ENABLED` (False
when ``CHARRNN_NUMBA_FASTLOAD=0``) turns it off.  ``STATS`` counts what happened (tests).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import types
from pathlib import Path

#: off with CHARRNN_NUMBA_FASTLOAD=0 (numba's own loading path, for comparison)
ENABLED = os.environ.get("CHARRNN_NUMBA_FASTLOAD", "1").strip() != "0"

#: counts: kernels loaded on the fast path, their IR kept as bitcode, kernels handed to
#: numba's path after an error; NRT initialised from the cached object code, compiled
#: (and cached), or by numba itself (a fallback)
STATS = {"fast_loads": 0, "deferred_modules": 0, "load_fallback": 0, "nrt_loaded": 0,
         "nrt_compiled": 0, "nrt_fallback": 0}

_MAGIC = b"charrnn-nrt-object-v1\n"


def _nrt_cache_path(codegen) -> Path:
    import llvmlite
    import numba

    from .runtime import numba_cache_dir

    key = repr((numba.__version__, llvmlite.__version__, codegen.magic_tuple()))
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return numba_cache_dir() / f"nrt-{digest}.bin"


def _pack(obj: bytes, bitcode: bytes) -> bytes:
    """The cache file: magic line, sha256 of the rest (32 bytes), object size (8 bytes
    little-endian), object code, bitcode."""
    body = struct.pack("<Q", len(obj)) + obj + bitcode
    return _MAGIC + hashlib.sha256(body).digest() + body


def _unpack(data: bytes) -> tuple[bytes, bytes]:
    """(object code, bitcode) of a cache file; ValueError unless it is whole."""
    head = len(_MAGIC) + 32
    if not data.startswith(_MAGIC) or len(data) < head + 8:
        raise ValueError("not a charrnn NRT cache file")
    body = data[head:]
    if hashlib.sha256(body).digest() != data[len(_MAGIC):head]:
        raise ValueError("damaged or truncated charrnn NRT cache file")
    (n,) = struct.unpack("<Q", body[:8])
    return body[8:8 + n], body[8 + n:]


def _register_symbols() -> None:
    """What NRT initialisation does besides compiling: the runtime's C functions."""
    import llvmlite.binding as ll
    from numba.core.runtime import _nrt_python as _nrt

    for py_name, address in _nrt.c_helpers.items():
        ll.add_symbol(py_name if py_name.startswith("_") else "NRT_" + py_name, address)


def _compile_nrt(ctx):
    """The NRT's functions compiled as numba compiles them, keeping the object code."""
    from numba.core.runtime import nrtdynmod

    ir_mod, library = nrtdynmod.create_nrt_module(ctx)
    library.add_ir_module(ir_mod)
    library.enable_object_caching()
    library.finalize()
    return library


def init_nrt(ctx) -> None:
    """Initialise numba's runtime (``rtsys.initialize(ctx)``) from cached object code."""
    from numba.core import config
    from numba.core.runtime import rtsys

    if rtsys._init:
        return
    if config.NRT_STATS:              # numba's path does the statistics set-up
        rtsys.initialize(ctx)
        STATS["nrt_fallback"] += 1
        return
    codegen = ctx.codegen()
    path = _nrt_cache_path(codegen)
    _register_symbols()
    library = None
    with contextlib.suppress(Exception):      # missing, stale or damaged: compile
        obj, bitcode = _unpack(path.read_bytes())
        library = codegen.unserialize_library(("nrt", "object", (obj, bitcode)))
        STATS["nrt_loaded"] += 1
    if library is None:
        library = _compile_nrt(ctx)
        STATS["nrt_compiled"] += 1
        _name, _kind, (obj, bitcode) = library.serialize_using_object_code()
        from ..store.fsutil import atomic_write_bytes

        with contextlib.suppress(Exception):      # read-only or full: compile next time
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, _pack(obj, bitcode))
    rtsys._library = library
    rtsys._init = True


def _load_overload(self, sig, target_context):
    """``Cache.load_overload`` without the context refresh (see the module docstring)."""
    try:
        init_nrt(target_context)
    except Exception:                 # anything unexpected: numba's own path
        STATS["nrt_fallback"] += 1
        return type(self).load_overload(self, sig, target_context)
    try:
        with self._guard_against_spurious_io_errors():
            out = self._load_overload(sig, target_context)
    except Exception:                 # a kernel that needs more: numba's own path
        STATS["load_fallback"] += 1
        return type(self).load_overload(self, sig, target_context)
    if out is not None:
        STATS["fast_loads"] += 1
        _defer_linking_module(out.library)
    return out


def _defer_linking_module(library) -> None:
    """Keep a loaded kernel's IR (the "shared module" numba parses from the cache so
    that code compiled later can link the kernel in) as bitcode, parsed again only when
    something is compiled against it: the IR of LSTM training's eight kernels takes
    8 MB of memory parsed, 0.7 MB as bitcode."""
    import llvmlite.binding as ll

    module = getattr(library, "_shared_module", None)
    if module is None or not hasattr(library, "_get_module_for_linking"):
        return
    bitcode = module.as_bitcode()
    library._shared_module = None

    def module_for_linking():
        if library._shared_module is None:
            library._shared_module = ll.parse_bitcode(bitcode)
        return library._shared_module

    library._get_module_for_linking = module_for_linking
    STATS["deferred_modules"] += 1


def fast_cache(dispatcher):
    """``dispatcher`` (a numba ``@njit(cache=True)`` function), loading from its cache on
    the fast path when :data:`ENABLED`; unchanged otherwise."""
    cache = getattr(dispatcher, "_cache", None)
    if (ENABLED and cache is not None and hasattr(cache, "_load_overload")
            and hasattr(cache, "_guard_against_spurious_io_errors")):
        cache.load_overload = types.MethodType(_load_overload, cache)
    return dispatcher
