"""``charrnn eval CKPT [INPUT ...]``: loss, bits per character and perplexity of text."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..cli import checkpoint_argument, json_option, threads_option, use_threads
from ._dataopts import decoding_options


def _default_data_dir(ck) -> Path | None:
    """The prepared data a training checkpoint names, if it still exists."""
    ts = ck.train_state or {}
    cands = []
    d = ts.get("data_dir")
    if isinstance(d, str) and d:
        cands += [Path(d), ck.path.parent / d]
    cands.append(ck.path.parent / "data")
    for c in cands:
        if (c / "meta.json").is_file():
            return c
    return None


@click.command("eval")
@checkpoint_argument
@click.argument("inputs", nargs=-1, metavar="[INPUT]...", type=click.Path(allow_dash=True))
@click.option("--data", "data_dir", type=click.Path(), default=None,
              help="Score a split of a prepared data directory instead of text files.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val",
              show_default=True, help="Which split of --data (or of the run's data).")
@click.option("--lines", is_flag=True,
              help="Score every line on its own: prints bpc<TAB>chars<TAB>line per line.")
@click.option("--carry", is_flag=True,
              help="With --lines: carry the state from line to line instead of resetting.")
@click.option("--streams", type=click.IntRange(1, 1024), default=1, show_default=True,
              metavar="N",
              help="Score text INPUT N pieces at a time: faster, approximate (a piece of "
                   "8192 characters starts from a fresh state after reading the 256 "
                   "before it). 1: one exact pass.")
@decoding_options
@json_option
@threads_option
def command(ckpt, latest, inputs, data_dir, split, lines, carry, streams, as_json, threads,
            encoding, errors):
    """Score text with the model in CKPT: loss (nats/char), bpc and perplexity.

    \b
    INPUT: text files ('-' for stdin), read as one text; or --data DIR --split S.
    Without either, the split of the data the run was trained on (when it exists).
    Every character is scored, the first one after a newline context.
    Output: `loss 1.2345 nats/char  bpc 1.7810  perplexity 3.44  chars 12345`
    (and `unknown N` for characters outside the vocabulary), or JSON with --json.
    --lines streams one `bpc<TAB>chars<TAB>line` per input line, e.g.
      charrnn eval run/ --lines < logs.txt | sort -rn | head
    --streams 16 scores a long text about 5x faster on 2 cores, and almost
    exactly (see the README).
    """
    from ..errors import InputError

    if carry and not lines:
        raise click.UsageError("--carry needs --lines")
    if data_dir is not None and inputs:
        raise click.UsageError("give INPUT files or --data, not both")
    if lines and data_dir is not None:
        raise click.UsageError("--lines scores text INPUT, not --data")
    if streams > 1 and (lines or not inputs):
        raise click.UsageError("--streams scores text INPUT (files or -), not --lines or a "
                               "data split")
    use_threads(threads)
    from .. import console
    from ..checkpoint import model_from_checkpoint, read_checkpoint
    from .. import evaluate as E

    ck = read_checkpoint(ckpt, latest)
    model = model_from_checkpoint(ck)
    out = sys.stdout
    if lines:
        total = E.evaluate_lines(model, list(inputs) or ["-"], out, carry=carry,
                                 warn=console.warn, as_json=as_json,
                                 encoding=encoding, errors=errors)
        console.log(f"total: {total.line()}")
        return
    if inputs:
        score = E.evaluate_files(model, list(inputs), warn=console.warn, streams=streams,
                                 encoding=encoding, errors=errors)
        what = {"inputs": list(inputs)}
        if streams > 1:
            what["streams"] = streams
    else:
        if data_dir is None:
            data_dir = _default_data_dir(ck)
            if data_dir is None:
                raise InputError("no INPUT given and the checkpoint names no prepared data "
                                 "that exists; give text files (- for stdin) or "
                                 "--data DATA_DIR")
        tc = (ck.train_state or {}).get("train_config") or {}
        B = tc.get("batch_size") if isinstance(tc.get("batch_size"), int) else 50
        T = tc.get("seq_len") if isinstance(tc.get("seq_len"), int) else E.WINDOW
        score = E.evaluate_split(model, data_dir, split, batch_size=max(1, B),
                                 seq_len=max(1, T))
        what = {"data": str(data_dir), "split": split}
    if score.chars == 0:
        raise InputError("nothing to score: the input is empty (or has only characters "
                         "outside the vocabulary)")
    if as_json:
        import json

        out.write(json.dumps({**score.to_json(), **what}, ensure_ascii=False) + "\n")
    else:
        out.write(score.line() + "\n")
