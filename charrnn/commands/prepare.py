"""``charrnn prepare [INPUT ...] [--corpus NAME] -o DATA_DIR``: text -> token files."""
from __future__ import annotations

import click

from ..cli import json_option
from ..clitypes import FiniteFloat
from ..config import DataConfig

D = DataConfig


@click.command("prepare")
@click.argument("inputs", metavar="[INPUT]...", nargs=-1, type=click.Path())
@click.option("--corpus", metavar="NAME", default=None,
              help="A corpus from the registry (see --list-corpora) instead of INPUT.")
@click.option("-o", "--output", "output", metavar="DATA_DIR", type=click.Path(),
              default=None, help="Directory to write (vocab.json, *.bin, meta.json).")
@click.option("--glob", "glob_", metavar="PAT", default=D.glob,
              help="Only files matching PAT inside folders, e.g. '*.py'.")
@click.option("--encoding", default=D.encoding, show_default=True, help="Text encoding.")
@click.option("--errors", type=click.Choice(["strict", "replace"]), default=D.errors,
              show_default=True, help="Undecodable bytes: refuse, or map to U+FFFD.")
@click.option("--lowercase/--no-lowercase", default=D.lowercase, show_default=True,
              help="Fold the text to lower case.")
@click.option("--min-count", type=click.IntRange(min=1), default=D.min_count,
              show_default=True, help="Rarer characters map to one unknown symbol.")
@click.option("--max-vocab", type=click.IntRange(min=0), default=D.max_vocab,
              show_default=True, help="Keep at most N most frequent characters (0 = all).")
@click.option("--val-frac", type=FiniteFloat(0, 1, max_open=True), default=D.val_frac,
              show_default=True, help="Tail fraction held out for validation.")
@click.option("--test-frac", type=FiniteFloat(0, 1, max_open=True), default=D.test_frac,
              show_default=True, help="Fraction at the very end held out for testing.")
@click.option("--force", is_flag=True,
              help="Write into DATA_DIR even if it holds other files (they are kept).")
@click.option("--list-corpora", is_flag=True, help="List the registry's corpora and exit.")
@json_option
def command(inputs, corpus, output, glob_, encoding, errors, lowercase, min_count, max_vocab,
            val_frac, test_frac, force, list_corpora, as_json):
    """Turn text into a data directory for `charrnn train`.

    INPUT: files, folders (read recursively in sorted order, filtered by --glob) or
    '-' for stdin.  The last --val-frac of the text is the validation split, and the
    last --test-frac after it the test split.

    \b
    Examples:
      charrnn prepare input.txt -o data/
      charrnn prepare src/ --glob '*.py' -o data/ --val-frac 0.1
      charrnn prepare --corpus tinyshakespeare -o data/
    """
    import json

    if list_corpora:
        from .. import corpora
        rows = corpora.list_corpora()
        if as_json:
            click.echo(json.dumps(rows, indent=1))
        else:
            click.echo(corpora.format_table(rows))
        return
    if output is None:
        raise click.UsageError("Missing option '-o' / '--output'.")
    if corpus is not None and inputs:
        raise click.UsageError("give INPUT files or --corpus NAME, not both.")
    if corpus is None and not inputs:
        raise click.UsageError("give INPUT files or folders, '-' for stdin, or --corpus NAME.")
    if val_frac + test_frac >= 1:
        raise click.BadParameter(f"--val-frac + --test-frac must be < 1 "
                                 f"(got {val_frac} + {test_frac})", param_hint="'--val-frac'")

    from ..data import prepare

    cfg = DataConfig(encoding=encoding, errors=errors, lowercase=lowercase,
                     min_count=min_count, max_vocab=max_vocab, val_frac=val_frac,
                     test_frac=test_frac, glob=glob_)
    summary = prepare(list(inputs), output, cfg, corpus=corpus, force=force)
    if as_json:
        click.echo(json.dumps(summary, indent=1, ensure_ascii=False))
    else:
        from ..console import log
        for line in format_summary(summary):
            log(line)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def format_summary(s: dict) -> list[str]:
    """The human summary printed on stderr."""
    src = f"corpus {s['corpus']}" if s.get("corpus") else \
        f"{s['files']} file{'s' if s['files'] != 1 else ''}"
    unk = f", {s['unknown']:,} mapped to {s['unk']!r}" if s.get("unk") is not None else ""
    return [
        f"prepared {s['data_dir']} from {src} ({_size(s['bytes'])}) in {s['seconds']:.1f} s",
        f"  characters {s['chars']:,}, vocabulary {s['vocab_size']} ({s['dtype']}){unk}",
        f"  train {s['train']:,} | val {s['val']:,} | test {s['test']:,}",
    ]
