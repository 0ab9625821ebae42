"""Options and arguments several commands share, and :func:`use_threads`."""
from __future__ import annotations

import click


def threads_option(f):
    """``--threads N``: numba and BLAS threads (default: CHARRNN_THREADS or all cores)."""
    return click.option(
        "--threads", type=click.IntRange(min=1, max=4096), default=None, show_default=False,
        help="Threads for numba kernels and BLAS together [default: CHARRNN_THREADS or all cores].",
    )(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON on stdout.")(f)


def weights_option(f):
    """``--weights float32|bf16|int8`` (the choices are charrnn.sampling.WEIGHTS)."""
    return click.option(
        "--weights", type=click.Choice(["float32", "bf16", "int8"]), default="float32",
        show_default=True,
        help="Store the recurrent and head matrices as bfloat16 or int8 (a scale per "
             "row) for speed: one stream of a wide model reads every weight for every "
             "character, so fewer bytes run faster. Activations and sums stay float32.",
    )(f)


def seed_option(default):
    def deco(f):
        return click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1),
                            default=default, show_default=True,
                            help="Random seed: the same seed gives the same result.")(f)
    return deco


def checkpoint_argument(f):
    """CKPT: a checkpoint file or a run directory (then its best, or latest with --latest)."""
    f = click.option("--latest", is_flag=True,
                     help="With a run directory, use latest.safetensors instead of best.")(f)
    return click.argument("ckpt", metavar="CKPT", type=click.Path())(f)


def given(ctx: click.Context, name: str) -> bool:
    """Whether option ``name`` was given (command line or environment), not defaulted."""
    src = ctx.get_parameter_source(name)
    return src is not None and src not in (click.core.ParameterSource.DEFAULT,
                                           click.core.ParameterSource.DEFAULT_MAP)


def use_threads(n):
    """Apply --threads (imports numba); call inside a command before any kernel runs."""
    from ..kernels import runtime
    runtime.ensure_numba()
    runtime.defer_signals_while_compiling()
    return runtime.configure_threads(n)
