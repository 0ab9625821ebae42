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

Loading a kernel also rebuilds the "environment" of every function compiled into it,
numba's own helpers included, and numba imports each one's module for its globals
(``numba.core.environment._rebuild_env``): for the sampler that imported numba.np.arrayobj,
numba.cpython.unicode and more, about 50 ms.  Only object-mode code reads an
environment's globals (``numba.core.pylowering``); nopython kernels read its constants.
So on the fast path an environment whose module is not imported yet gets globals that
hold only ``__name__`` (enough to pickle it again), and the first compilation in the
process (numba's ``numba:compile`` event, before it compiles anything) imports those
modules and fills the globals in, as numba would have done at load time.  A loaded
kernel's IR is not parsed either: numba parses it to list the symbols it defines, and
that list is cached too (``symbols-*.json``, keyed by the bitcode; :func:`_unserialize`);
the IR is kept as the bitcode it was read from until code compiled later links against
it.  And a dispatcher makes its cache object only when first called (:class:`LazyCache`,
used by charrnn.kernels.jit): a command imports many more kernels than it calls.
Together, loading the sampler's kernel from a warm cache went from about 90 ms to 35 ms
(benchmarks/startup.py).

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
#: (and cached), or by numba itself (a fallback); environments whose module's import
#: was deferred, and those filled in since (at the first compilation); libraries whose
#: defined symbols came from charrnn's cache (their IR not parsed)
STATS = {"fast_loads": 0, "deferred_modules": 0, "load_fallback": 0, "nrt_loaded": 0,
         "nrt_compiled": 0, "nrt_fallback": 0, "deferred_envs": 0, "envs_filled": 0,
         "symbols_loaded": 0}

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
        with (self._guard_against_spurious_io_errors(), _deferring_environments(),
              _keeping_bitcode(target_context.codegen())):
            out = self._load_overload(sig, target_context)
    except Exception:                 # a kernel that needs more: numba's own path
        STATS["load_fallback"] += 1
        with contextlib.suppress(Exception):
            fill_deferred_environments()
        return type(self).load_overload(self, sig, target_context)
    if out is not None:
        STATS["fast_loads"] += 1
        _defer_linking_module(out.library)
    return out


#: environments rebuilt without their module's globals: (module name, globals dict)
_pending_envs: list = []


@contextlib.contextmanager
def _deferring_environments():
    """While a cached kernel is unpickled, environments of modules not imported yet are
    rebuilt by :func:`_rebuild_env_deferred` (the pickle names numba's function, looked
    up when it is loaded; loads run under numba's compiler lock)."""
    from numba.core import environment

    numba_rebuild = environment._rebuild_env
    if getattr(numba_rebuild, "__name__", "") != "_rebuild_env":   # not what we expect
        yield
        return
    _fill_envs_before_compiling()

    def rebuild(modname, consts, env_name):
        return _rebuild_env_deferred(environment, numba_rebuild, modname, consts, env_name)

    environment._rebuild_env = rebuild
    try:
        yield
    finally:
        environment._rebuild_env = numba_rebuild


@contextlib.contextmanager
def _keeping_bitcode(codegen):
    """While a cached kernel is unpickled, libraries made from object code go through
    :func:`_unserialize` (numba's ``unserialize_library`` is put back afterwards)."""
    numba_unserialize = codegen.unserialize_library
    own = vars(codegen).get("unserialize_library")

    def unserialize(serialized):
        return _unserialize(codegen, numba_unserialize, serialized)

    codegen.unserialize_library = unserialize
    try:
        yield
    finally:
        if own is None:
            del codegen.unserialize_library     # the class's method again
        else:
            codegen.unserialize_library = own


def _unserialize(codegen, numba_unserialize, serialized):
    """numba's ``CPUCodeLibrary._unserialize`` of a library cached as object code, without
    parsing its IR: numba parses the bitcode (25-30 ms for the sampler's kernel) only to
    list the symbols it defines (the JIT engine's ``_defined_symbols``, which
    ``get_pointer_to_function`` consults) and to keep the module for linking.  The list is
    cached here (:func:`_symbols_path`, keyed by the bitcode) the first time numba's path
    computes it; the module is parsed from the cached bitcode when something links
    against it (:func:`_link_from_bitcode`), so the IR is never written out again."""
    _name, kind, data = serialized
    if kind != "object":
        return numba_unserialize(serialized)
    object_code, bitcode = data
    engine = codegen._engine
    symbols = _read_symbols(bitcode)
    if symbols is None or not isinstance(getattr(engine, "_defined_symbols", None), set):
        library = numba_unserialize(serialized)
        with contextlib.suppress(Exception):      # read-only or full: numba's way next time
            _write_symbols(bitcode, library._shared_module)
        _link_from_bitcode(library, bitcode)
        return library
    library = codegen.create_library(_name)
    library.enable_object_caching()
    library._set_compiled_object(object_code)
    _link_from_bitcode(library, bitcode)
    library._finalize_final_module()
    engine._defined_symbols |= symbols
    STATS["symbols_loaded"] += 1
    return library


_SYMBOLS_MAGIC = b"charrnn-symbols-v1\n"


def _symbols_path(bitcode: bytes) -> Path:
    import llvmlite

    from .runtime import numba_cache_dir

    digest = hashlib.sha256(llvmlite.__version__.encode() + b"\0" + bitcode).hexdigest()
    return numba_cache_dir() / f"symbols-{digest[:32]}.json"


def _read_symbols(bitcode: bytes) -> set | None:
    """The symbols the module of ``bitcode`` defines, from the cache; None when missing,
    damaged or unreadable."""
    import json

    try:
        data = _symbols_path(bitcode).read_bytes()
        head = len(_SYMBOLS_MAGIC) + 32
        body = data[head:]
        if (not data.startswith(_SYMBOLS_MAGIC)
                or hashlib.sha256(body).digest() != data[len(_SYMBOLS_MAGIC):head]):
            return None
        names = json.loads(body.decode("utf-8"))
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            return None
        return set(names)
    except (OSError, ValueError):
        return None


def _defined_symbols(module) -> list:
    """What numba's ``JitEngine._load_defined_symbols`` takes from a module."""
    return sorted({gv.name for gsets in (module.functions, module.global_variables)
                   for gv in gsets if not gv.is_declaration})


def _write_symbols(bitcode: bytes, module) -> None:
    import json

    from ..store.fsutil import atomic_write_bytes

    body = json.dumps(_defined_symbols(module)).encode("utf-8")
    path = _symbols_path(bitcode)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _SYMBOLS_MAGIC + hashlib.sha256(body).digest() + body)


