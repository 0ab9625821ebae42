"""The options that say how text becomes token files (:class:`~charrnn.config.DataConfig`),
defined once for every command that turns text into data: ``prepare``, and ``train`` when
its DATA is text.

Use::

    @click.command()
    @data_options
    @click.pass_context
    def command(ctx, ..., **values):
        cfg, explicit = data_config(ctx, values)

Each option's parameter is named after its DataConfig field (``glob``, ``encoding``,
``errors``, ``lowercase``, ``min_count``, ``max_vocab``, ``val_frac``, ``test_frac``), and
its default is the dataclass's.
"""
from __future__ import annotations

import click

from .types import FiniteFloat
from ..config import DataConfig

# (flags, DataConfig field, click keyword arguments); defaults come from the dataclass.
_OPTIONS = [
    (("--glob",), "glob", dict(metavar="PAT", show_default=False,
                               help="Only files matching PAT inside folders, e.g. '*.py'.")),
    (("--encoding",), "encoding",
     dict(metavar="NAME", help="Text encoding. A byte order mark at the start of a file is "
                               "dropped, whatever the encoding.")),
    (("--errors",), "errors", dict(type=click.Choice(["strict", "replace"]),
                                   help="Undecodable bytes: refuse, or map to U+FFFD.")),
    (("--lowercase/--no-lowercase",), "lowercase",
     dict(help="Fold the text to lower case (recorded in the vocabulary: eval and "
               "sample --prime then fold theirs too).")),
    (("--min-count",), "min_count", dict(type=click.IntRange(min=1), metavar="N",
                                         help="Rarer characters map to one unknown symbol.")),
    (("--max-vocab",), "max_vocab",
     dict(type=click.IntRange(min=0), metavar="N",
          help="Keep at most N most frequent characters (0 = all).")),
    (("--val-frac",), "val_frac", dict(type=FiniteFloat(0, 1, max_open=True),
                                       help="Tail fraction held out for validation.")),
    (("--test-frac",), "test_frac", dict(type=FiniteFloat(0, 1, max_open=True),
                                         help="Fraction at the very end held out for "
                                              "testing.")),
]

#: The DataConfig fields that :func:`data_options` adds as parameters, in order.
DATA_FIELDS = tuple(name for _flags, name, _kw in _OPTIONS)


def _add(f, names):
    defaults = DataConfig()
    for flags, name, kw in reversed(_OPTIONS):
        if name in names:
            kw = {"show_default": True, **kw}
            f = click.option(*flags, name, default=getattr(defaults, name), **kw)(f)
    return f


def data_options(f):
    """Add ``--glob --encoding --errors --lowercase --min-count --max-vocab --val-frac
    --test-frac`` to a click command (parameters named after the DataConfig fields)."""
    return _add(f, DATA_FIELDS)


def decoding_options(f):
    """Add only ``--encoding`` and ``--errors`` (the same options as :func:`data_options`),
    for commands that read text with a model's vocabulary (``eval``)."""
    return _add(f, ("encoding", "errors"))


def data_config(ctx: click.Context, values: dict) -> tuple[DataConfig, frozenset[str]]:
    """The DataConfig of the parsed options in ``values`` (a command's keyword arguments;
    other keys are ignored) and the set of its fields that the user gave explicitly on
    the command line (or through the environment), e.g. ``frozenset({"lowercase"})``.
    Raises click.BadParameter (exit 2) when --val-frac + --test-frac >= 1."""
    cfg = DataConfig(**{name: values[name] for name in DATA_FIELDS})
    if cfg.val_frac + cfg.test_frac >= 1:
        raise click.BadParameter(f"--val-frac + --test-frac must be < 1 "
                                 f"(got {cfg.val_frac} + {cfg.test_frac})",
                                 param_hint="'--val-frac'")
    cfg.validate()
    explicit = frozenset(
        name for name in DATA_FIELDS
        if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT))
    return cfg, explicit


__all__ = ["data_options", "decoding_options", "data_config", "DATA_FIELDS"]
