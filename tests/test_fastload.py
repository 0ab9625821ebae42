"""charrnn.kernels.fastload: cached kernels load without numba's registries, from a cached NRT.

Each check runs in a fresh interpreter (what is loaded, and how, is decided once per
process) on a private copy of the suite's numba cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from charrnn.kernels import runtime

# Trains two steps of a small LSTM, prints the loss, the fastload counters and whether
# numba imported its lowering registries (numba.np.arraymath is one of them).
PROBE = r"""
import json, sys
import numpy as np
from charrnn.kernels import fastload
from charrnn.config import ModelConfig, TrainConfig
from charrnn.model.network import Model
from charrnn.model.optim import Optimizer
m = Model.from_config(ModelConfig(cell="lstm", vocab_size=7, hidden_size=6, num_layers=2,
                                  dtype="float32"), seed=3)
opt = Optimizer(TrainConfig(clip=5.0), m)
rng = np.random.default_rng(0)
x, y = rng.integers(0, 7, (4, 5)), rng.integers(0, 7, (4, 5))
state = m.initial_state(4)
for _ in range(2):
    loss, state = m.forward_backward(x, y, state)
    opt.step(m.flat, m.grad_flat, 1e-2)
EXTRA
print(json.dumps({"loss": float(loss), "flat": m.flat.tolist(), "stats": fastload.STATS,
                  "registries": "numba.np.arraymath" in sys.modules}))
"""

# Compiled in the probe process (never cached): a new function that calls a kernel the
# fast path loaded, so numba must link the kernel's IR into new code.
CALLER = r"""
from numba import njit
from charrnn.kernels.activations import exp_into
a = np.arange(3.0)
exp_into(a, 0.0, np.empty_like(a))          # from the cache (once it has this signature)
(lib,) = [c.library for c in exp_into.overloads.values()]
deferred = lib._shared_module is None
@njit
def caller(a):
    out = np.empty_like(a)
    return exp_into(a, 0.0, out), out
s, out = caller(a)
assert abs(s - np.exp(a).sum()) < 1e-12, s
assert lib._shared_module is not None       # parsed again to link caller
print(json.dumps({"deferred": deferred}))
"""


@pytest.fixture
def cache_dir(tmp_path):
    """A private copy of the suite's numba cache (these tests damage and remove its NRT
    files, which would disturb other charrnn processes using the shared one), laid out
    as NUMBA_CACHE_DIR lays it out: the kernels' folder path below the cache root."""
    import shutil

    runtime._choose_cache_dir()
    shared = runtime.numba_cache_dir()
    kernels = Path(runtime.__file__).resolve().parent
    from numba.core.caching import _CacheLocator

    root = tmp_path / "numba-cache"
    # where numba puts the kernels' cache under NUMBA_CACHE_DIR (its own rule)
    sub = _CacheLocator.get_suitable_cache_subpath(str(kernels / "cells.py"))
    inner = root / sub
    inner.mkdir(parents=True)
    if shared.resolve() == (kernels / "__pycache__").resolve():
        src = shared                              # the in-tree cache
    else:
        src = shared / sub
    for f in src.glob("*.nb[ic]") if src.is_dir() else ():
        shutil.copy2(f, inner / f.name)
    for f in [*shared.glob("nrt-*.bin"), *shared.glob("charrnn-*.compiled")]:
        shutil.copy2(f, root / f.name)
    return root


def probe(cache_dir: Path, extra: str = "", fastload: bool = True) -> dict:
    env = dict(os.environ, CHARRNN_THREADS="2", NUMBA_CACHE_DIR=str(cache_dir),
               CHARRNN_NUMBA_FASTLOAD="1" if fastload else "0")
    res = subprocess.run([sys.executable, "-c", PROBE.replace("EXTRA", extra)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    if len(lines) > 1:
        out.update(json.loads(lines[-2]))
    return out


def nrt_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("nrt-*.bin"))


def test_fast_path_loads_kernels_without_registries_and_same_numbers(cache_dir):
    probe(cache_dir)                                   # warms the private cache
    for f in nrt_files(cache_dir):
        f.unlink()
    first = probe(cache_dir)                           # NRT compiled, then cached
    assert first["stats"]["nrt_compiled"] == 1 and first["stats"]["nrt_loaded"] == 0
    assert len(nrt_files(cache_dir)) == 1
    fast = probe(cache_dir)
    assert fast["stats"]["nrt_loaded"] == 1 and fast["stats"]["nrt_compiled"] == 0
    assert fast["stats"]["fast_loads"] >= 5
    assert fast["stats"]["deferred_modules"] == fast["stats"]["fast_loads"]
    assert fast["stats"]["nrt_fallback"] == fast["stats"]["load_fallback"] == 0
    assert not fast["registries"]       # numba's lowering registries were never imported
    slow = probe(cache_dir, fastload=False)
    assert slow["stats"]["fast_loads"] == 0 and slow["registries"]
    # the same kernels, so the same bits
    assert fast["loss"] == slow["loss"] == first["loss"]
    assert fast["flat"] == slow["flat"] == first["flat"]


def test_code_compiled_later_links_a_fast_loaded_kernel(cache_dir):
    probe(cache_dir, extra=CALLER)                     # exp_into(float64 ...) cached
    out = probe(cache_dir, extra=CALLER)
    assert out["deferred"]                             # its IR was kept as bitcode
    assert out["stats"]["fast_loads"] >= 6 and out["stats"]["nrt_fallback"] == 0


# Environments of modules not imported at load time (numba's own helpers) are rebuilt
# without their globals; the first compilation imports the modules and fills them in.
ENVS = r"""
import numba.core.environment as E
from charrnn.kernels import fastload as F
envs = list(F._pending_envs)
imported_early = sorted({m for m, _ in envs if m in sys.modules})
EXTRA_CALLER
filled = all(g["__name__"] == m and m in sys.modules
             and g.keys() >= sys.modules[m].__dict__.keys() for m, g in envs)
print(json.dumps({"envs": len(envs), "imported_early": imported_early,
                  "filled": filled, "pending": len(F._pending_envs)}))
"""


def test_environments_are_filled_in_when_numba_compiles(cache_dir):
    extra = ENVS.replace("EXTRA_CALLER", CALLER.replace("print(json.dumps", "(json.dumps"))
    probe(cache_dir, extra=extra)                      # warm: exp_into(float64 ...) cached
    out = probe(cache_dir, extra=extra)
    assert out["envs"] > 0 and out["imported_early"] == []
    assert out["stats"]["deferred_envs"] == out["envs"]
    assert out["filled"] and out["pending"] == 0
    assert out["stats"]["envs_filled"] == out["envs"]
    plain = probe(cache_dir, extra="", fastload=False)
    assert plain["stats"]["deferred_envs"] == 0 and plain["loss"] == out["loss"]


# the JIT engine's list of defined symbols (what numba would have taken from the IR)
SYMBOLS = r"""
from numba.core.registry import cpu_target
names = sorted(cpu_target.target_context.codegen()._engine._defined_symbols)
print(json.dumps({"symbols": names}))
"""


def symbol_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("symbols-*.json"))


