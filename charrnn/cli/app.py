"""The ``charrnn`` command: a thin layer over the library.

Each subcommand lives in ``charrnn/cli/<name>.py`` (parse options, call one library
function, format the result) and is registered here by name; the options they share
are in :mod:`charrnn.cli.options`, the parameter types in :mod:`charrnn.cli.types` and
the text-decoding and prepare options in :mod:`charrnn.cli.dataopts`.  This module
holds the group and :func:`main`, the one place where library errors become
``Error: ...`` lines and exit codes.  At start-up the cli modules import only click,
the standard library and charrnn's light ``config`` and ``errors``; numpy and numba
load inside the commands that need them, so ``charrnn --help`` stays fast.  A command's
module is imported only when that command runs or shows its help: ``charrnn --help``
lists the commands from :data:`COMMANDS` (name and first line of help) without importing
any of them (benchmarks/startup.py measures the start-up).
"""
from __future__ import annotations

import errno
import importlib
import os
import sys
from collections.abc import MutableMapping
from gettext import gettext

import click

from .. import __version__, console
from ..errors import CharrnnError, ExitStatus


def _debug_requested(argv) -> bool:
    if os.environ.get("CHARRNN_DEBUG", "") not in ("", "0"):
        return True
    return "--debug" in (argv if argv is not None else sys.argv[1:])


#: every subcommand: its module under charrnn.cli (which defines ``command``) and the first
#: paragraph of its help, which ``charrnn --help`` shows without importing the module
#: (tests/test_startup.py checks that each matches its command's docstring)
COMMANDS = {
    "eval": ("eval", "Score text with the model in CKPT: loss (nats/char), bpc and "
                     "perplexity."),
    "info": ("info", "Show what CKPT holds: config, parameters, vocabulary, training "
                     "progress."),
    "prepare": ("prepare", "Turn text into a data directory for `charrnn train`."),
    "sample": ("sample", "Generate text from the model in CKPT (a checkpoint file or a run "
                         "directory)."),
    "train": ("train", "Train a model on DATA and write checkpoints to RUN_DIR."),
}


class LazyCommands(MutableMapping):
    """The group's ``commands``: every name of :data:`COMMANDS` is in it from the start,
    and a command's module is imported when the command is first looked up."""

    def __init__(self, lazy: dict):
        self._lazy = dict(lazy)             # name -> module, not imported yet
        self._loaded: dict = {}

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def __getitem__(self, name):
        if name not in self._loaded:
            if name not in self._lazy:
                raise KeyError(name)
            module = importlib.import_module(f"{__package__}.{self._lazy[name]}")
            self._loaded[name] = module.command
        return self._loaded[name]

    def __setitem__(self, name, command) -> None:
        self._loaded[name] = command
        self._lazy.pop(name, None)

    def __delitem__(self, name) -> None:
        if name not in self:
            raise KeyError(name)
        self._loaded.pop(name, None)
        self._lazy.pop(name, None)

    def __contains__(self, name) -> bool:
        return name in self._loaded or name in self._lazy

    def __iter__(self):
        return iter(sorted(set(self._loaded) | set(self._lazy)))

    def __len__(self) -> int:
        return len(set(self._loaded) | set(self._lazy))


class _CtrlC(Exception):
    """Ctrl-C during a command, carried past click (which would print an empty line on
    stderr before its Abort) to main()."""


