"""``charrnn sample CKPT``: generate text from a trained model (see charrnn.sampling)."""
from __future__ import annotations

import sys

import click

from ..cli import checkpoint_argument, json_option, seed_option, threads_option, use_threads
from ..clitypes import FiniteFloat
from ..config import SampleConfig

SC = SampleConfig


def _read_prime_file(path: str) -> str:
    from ..errors import InputError

    try:
        if path == "-":
            raw = sys.stdin.buffer.read()
            name = "standard input"
        else:
            with open(path, "rb") as f:
                raw = f.read()
            name = path
    except OSError as e:
        raise InputError(f"cannot read prime file {path}: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"prime file {name} is not valid UTF-8 (byte offset {e.start})") \
            from None


@click.command("sample")
@checkpoint_argument
@click.option("-n", "--length", type=click.IntRange(min=0), default=SC.length,
              show_default=True, help="Characters to generate per sample.")
@click.option("--prime", default=None, metavar="TEXT",
              help="Text that warms up the state before sampling.")
@click.option("--prime-file", type=click.Path(allow_dash=True), default=None,
              help="Read the prime text from a file (- for stdin).")
@click.option("--no-echo", is_flag=True, help="Do not print the prime before each sample.")
@click.option("--temperature", type=FiniteFloat(0, min_open=True), default=SC.temperature,
              show_default=True, help="Softmax temperature: < 1 safer, > 1 wilder.")
@click.option("--top-k", type=click.IntRange(min=0), default=SC.top_k, show_default=True,
              help="Draw only from the k most likely characters (0 = off).")
@click.option("--top-p", type=FiniteFloat(0, 1, min_open=True), default=SC.top_p,
              show_default=True, help="Nucleus sampling: smallest set with this much "
                                      "probability (1 = off).")
@click.option("--greedy", is_flag=True, default=SC.greedy,
              help="Always take the most likely character (no randomness).")
@seed_option(SC.seed)
@click.option("--num-samples", type=click.IntRange(min=1, max=100_000),
              default=SC.num_samples, show_default=True,
              help="Samples to generate, all at once as one batch.")
@click.option("--separator", default=SC.separator, show_default=repr(SC.separator),
              help="Written between samples (use $'...' in bash for newlines).")
@click.option("--stop", default=None, metavar="STRING",
              help="End a sample where STRING first appears (not printed), e.g. $'\\n\\n'.")
@click.option("--stream", is_flag=True,
              help="Flush every character as it is drawn (default: every chunk of 256).")
@json_option
@threads_option
def command(ckpt, latest, length, prime, prime_file, no_echo, temperature, top_k, top_p,
            greedy, seed, num_samples, separator, stop, stream, as_json, threads):
    """Generate text from the model in CKPT (a checkpoint file or a run directory).

    \b
    Output streams to stdout as it is generated; the same --seed gives the same text.
    Without a prime, sampling starts as after a newline (not printed).  With
    --num-samples N the samples are generated together and printed one after the
    other, joined by --separator.  --json prints one object per sample instead:
    {"sample", "prime", "text", "chars", "mean_logprob", "stopped"}, where
    mean_logprob is the model's mean log-probability (nats) of the generated text.
    On a terminal a final newline is added if the text does not end with one.
    """
    if prime is not None and prime_file is not None:
        raise click.UsageError("give --prime or --prime-file, not both")
    use_threads(threads)
    from .. import console
    from ..model import Model
    from ..sampling import CHUNK, generate_text

    if prime_file is not None:
        prime = _read_prime_file(prime_file)
    prime = prime or ""
    model = Model.load(ckpt, latest=latest)
    events = generate_text(model, length, prime=prime, num_samples=num_samples,
                           temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                           seed=seed, stop=stop, chunk=1 if stream else CHUNK,
                           warn=console.warn)
    if as_json:
        _write_json(events, num_samples)
    else:
        _write_text(events, num_samples, "" if no_echo else prime, separator)


def _write_json(events, N: int) -> None:
    import json

    out = sys.stdout
    ready, nxt = {}, 0
    for kind, i, val in events:
        if kind != "done":
            continue
        ready[i] = val
        while nxt in ready:
            out.write(json.dumps(ready.pop(nxt).to_json(), ensure_ascii=False) + "\n")
            out.flush()
            nxt += 1


def _write_text(events, N: int, echo: str, separator: str) -> None:
    """Sample 0 streams as it is generated; the others are held until their turn."""
    out = sys.stdout
    held = [[] for _ in range(N)]
    finished = [False] * N
    cur = 0
    last = ""

    def write(s: str) -> None:
        nonlocal last
        if s:
            out.write(s)
            last = s[-1]

    write(echo)
    out.flush()
    for kind, i, val in events:
        if kind == "text":
            if i == cur:
                write(val)
                out.flush()
            else:
                held[i].append(val)
            continue
        finished[i] = True
        while cur < N and finished[cur]:
            cur += 1
            if cur < N:
                write(separator)
                write(echo)
                write("".join(held[cur]))
                held[cur] = []
                out.flush()
    if last and last != "\n" and out.isatty():
        out.write("\n")
    out.flush()
