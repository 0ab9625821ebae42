"""Start-up (issue 31): what ``charrnn --help`` and ``charrnn sample`` import, and that the
lazily loaded command list reads as before.  Times are in benchmarks/startup.py, not
here: these tests check WHAT is loaded, in fresh interpreters."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from charrnn.cli import app

ROOT = Path(__file__).resolve().parent.parent

# runs charrnn's main with ARGV and prints, at exit, the modules the process imported
MODULES = r"""
import atexit, json, sys
def report():
    print(json.dumps(sorted(sys.modules)), file=sys.__stderr__)
atexit.register(report)
sys.argv = ["charrnn"] + ARGV
from charrnn.cli.app import main
main()
"""


def imported(*argv) -> set[str]:
    env = dict(os.environ, CHARRNN_THREADS="2")
    res = subprocess.run([sys.executable, "-c", MODULES.replace("ARGV", repr(list(argv)))],
                         capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return set(json.loads(res.stderr.strip().splitlines()[-1]))


COMMAND_MODULES = {f"charrnn.cli.{m}" for m, _ in app.COMMANDS.values()}
HEAVY = {"numpy", "numba", "llvmlite", "rich", "tqdm", "threadpoolctl", "safetensors"}


def test_help_imports_no_command_module_and_nothing_heavy():
    mods = imported("--help")
    assert not mods & COMMAND_MODULES
    assert not {m.split(".")[0] for m in mods} & HEAVY
    assert not {m for m in mods if m.startswith("charrnn.")} - {
        "charrnn.cli", "charrnn.cli.app", "charrnn.console", "charrnn.errors",
        "charrnn.kernels", "charrnn.kernels.runtime"}     # console: sys and time only


def test_a_command_imports_its_own_module_only():
    mods = imported("sample", "--help")
    assert mods & COMMAND_MODULES == {"charrnn.cli.sample"}
    assert not {m.split(".")[0] for m in mods} & HEAVY


def test_every_command_is_listed_with_its_own_help():
    """COMMANDS, which ``--help`` reads, names every command module and holds the first
    paragraph of each command's help."""
    modules = {p.stem for p in (ROOT / "charrnn" / "cli").glob("*.py")
               if "\ndef command(" in p.read_text(encoding="utf-8")}
    assert {m for m, _ in app.COMMANDS.values()} == modules
    for name, (_module, first) in app.COMMANDS.items():
        cmd = app.cli.commands[name]
        assert cmd.name == name
        assert cmd.help.split("\n\n")[0] == first, name
        assert cmd.short_help is None and not cmd.hidden and not cmd.deprecated


@pytest.mark.parametrize("width", [40, 60, 80, 100, 200])
def test_help_text_is_the_same_as_with_every_command_loaded(width):
    fresh = app.LazyGroup(name="charrnn", commands=app.LazyCommands(
        {n: m for n, (m, _) in app.COMMANDS.items()}), params=app.cli.params,
        help=app.cli.help, context_settings=app.cli.context_settings)
    lazy = CliRunner().invoke(fresh, ["--help"], terminal_width=width)
    assert not any(fresh.commands.is_loaded(n) for n in app.COMMANDS)
    eager = app.cli.__class__.__mro__[1](             # click.Group: click's own listing
        name="charrnn", commands={n: app.cli.commands[n] for n in app.COMMANDS},
        params=app.cli.params, help=app.cli.help, context_settings=app.cli.context_settings)
    full = CliRunner().invoke(eager, ["--help"], terminal_width=width)
    assert lazy.exit_code == full.exit_code == 0
    assert lazy.output == full.output
    assert "Commands:\n  eval " in lazy.output


def test_lazy_commands_mapping():
    cmds = app.LazyCommands({"sample": "sample"})
    assert "sample" in cmds and "nope" not in cmds and list(cmds) == ["sample"]
    assert not cmds.is_loaded("sample")
    assert cmds["sample"].name == "sample" and cmds.is_loaded("sample")
    assert cmds.get("nope") is None
    with pytest.raises(KeyError):
        cmds["nope"]
    del cmds["sample"]
    assert len(cmds) == 0


def test_unknown_command_is_a_usage_error(capsys):
    from conftest import run_main

    code, out, err = run_main(["sampel"], capsys)
    assert code == 2 and out == ""
    assert "No such command 'sampel'. Did you mean 'sample'?" in err


SAMPLER = r"""
import json, sys
from charrnn.config import ModelConfig
from charrnn.kernels import fastload
from charrnn.model.network import Model
from charrnn.sampling import generate_text
from charrnn.store.vocab import Vocab
m = Model.from_config(ModelConfig(cell="lstm", vocab_size=7, hidden_size=6, num_layers=2,
                                  dtype="float32"), seed=3)
m.vocab = Vocab(sorted("\nabcdef"))
text = "".join(v for kind, _i, v in generate_text(m, 20, seed=5) if kind == "text")
print(json.dumps({"text": text, "stats": fastload.STATS,
                  "arrayobj": "numba.np.arrayobj" in sys.modules,
                  "caches": sum(getattr(d, "_cache", None).__class__ is fastload.LazyCache
                                and d._cache._cache is not None
                                for mod in list(sys.modules.values())
                                if (mod.__name__ or "").startswith("charrnn.kernels.")
                                for d in vars(mod).values() if hasattr(d, "py_func"))}))
"""


def test_sampling_loads_only_what_it_calls():
    """From a warm cache: the generation kernel is loaded on the fast path, numba's
    numba.np.arrayobj is not imported for its helpers' environments, and the kernels
    the sampler does not call never make their cache objects."""
    env = dict(os.environ, CHARRNN_THREADS="2")
    outs = []
    for _ in range(2):                                 # the first run may compile
        res = subprocess.run([sys.executable, "-c", SAMPLER], capture_output=True,
                             text=True, env=env, timeout=600, cwd=ROOT)
        assert res.returncode == 0, res.stderr
        outs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    warm = outs[1]
    assert warm["text"] == outs[0]["text"] and len(warm["text"]) == 20
    assert warm["stats"]["fast_loads"] >= 1 and warm["stats"]["load_fallback"] == 0
    assert warm["stats"]["deferred_envs"] > 0 and not warm["arrayobj"]
    assert 1 <= warm["caches"] <= 2
    plain = subprocess.run([sys.executable, "-c", SAMPLER], capture_output=True, text=True,
                           env=dict(env, CHARRNN_NUMBA_FASTLOAD="0"), timeout=600, cwd=ROOT)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout.strip().splitlines()[-1])["text"] == warm["text"]