def _rebuild_env_deferred(environment, numba_rebuild, modname, consts, env_name):
    """numba's ``_rebuild_env`` without importing a module that is not imported yet."""
    import sys

    if (not isinstance(modname, str) or modname in sys.modules
            or environment.lookup_environment(env_name) is not None):
        return numba_rebuild(modname, consts, env_name)
    env = environment.Environment({"__name__": modname})
    env.consts[:] = consts
    env.env_name = env_name
    environment.Environment._memo[env_name] = env
    _pending_envs.append((modname, env.globals))
    STATS["deferred_envs"] += 1
    return env


def fill_deferred_environments() -> None:
    """Give every deferred environment its module's globals (imports the modules)."""
    import importlib

    while _pending_envs:
        modname, globals_ = _pending_envs.pop()
        globals_.update(importlib.import_module(modname).__dict__)
        STATS["envs_filled"] += 1


_listening = []


def _fill_envs_before_compiling() -> None:
    """Once per process: fill the deferred environments when numba starts compiling."""
    if _listening:
        return
    import numba.core.event as ev

    class _FillOnCompile(ev.Listener):
        def on_start(self, event):
            if _pending_envs:
                fill_deferred_environments()

        def on_end(self, event):
            pass

    _listening.append(_FillOnCompile())
    ev.register("numba:compile", _listening[0])


def _defer_linking_module(library) -> None:
    """Keep a loaded kernel's IR (the "shared module" numba parses from the cache so
    that code compiled later can link the kernel in) as bitcode, parsed again only when
    something is compiled against it: the IR of LSTM training's eight kernels takes
    8 MB of memory parsed, 0.7 MB as bitcode.  (Libraries read by :func:`_unserialize`
    are kept so already.)"""
    if not getattr(library, "_charrnn_deferred", False):
        module = getattr(library, "_shared_module", None)
        if module is None or not hasattr(library, "_get_module_for_linking"):
            return
        _link_from_bitcode(library, module.as_bitcode())
    STATS["deferred_modules"] += 1


def _link_from_bitcode(library, bitcode: bytes) -> None:
    """``library``'s module for linking (numba's ``_get_module_for_linking``) parsed from
    ``bitcode`` when first asked for."""
    import llvmlite.binding as ll

    library._shared_module = None

    def module_for_linking():
        if library._shared_module is None:
            library._shared_module = ll.parse_bitcode(bitcode)
        return library._shared_module

    library._get_module_for_linking = module_for_linking
    library._charrnn_deferred = True


def _patch(cache) -> None:
    if (ENABLED and cache is not None and hasattr(cache, "_load_overload")
            and hasattr(cache, "_guard_against_spurious_io_errors")):
        cache.load_overload = types.MethodType(_load_overload, cache)


def fast_cache(dispatcher):
    """``dispatcher`` (a numba ``@njit(cache=True)`` function), loading from its cache on
    the fast path when :data:`ENABLED`; unchanged otherwise."""
    _patch(getattr(dispatcher, "_cache", None))
    return dispatcher


class LazyCache:
    """A dispatcher's cache, made (numba's ``FunctionCache``, loading on the fast path)
    when the dispatcher first looks in it: making one locates the cache directory and
    tries writing there, about 0.2 ms a kernel, and a command calls few of the kernels
    it imports (the sampler one of 63).  numba's dispatchers use their ``_cache`` only
    through ``load_overload``, ``save_overload``, ``flush`` and ``cache_path``."""

    def __init__(self, py_func):
        self._py_func = py_func
        self._cache = None

    def _real(self):
        if self._cache is None:
            from numba.core.caching import FunctionCache

            cache = FunctionCache(self._py_func)
            _patch(cache)
            self._cache = cache
        return self._cache

    def load_overload(self, sig, target_context):
        return self._real().load_overload(sig, target_context)

    def save_overload(self, sig, data):
        return self._real().save_overload(sig, data)

    def flush(self):
        return self._real().flush()

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_cache", "_py_func"):
            raise AttributeError(name)
        return getattr(self._real(), name)


def lazy_cache(dispatcher):
    """``dispatcher`` (a numba ``@njit`` function made with ``cache=False``) with a
    :class:`LazyCache`: cached as with ``cache=True``, loading on the fast path."""
    if hasattr(dispatcher, "_cache") and hasattr(dispatcher, "py_func"):
        dispatcher._cache = LazyCache(dispatcher.py_func)
    return dispatcher
