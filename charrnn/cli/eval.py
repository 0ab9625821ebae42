"""``charrnn eval CKPT [INPUT ...]``: loss, bits per character and perplexity of text."""
from __future__ import annotations

import sys

import click

from .options import (checkpoint_argument, given, json_option, threads_option,
                      use_threads, weights_option)
from .dataopts import decoding_options


def _stdin_is_terminal() -> bool:
    """Whether stdin is a terminal (or absent): then there is no piped text to score."""
    f = sys.stdin
    if f is None:
        return True
    try:
        return f.isatty()
    except (AttributeError, ValueError):        # closed or not a real file
        return True


class _Counting:
    """A text stream that remembers whether anything was written to it (--lines)."""

    def __init__(self, out):
        self.out = out
        self.written = False

    def write(self, s: str) -> int:
        if s:
            self.written = True
        return self.out.write(s)

    def flush(self) -> None:
        self.out.flush()


def _nothing_to_score(inputs, lines: bool, only_unknown: bool = False):
    from ..errors import InputError

    if list(inputs) == ["-"] and not only_unknown:
        hint = ("give text on stdin or INPUT files" if lines else
                "give text on stdin, INPUT files, or --split val / --data DIR to score "
                "prepared data")
        return InputError(f"nothing to score: standard input is empty; {hint}")
    if lines:
        return InputError("nothing to score: the input is empty")
    return InputError("nothing to score: the input is empty (or has only characters "
                      "outside the vocabulary)")


@click.command("eval")
@checkpoint_argument
@click.argument("inputs", nargs=-1, metavar="[INPUT]...", type=click.Path(allow_dash=True))
@click.option("--data", "data_dir", type=click.Path(), default=None,
              help="Score a split of a prepared data directory instead of text.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val",
              show_default=True,
              help="Which split of --data (or of the run's data); given, it is scored even "
                   "when stdin is a pipe.")
@click.option("--lines", is_flag=True,
              help="Score every line on its own: prints bpc<TAB>chars<TAB>line per line "
                   "(INPUT, or stdin without INPUT).")
@click.option("--carry", is_flag=True,
              help="With --lines: carry the state from line to line instead of resetting.")
@click.option("--streams", type=click.IntRange(1, 1024), default=1, show_default=True,
              metavar="N",
              help="Score text INPUT N pieces at a time: faster, approximate (a piece of "
                   "8192 characters starts from a fresh state after reading the 256 "
                   "before it). 1: one exact pass.")
@decoding_options
@weights_option
@json_option
@threads_option
@click.pass_context
def command(ctx, ckpt, latest, inputs, data_dir, split, lines, carry, streams, weights,
            as_json, threads, encoding, errors):
    """Score text with the model in CKPT: loss (nats/char), bpc and perplexity.

    \b
    What is scored, like wc or grep:
      INPUT files ('-' for stdin), read as one text;
      without INPUT, text piped to stdin (cat notes.txt | charrnn eval run/);
      without INPUT at a terminal, the val split of the data the run was trained on;
      --split S (given explicitly) or --data DIR --split S: that prepared split.
    An empty stdin is an error.  Every character is scored, the first one after a
    newline context.
    Output: `loss 1.2345 nats/char  bpc 1.7810  perplexity 3.44  chars 12345`
    (and `unknown N` for characters outside the vocabulary), or JSON with --json.
    --lines streams one `bpc<TAB>chars<TAB>line` per input line, e.g.
      charrnn eval run/ --lines < logs.txt | sort -rn | head
    --streams 16 scores a long text about 5x faster on 2 cores, and almost
    exactly (see the README).
    --weights int8 (or bf16) scores with the weights `sample --weights` uses,
    through the sampler's own step (slower than float32 here): the bpc it
    costs.
    """
    split_given = given(ctx, "split")
    if carry and not lines:
        raise click.UsageError("--carry needs --lines")
    if data_dir is not None and inputs:
        raise click.UsageError("give INPUT files or --data, not both")
    if split_given and inputs:
        raise click.UsageError("give INPUT files or --split, not both")
    if lines and (data_dir is not None or split_given):
        raise click.UsageError("--lines scores text INPUT, not --data or --split")
    if not inputs and data_dir is None and not split_given \
            and (lines or not _stdin_is_terminal()):
        inputs = ("-",)             # piped text (--lines reads stdin even at a terminal)
    if streams > 1 and (lines or not inputs):
        raise click.UsageError("--streams scores text INPUT (files or -), not --lines or a "
                               "data split")
    use_threads(threads)
    from .. import console
    from ..store.checkpoint import model_from_checkpoint, read_checkpoint
    from .. import evaluate as E

    ck = read_checkpoint(ckpt, latest)
    model = model_from_checkpoint(ck)
    if weights != "float32":            # scored by the sampler's kernel, as it samples
        from ..sampling.reduced import reduced_model

        model = reduced_model(model, weights)
    out = sys.stdout
    if lines:
        counted = _Counting(out)
        total = E.evaluate_lines(model, list(inputs), counted, carry=carry,
                                 warn=console.warn, as_json=as_json,
                                 encoding=encoding, errors=errors)
        if not counted.written:
            raise _nothing_to_score(inputs, lines=True)
        console.log(f"total: {total.line()}" if total.chars else
                    "total: no characters scored (the lines are empty)")
        return
    if inputs:
        score = E.evaluate_files(model, list(inputs), warn=console.warn, streams=streams,
                                 encoding=encoding, errors=errors)
        what = {"inputs": list(inputs)}
        if streams > 1:
            what["streams"] = streams
        if score.chars == 0:
            raise _nothing_to_score(inputs, lines=False, only_unknown=score.unknown > 0)
    else:
        score, data_dir = E.evaluate_checkpoint_split(ck, model, split, data_dir)
        what = {"data": str(data_dir), "split": split}
    E.require_finite(score)
    if as_json:
        import json

        out.write(json.dumps({**score.to_json(), **what}, ensure_ascii=False,
                             allow_nan=False) + "\n")
    else:
        out.write(score.line() + "\n")
