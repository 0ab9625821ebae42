"""CLI conventions: help everywhere, fast import, usage errors (exit 2) name the option,
expected failures are one `Error:` line (exit 1), stdout carries data only."""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from click.testing import CliRunner

from charrnn import __version__
from charrnn.cli.app import cli

from conftest import run_main as invoke
from conftest import run_cli


def test_every_command_has_help():
    runner = CliRunner()
    assert set(cli.commands) >= {"train"}
    for name, cmd in cli.commands.items():
        res = runner.invoke(cli, [name, "--help"])
        assert res.exit_code == 0, name
        assert "Usage: " in res.output and cmd.help, name
        # every option documents itself
        for p in cmd.params:
            if hasattr(p, "help") and p.param_type_name == "option":
                assert p.help, f"{name} {p.opts} has no help"


def test_version(capsys):
    code, out, _ = invoke(["--version"], capsys)
    assert code == 0 and out.strip() == f"charrnn, version {__version__}"


def test_import_is_light():
    """`charrnn --help` must not pay for numpy or numba: importing the command line loads
    no package but click from outside the standard library."""
    code = ("import sys, charrnn.cli.app; "
            "print(sorted(m for m in ('numpy', 'numba', 'torch', 'safetensors') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
    # Against a bare interpreter's own start-up: a site hook (a .pth file) may import a
    # package before any of our code runs (CI's interpreter imports certifi that way).
    listing = ("print(sorted({m.split('.')[0] for m in sys.modules if not m.startswith('_')}"
               " - set(sys.stdlib_module_names)))")
    loaded = {}
    for name, pre in (("bare", "import sys; "), ("cli", "import sys, charrnn.cli.app; ")):
        out = subprocess.run([sys.executable, "-c", pre + listing], capture_output=True,
                             text=True, check=True).stdout
        loaded[name] = set(ast.literal_eval(out.strip()))
    assert loaded["cli"] - loaded["bare"] == {"charrnn", "click"}


@pytest.mark.parametrize("args, needle", [
    (["--lr", "nan"], "Invalid value for '--lr': 'nan' is not a finite number."),
    (["--lr", "0"], "Invalid value for '--lr': 0 is not in the valid range"),
    (["--batch-size", "0"], "Invalid value for '--batch-size' / '-b': 0 is not in the range"),
    (["--batch-size", str(10**9)], "Invalid value for '--batch-size' / '-b': 1000000000 is not in the range"),
    (["--hidden", str(10**6)], "Invalid value for '--hidden': 1000000 is not in the range"),
    (["--seq-len", "0"], "Invalid value for '--seq-len' / '-t': 0 is not in the range"),
    (["--dropout", "1"], "Invalid value for '--dropout': 1 is not in the valid range"),
    (["--max-time", "5 parsecs"], "Invalid value for '--max-time': '5 parsecs' is not a duration"),
    (["--cell", "transformer"], "Invalid value for '--cell': 'transformer' is not one of"),
])
def test_train_usage_errors(args, needle, capsys, tmp_path):
    code, out, err = invoke(["train", str(tmp_path / "x.txt"), "-o", str(tmp_path / "r"),
                             *args], capsys)
    assert code == 2
    assert needle in err
    assert out == ""


def test_valid_zero_values_are_accepted(capsys, tmp_path):
    # --dropout 0, --weight-decay 0, --embed 0 are valid: the failure is the missing file
    code, out, err = invoke(["train", str(tmp_path / "x.txt"), "-o", str(tmp_path / "r"),
                             "--dropout", "0", "--weight-decay", "0", "--embed", "0"], capsys)
    assert code == 1
    assert err == f"Error: {tmp_path / 'x.txt'}: no such file or directory\n"


def test_train_needs_data(capsys, tmp_path):
    code, _, err = invoke(["train", "-o", str(tmp_path / "r")], capsys)
    assert code == 2 and "give DATA" in err


def test_unknown_command(capsys):
    code, _, err = invoke(["trian"], capsys)
    assert code == 2 and "No such command 'trian'" in err


def test_duration_type():
    from charrnn.cli.types import Duration
    d = Duration()
    assert d.convert("90", None, None) == 90
    assert d.convert("30m", None, None) == 1800
    assert d.convert("2h", None, None) == 7200
    assert d.convert("1h30m", None, None) == 5400
    assert d.convert("1.5s", None, None) == 1.5


def test_missing_file_is_one_line_in_subprocess(tmp_path):
    res = run_cli("train", tmp_path / "nope.txt", "-o", tmp_path / "run")
    assert res.returncode == 1
    assert res.stderr == f"Error: {tmp_path / 'nope.txt'}: no such file or directory\n"
    assert res.stdout == ""