def test_symbol_lists_are_cached_and_the_same_as_numba_lists(cache_dir):
    """A kernel's IR is parsed only when its defined symbols are not cached yet; a
    missing, damaged or foreign list means numba's path (which writes it again)."""
    probe(cache_dir)                                   # warm
    for f in symbol_files(cache_dir):
        f.unlink()
    parsed = probe(cache_dir, extra=SYMBOLS)           # numba parses, lists are written
    assert parsed["stats"]["symbols_loaded"] == 0 and symbol_files(cache_dir)
    cached = probe(cache_dir, extra=SYMBOLS)
    assert cached["stats"]["symbols_loaded"] >= cached["stats"]["fast_loads"] >= 5
    assert cached["symbols"] == parsed["symbols"] and len(cached["symbols"]) > 10
    assert cached["loss"] == parsed["loss"] and cached["flat"] == parsed["flat"]
    files = symbol_files(cache_dir)
    files[0].write_bytes(files[0].read_bytes()[:-3] + b"]]]")       # damaged
    files[1].write_text("[]")                                     # not ours
    out = probe(cache_dir, extra=SYMBOLS)
    assert out["stats"]["symbols_loaded"] == cached["stats"]["symbols_loaded"] - 2
    assert out["symbols"] == parsed["symbols"] and out["loss"] == parsed["loss"]
    again = probe(cache_dir, extra=SYMBOLS)             # both written whole again
    assert again["stats"]["symbols_loaded"] == cached["stats"]["symbols_loaded"]


def test_damaged_nrt_cache_is_compiled_again(cache_dir):
    probe(cache_dir)
    (path,) = nrt_files(cache_dir)
    good = probe(cache_dir)
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))   # one bit flipped
    out = probe(cache_dir)
    assert out["stats"]["nrt_compiled"] == 1 and out["loss"] == good["loss"]
    path.write_bytes(data[:100])                       # truncated
    out = probe(cache_dir)
    assert out["stats"]["nrt_compiled"] == 1 and out["loss"] == good["loss"]
    path.write_bytes(b"not an NRT cache file")
    out = probe(cache_dir)
    assert out["stats"]["nrt_compiled"] == 1 and out["flat"] == good["flat"]
    again = probe(cache_dir)                           # rewritten whole
    assert again["stats"]["nrt_loaded"] == 1


def test_nrt_cache_file_format_round_trips():
    from charrnn.kernels import fastload

    data = fastload._pack(b"\x7fELF object", b"BC\xc0\xde")
    assert fastload._unpack(data) == (b"\x7fELF object", b"BC\xc0\xde")
    with pytest.raises(ValueError, match="not a charrnn NRT cache file"):
        fastload._unpack(b"garbage")
    for bad in (data[:-1], data[:-1] + b"X", data[:len(fastload._MAGIC) + 50]):
        with pytest.raises(ValueError, match="damaged or truncated"):
            fastload._unpack(bad)


def test_plain_numba_path_when_the_patch_does_not_apply(cache_dir):
    """If a numba release changes what fastload relies on, kernels load (or compile)
    through numba's own path and give the same numbers."""
    broken = ("from charrnn.kernels import fastload\n"
              "def _gone(*a, **k):\n"
              "    raise AttributeError('numba internals changed')\n"
              "fastload.init_nrt = _gone\n")
    code = PROBE.replace("import json, sys\n", "import json, sys\n" + broken, 1)
    env = dict(os.environ, CHARRNN_THREADS="2", NUMBA_CACHE_DIR=str(cache_dir))
    good = probe(cache_dir)
    res = subprocess.run([sys.executable, "-c", code.replace("EXTRA", "")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["stats"]["nrt_fallback"] >= 1 and out["stats"]["fast_loads"] == 0
    assert out["loss"] == good["loss"] and out["flat"] == good["flat"]
