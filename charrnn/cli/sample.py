"""``charrnn sample CKPT``: generate text from a trained model (see charrnn.sampling)."""
from __future__ import annotations

import sys

import click

from .options import (checkpoint_argument, given, json_option, threads_option,
                      use_threads, weights_option)
from .types import FiniteFloat
from ..config import SampleConfig

SC = SampleConfig


#: the longest --prime-file read (an endless stdin stops here, in bounded memory)
PRIME_LIMIT = 1 << 24


def _read_prime_file(path: str) -> str:
    """The prime text of --prime-file, decoded by the rule prepare and eval use (UTF-8, a
    leading byte order mark dropped, NUL bytes refused)."""
    from ..store.text import decode_stream
    from ..errors import InputError

    def chunks(f):
        while True:
            block = f.read(1 << 20)
            if not block:
                return
            yield block

    def read(f) -> str:
        parts, n = [], 0
        for _raw, text in decode_stream(chunks(f), name):
            n += len(text)
            if n > PRIME_LIMIT:
                raise InputError(f"prime file {name} is longer than {PRIME_LIMIT:,} "
                                 "characters; a prime only warms the state, so give its "
                                 "last part (e.g. tail -c 100000)")
            parts.append(text)
        return "".join(parts)

    name = "standard input" if path == "-" else path
    try:
        if path == "-":
            return read(sys.stdin.buffer)
        with open(path, "rb") as f:
            return read(f)
    except OSError as e:
        raise InputError(f"cannot read prime file {path}: {e.strerror or e}") from None


def fresh_seed() -> int:
    """A seed for a run without --seed: 63 bits from the operating system's randomness."""
    import secrets

    return secrets.randbits(63)


@click.command("sample")
@checkpoint_argument
@click.option("-n", "--length", type=click.IntRange(min=0), default=SC.length,
              show_default=True, help="Characters to generate per sample.")
@click.option("--prime", default=None, metavar="TEXT",
              help="Text that warms up the state before sampling.")
@click.option("--prime-file", type=click.Path(allow_dash=True), default=None,
              help="Read the prime text from a file (- for stdin).")
@click.option("--no-echo", is_flag=True, help="Do not print the prime before each sample.")
@click.option("--temperature", type=FiniteFloat(0), default=SC.temperature,
              show_default=True,
              help="Softmax temperature: < 1 safer, > 1 wilder, 0 = greedy (the most likely "
                   "character, as --greedy).")
@click.option("--top-k", type=click.IntRange(min=0), default=SC.top_k, show_default=True,
              help="Draw only from the k most likely characters (0 = off; no effect when "
                   "greedy).")
@click.option("--top-p", type=FiniteFloat(0, 1, min_open=True), default=SC.top_p,
              show_default=True, help="Nucleus sampling: smallest set with this much "
                                      "probability (1 = off; no effect when greedy).")
@click.option("--greedy", is_flag=True, default=SC.greedy,
              help="Always take the most likely character (no randomness); the same as "
                   "--temperature 0, and not to be given with --temperature.")
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), default=SC.seed,
              help="Random seed (0 to 2**63-1): the same seed gives the same text "
                   "[default: a fresh seed each run, shown by -v and in --json].")
@click.option("--num-samples", type=click.IntRange(min=1, max=100_000),
              default=SC.num_samples, show_default=True,
              help="Samples to generate, all at once as one batch.")
@click.option("--separator", default=SC.separator, show_default=repr(SC.separator),
              help="Written between samples (use $'...' in bash for newlines).")
@click.option("--stop", default=None, metavar="STRING",
              help="End a sample where STRING first appears (not printed), e.g. $'\\n\\n'.")
@click.option("--beam", type=click.IntRange(1, 64), default=None, metavar="N",
              help="Beam search with N beams (1-64) instead of sampling: prints the most "
                   "likely text found (deterministic; --beam 1 is greedy).")
@click.option("--length-penalty", type=FiniteFloat(0), default=0.0, show_default=True,
              metavar="ALPHA",
              help="With --beam: rank beams by logprob / ((5 + n) / 6) ** ALPHA for n "
                   "characters (GNMT; 0 = total log-probability; matters with --stop).")
@click.option("--stream", is_flag=True,
              help="Flush every character as it is drawn (default: every chunk of 256).")
@weights_option
@json_option
@click.option("-v", "--verbose", is_flag=True,
              help="Report the seed on stderr (`seed N`), to repeat the run with --seed N.")
