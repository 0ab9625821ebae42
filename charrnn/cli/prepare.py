"""``charrnn prepare [INPUT ...] [--corpus NAME] -o DATA_DIR``: text -> token files."""
from __future__ import annotations

import click

from .options import json_option
from .dataopts import data_config, data_options


@click.command("prepare")
@click.argument("inputs", metavar="[INPUT]...", nargs=-1, type=click.Path())
@click.option("--corpus", metavar="NAME", default=None,
              help="A corpus from the registry (see --list-corpora) instead of INPUT.")
@click.option("-o", "--output", "output", metavar="DATA_DIR", type=click.Path(),
              default=None, help="Directory to write (vocab.json, *.bin, meta.json).")
@data_options
@click.option("--force", is_flag=True,
              help="Write into DATA_DIR even if it holds other files (they are kept).")
@click.option("--list-corpora", is_flag=True, help="List the registry's corpora and exit.")
@json_option
@click.pass_context
def command(ctx, inputs, corpus, output, force, list_corpora, as_json, **values):
    """Turn text into a data directory for `charrnn train`.

    INPUT: files, folders (read recursively in sorted order, filtered by --glob) or
    '-' for stdin.  The last --val-frac of the text is the validation split, and the
    last --test-frac after it the test split.

    Characters are Unicode code points: a byte order mark at the start of each file is
    dropped, and line ends are kept as they are (CRLF is two characters, \\r and \\n;
    convert the files first if the model should not learn them).

    \b
    Examples:
      charrnn prepare input.txt -o data/
      charrnn prepare src/ --glob '*.py' -o data/ --val-frac 0.1
      charrnn prepare --corpus tinyshakespeare -o data/
    """
    import json

    if list_corpora:
        from ..store import corpora
        rows = corpora.list_corpora()
        if as_json:
            click.echo(json.dumps(rows, ensure_ascii=False))
        else:
            click.echo(corpora.format_table(rows))
        return
    if output is None:
        raise click.UsageError("Missing option '-o' / '--output'.")
    if corpus is not None and inputs:
        raise click.UsageError("give INPUT files or --corpus NAME, not both.")
    if corpus is None and not inputs:
        raise click.UsageError("give INPUT files or folders, '-' for stdin, or --corpus NAME.")
    cfg, _explicit = data_config(ctx, values)

    from ..store.outdir import stop_on_sigterm
    from ..store.prepare import prepare

    # SIGTERM (and Ctrl-C) end prepare with one line, removing its build directory and
    # the spool of a stream (exit 143 / 130).
    with stop_on_sigterm("prepare"):
        summary = prepare(list(inputs), output, cfg, corpus=corpus, force=force)
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
    else:
        from ..console import log
        for line in format_summary(summary):
            log(line)


def format_summary(s: dict) -> list[str]:
    """The human summary printed on stderr."""
    from ..units import fmt_bytes

    src = f"corpus {s['corpus']}" if s.get("corpus") else \
        f"{s['files']} file{'s' if s['files'] != 1 else ''}"
    unk = f", {s['unknown']:,} mapped to {s['unk']!r}" if s.get("unk") is not None else ""
    return [
        f"prepared {s['data_dir']} from {src} ({fmt_bytes(s['bytes'])}) in {s['seconds']:.1f} s",
        f"  characters {s['chars']:,}, vocabulary {s['vocab_size']} ({s['dtype']}){unk}",
        f"  train {s['train']:,} | val {s['val']:,} | test {s['test']:,}",
    ]