class LazyGroup(click.Group):
    """A group whose command list (``--help``) needs none of the commands' modules."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise _CtrlC() from e

    def format_commands(self, ctx: click.Context, formatter) -> None:
        """click's own list (Group.format_commands), where a command not imported yet
        gives its row through a stand-in command with the same help."""
        commands = self.commands
        if not isinstance(commands, LazyCommands):
            return super().format_commands(ctx, formatter)
        shown = []
        for name in self.list_commands(ctx):
            if commands.is_loaded(name) or name not in COMMANDS:
                cmd = self.get_command(ctx, name)
            else:
                cmd = click.Command(name, help=COMMANDS[name][1])
            if cmd is not None and not cmd.hidden:
                shown.append((name, cmd))
        if shown:
            limit = formatter.width - 6 - max(len(name) for name, _cmd in shown)
            rows = [(name, cmd.get_short_help_str(limit)) for name, cmd in shown]
            with formatter.section(gettext("Commands")):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, commands=LazyCommands({n: m for n, (m, _) in COMMANDS.items()}),
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="charrnn")
@click.option("--debug", is_flag=True, help="Show Python tracebacks (also CHARRNN_DEBUG=1).")
def cli(debug):
    """Character-level language models (LSTM, GRU, RNN) on the CPU.

    \b
    Typical session:
      charrnn prepare corpus.txt -o data/
      charrnn train data/ -o run/ --max-time 30m
      charrnn sample run/ -n 500 --temperature 0.8
      charrnn eval run/ test.txt
      charrnn info run/
    """


# ----------------------------------------------------------------- entry point

def _error_line(msg: str) -> None:
    from .. import console

    console.error(" ".join(str(msg).split("\n")).strip())


def _quiet_broken_pipe() -> int:
    """stdout's reader went away: end quietly (no traceback, nothing on stderr)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return ExitStatus.SIGPIPE


#: what to lower when a command runs out of memory: options that command has
_MEMORY_HINTS = {
    "train": "a smaller --batch-size, --seq-len or --hidden, or --low-memory",
    "sample": "fewer --num-samples",
    "eval": "fewer --streams",
    "prepare": "fewer or smaller inputs",
}


def _out_of_memory(argv) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args if a in _MEMORY_HINTS), None)
    hint = f" (try {_MEMORY_HINTS[command]})" if command else ""
    return f"out of memory{hint}"


def main(argv=None) -> None:
    """Console-script entry point; exits with the codes of :class:`ExitStatus`."""
    from ..kernels.runtime import tune_environment

    tune_environment()
    console.whole_writes()
    debug = _debug_requested(argv)
    try:
        rv = cli.main(args=argv, prog_name="charrnn", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        sys.stdout.flush()
    except click.exceptions.Exit as e:
        code = e.exit_code
    except SystemExit as e:   # click's own EPIPE handling exits 1 after pacifying stdout
        if isinstance(sys.stdout, click.utils.PacifyFlushWrapper):
            code = _quiet_broken_pipe()
        else:
            code = e.code if isinstance(e.code, int) else ExitStatus.ERROR
    except click.ClickException as e:  # usage errors: exit 2 with click's message
        e.show()
        code = e.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort, _CtrlC):
        if debug:
            raise
        if console.stderr_is_tty():
            sys.stderr.write("\n")                 # past the terminal's "^C"
        _error_line("interrupted")
        code = ExitStatus.SIGINT
    except BrokenPipeError:
        code = _quiet_broken_pipe()
    except CharrnnError as e:
        if debug:
            raise
        _error_line(str(e))
        code = e.exit_code
    except OSError as e:
        if debug:
            raise
        if e.errno == errno.EPIPE:
            code = _quiet_broken_pipe()
        elif e.errno == errno.ENOSPC:
            _error_line(f"no space left on device{': ' + str(e.filename) if e.filename else ''}")
            code = ExitStatus.ERROR
        else:
            where = f": {e.filename}" if e.filename else ""
            _error_line(f"{e.strerror or e}{where}")
            code = ExitStatus.ERROR
    except MemoryError:
        if debug:
            raise
        _error_line(_out_of_memory(argv))
        code = ExitStatus.ERROR
    except Exception as e:  # a bug: still one line, with the way to see more
        if debug:
            raise
        _error_line(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the "
                    "traceback, and please report it)")
        code = ExitStatus.ERROR
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = _quiet_broken_pipe()
    sys.exit(int(code))


__all__ = ["cli", "main"]