@threads_option
@click.pass_context
def command(ctx, ckpt, latest, length, prime, prime_file, no_echo, temperature, top_k, top_p,
            greedy, seed, num_samples, separator, stop, beam, length_penalty, stream, weights,
            as_json, verbose, threads):
    """Generate text from the model in CKPT (a checkpoint file or a run directory).

    \b
    Output streams to stdout as it is generated.  Without --seed each run draws a
    fresh seed (so runs differ); -v prints it on stderr as `seed N` and --json
    includes it, and --seed N repeats that run exactly.  --temperature 0 (or
    --greedy) takes the most likely character every time; --top-k and --top-p
    then change nothing.
    Without a prime, sampling starts as after a newline (not printed).  With
    --num-samples N the samples are generated together and printed one after the
    other, joined by --separator.  --json prints one object per sample instead:
    {"sample", "prime", "text", "chars", "mean_logprob", "stopped", "seed"}, where
    mean_logprob is the model's mean log-probability (nats) of the generated text.
    On a terminal a final newline is added if the text does not end with one.
    --beam N runs a beam search instead (deterministic; no sampling options):
    it prints the best beam's text, or with --json one object per beam, best
    first: {"beam", "prime", "text", "chars", "logprob", "bpc", "score",
    "stopped"}.  A beam that makes the --stop string is finished; the search
    ends when no live beam can beat the best finished one, or at -n.
    --weights int8 (or bf16) samples from weights stored in 1 (2) bytes: one
    stream of a large model runs several times faster, with text of nearly the
    same quality (check with charrnn eval --weights).
    """
    if prime is not None and prime_file is not None:
        raise click.UsageError("give --prime or --prime-file, not both")
    if greedy and given(ctx, "temperature"):
        raise click.UsageError("give --greedy or --temperature, not both (--temperature 0 "
                               "is greedy)")
    if beam is not None:
        return _beam(ctx, ckpt, latest, length, prime, prime_file, no_echo, stop, beam,
                     length_penalty, as_json, threads, weights)
    if given(ctx, "length_penalty"):
        raise click.UsageError("--length-penalty applies to --beam only")
    if seed is None:
        seed = fresh_seed()
    use_threads(threads)
    from .. import console
    from ..store.checkpoint import load_model
    from ..sampling import CHUNK, generate_text

    if prime_file is not None:
        prime = _read_prime_file(prime_file)
    prime = prime or ""
    model = load_model(ckpt, latest=latest)
    events = generate_text(model, length, prime=prime, num_samples=num_samples,
                           temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                           seed=seed, stop=stop, chunk=1 if stream else CHUNK,
                           warn=console.warn, weights=weights)
    if verbose:
        console.log(f"seed {seed}")
    if as_json:
        _write_json(events, num_samples, seed)
    else:
        _write_text(events, num_samples, "" if no_echo else prime, separator)


#: sampling options beam search has no use for: it is deterministic, one search
BEAM_CONFLICTS = ("temperature", "top_k", "top_p", "greedy", "seed", "stream")


def _beam(ctx, ckpt, latest, length, prime, prime_file, no_echo, stop, beams, alpha,
          as_json, threads, weights) -> None:
    """--beam N: the N beams run as one batch (charrnn.sampling.beam.beam_search); the best
    beam's text is printed (after the prime unless --no-echo), or with --json one object
    per beam, best first: {"beam", "prime", "text", "chars", "logprob", "bpc", "score",
    "stopped"} (chars: the characters generated, the stop string included when
    stopped, which "text" leaves out; logprob: their total log-probability, nats; bpc:
    bits per such character; score: the ranking key)."""
    for name in BEAM_CONFLICTS:
        if given(ctx, name):
            raise click.UsageError(f"--beam is a deterministic search: it takes no "
                                   f"--{name.replace('_', '-')}")
    if ctx.params["num_samples"] > 1:
        raise click.UsageError("--beam gives one text (--json lists every beam): it takes "
                               "no --num-samples above 1")
    use_threads(threads)
    import json

    from .. import console
    from ..store.checkpoint import load_model
    from ..sampling.beam import beam_search

    if prime_file is not None:
        prime = _read_prime_file(prime_file)
    prime = prime or ""
    model = load_model(ckpt, latest=latest)
    found = beam_search(model, length, beams=beams, prime=prime, stop=stop,
                        length_penalty=alpha, warn=console.warn, weights=weights)
    out = sys.stdout
    if as_json:
        for r in found:
            out.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
    else:
        text = ("" if no_echo else prime) + found[0].text
        out.write(text)
        if text and text[-1] != "\n" and out.isatty():
            out.write("\n")
    out.flush()


def _write_json(events, N: int, seed: int) -> None:
    import json

    out = sys.stdout
    ready, nxt = {}, 0
    for kind, i, val in events:
        if kind != "done":
            continue
        ready[i] = val
        while nxt in ready:
            rec = {**ready.pop(nxt).to_json(), "seed": seed}
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
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
