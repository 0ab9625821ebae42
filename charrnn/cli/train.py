"""``charrnn train DATA -o RUN_DIR``: train, or resume, a model (see charrnn.training.loop)."""
from __future__ import annotations

import contextlib

import click

from .options import json_option, threads_option, use_threads
from .dataopts import data_config, data_options
from .types import Duration, FiniteFloat
from ..config import CELLS, DEFAULT_MAX_EPOCHS, GRU_RESET, LOW_MEMORY_TIME, MAX_EMBED, MAX_HIDDEN, MAX_LAYERS, NONLINEARITIES, OPTIMIZERS, SCHEDULES, ModelConfig, TrainConfig

M, TR = ModelConfig, TrainConfig
_INT = click.IntRange

# (flags, section, config field, click type, help). Defaults come from the dataclasses.
OPTIONS = [
    # model
    (("--cell",), "model", "cell", click.Choice(CELLS), "Recurrent cell."),
    (("--layers",), "model", "num_layers", _INT(1, MAX_LAYERS), "Stacked recurrent layers (L)."),
    (("--hidden",), "model", "hidden_size", _INT(1, MAX_HIDDEN), "Width of each layer (H)."),
    (("--embed",), "model", "embed_size", _INT(0, MAX_EMBED),
     "Embedding width E; 0 = one-hot input (char-rnn)."),
    (("--dropout",), "model", "dropout", FiniteFloat(0, 1, max_open=True),
     "Dropout between layers and before the head."),
    (("--peepholes/--no-peepholes",), "model", "peepholes", None, "LSTM peephole connections."),
    (("--residual/--no-residual",), "model", "residual", None,
     "Residual connections between stacked layers."),
    (("--gru-reset",), "model", "gru_reset", click.Choice(GRU_RESET),
     "GRU: reset gate after the recurrent product (PyTorch) or before (Cho et al.)."),
    (("--nonlinearity",), "model", "nonlinearity", click.Choice(NONLINEARITIES),
     "Plain RNN activation."),
    (("--dtype",), "model", "dtype", click.Choice(["float32", "float64"]),
     "Floating-point precision."),
    # data
    (("--batch-size", "-b"), "train", "batch_size", _INT(1, 100_000),
     "Parallel streams per batch (B)."),
    (("--seq-len", "-t"), "train", "seq_len", _INT(1, 100_000),
     "Truncated-BPTT length (T)."),
    # optimisation
    (("--optimizer",), "train", "optimizer", click.Choice(OPTIMIZERS), "Optimizer."),
    (("--lr",), "train", "lr", FiniteFloat(0, 10, min_open=True), "Peak learning rate."),
    (("--momentum",), "train", "momentum", FiniteFloat(0, 1, max_open=True), "SGD momentum."),
    (("--weight-decay",), "train", "weight_decay", FiniteFloat(0, 10),
     "L2 penalty (decoupled for adamw)."),
    (("--schedule",), "train", "schedule", click.Choice(SCHEDULES), "Learning-rate schedule."),
    (("--warmup-iters",), "train", "warmup_iters", _INT(0), "Linear warm-up iterations."),
    (("--lr-decay",), "train", "lr_decay", FiniteFloat(0, 1, min_open=True),
     "step schedule: factor per decay."),
    (("--decay-every",), "train", "decay_every", _INT(1), "step schedule: epochs per decay."),
    (("--decay-after",), "train", "decay_after", _INT(0),
     "step schedule: first epoch that decays."),
    (("--clip",), "train", "clip", FiniteFloat(0), "Clip the global gradient norm (0 = off)."),
    (("--clip-value",), "train", "clip_value", FiniteFloat(0),
     "Clip each gradient element (0 = off)."),
    # length
    (("--max-iters",), "train", "max_iters", _INT(0),
     "Stop at this iteration, counted over the whole run (0 = no limit)."),
    (("--max-epochs",), "train", "max_epochs", _INT(0),
     f"Stop after this many epochs (0 = no limit; {DEFAULT_MAX_EPOCHS} when no limit at all "
     "is given)."),
    (("--max-time",), "train", "max_time", Duration(),
     "Time budget of this command, e.g. 30m, 2h: it counts from the first step (data "
     "preparation and first-run compilation are not counted) and includes the last "
     "evaluation and save (0 = none)."),
    (("--eval-every",), "train", "eval_every", _INT(1), "Validate every N iterations."),
    (("--save-every",), "train", "save_every", _INT(0),
     "Save latest every N iterations (0 = at every evaluation)."),
    (("--patience",), "train", "patience", _INT(0),
     "Stop after N evaluations without improvement (0 = off)."),
    (("--seed",), "train", "seed", _INT(0, 2**63 - 1), "Random seed."),
    # resources
    (("--low-memory/--no-low-memory",), "train", "low_memory", None,
     "Recompute the gates in backward instead of keeping them: much less memory, "
     f"about {LOW_MEMORY_TIME} the time."),
]


def _default(section: str, name: str):
    cls = ModelConfig if section == "model" else TrainConfig
    return cls.__dataclass_fields__[name].default


def _model_options(f):
    for flags, section, name, typ, help_ in reversed(OPTIONS):
        kw = dict(default=_default(section, name), show_default=True, help=help_)
        if typ is not None:
            kw["type"] = typ
        if name == "max_time":
            kw["show_default"] = "none"
        f = click.option(*flags, name, **kw)(f)
    return f


@click.command("train")
@click.argument("data", required=False, metavar="DATA")
@click.option("-o", "--out", "run_dir", required=True, type=click.Path(),
              help="Run directory (checkpoints, metrics, prepared data).")
@click.option("--corpus", metavar="NAME", help="Train on a registry corpus instead of DATA.")
@click.option("--restart", is_flag=True, help="Start over even if RUN_DIR has a checkpoint.")
@click.option("--init-from", metavar="CKPT", help="Fine-tune from this checkpoint's weights.")
@click.option("--publish", type=click.Path(dir_okay=False), metavar="PATH",
              help="After each improvement, copy best to PATH atomically (for other jobs).")
@click.option("--grow-vocab", is_flag=True,
              help="Extend the model's vocabulary with new characters of the data.")
@_model_options
@data_options
@threads_option
@json_option
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Also append log lines here.")
@click.option("--distributed", is_flag=True,
              help="Require MPI data-parallel training (mpirun -n N charrnn train ...; needs "
                   "mpi4py). Under mpirun it is on anyway.")
@click.pass_context
def command(ctx, data, run_dir, corpus, restart, init_from, publish, grow_vocab, threads, as_json,
            quiet, log_file, distributed, **values):
    """Train a model on DATA and write checkpoints to RUN_DIR.

    DATA is a directory made by `charrnn prepare`, or a text file or folder (prepared
    into RUN_DIR/data). Running the same command again resumes from RUN_DIR's latest
    checkpoint; --restart starts over. Stop with Ctrl-C (or SIGTERM): the run saves and
    exits 130 (143).

    \b
    How long it runs: --max-iters and --max-epochs count over the whole run, --max-time
    is a budget for this command. A command that names any of the three sets all three
    (those it leaves out are off); one that names none keeps the run's own limits, and
    a new run that names none stops after 10 epochs. So the same cron line with
    --max-time 50m trains 50 more minutes every night.
    On resume, --lr, --schedule, --warmup-iters, --clip, --weight-decay, --dropout and
    the other optimisation options may change (each change is logged); options that
    change the model's shape or the data need --restart.

    \b
    Examples:
      charrnn train data/ -o run/ --max-time 30m
      charrnn train notes.txt -o run/ --layers 3 --hidden 512 --dropout 0.2
      charrnn train --corpus tinyshakespeare -o shakespeare/ --max-epochs 20
      mpirun -n 4 charrnn train data/ -o run/ --batch-size 64 --threads 1
    """
    from .. import console

    console.configure(quiet=quiet, log_file=_check_log_file(log_file))
    _stop_cleanly_before_training()
    if data is None and corpus is None:
        raise click.UsageError("give DATA (a prepared directory, a text file or a folder) "
                               "or --corpus NAME")
    if data is not None and corpus is not None:
        raise click.UsageError("give DATA or --corpus, not both")
    explicit = {}
    for _flags, section, name, _typ, _help in OPTIONS:
        src = ctx.get_parameter_source(name)
        if src not in (click.core.ParameterSource.DEFAULT, None):
            explicit[(section, name)] = values[name]
    mvals = {n: values[n] for _f, s, n, _t, _h in OPTIONS if s == "model"}
    tvals = {n: values[n] for _f, s, n, _t, _h in OPTIONS if s == "train"}
    data_cfg, data_explicit = data_config(ctx, values)
    mcfg = ModelConfig(**mvals)
    tcfg = TrainConfig(**tvals)
    mcfg.validate()
    tcfg.validate()

    from ..training.distributed import communicator

    comm = communicator(force=distributed)
    if comm.rank != 0:
        console.configure(quiet=True, log_file=None)       # rank 0 alone logs
    with comm.guard():
        summary = _run(data, corpus, run_dir, restart, init_from, publish, grow_vocab, threads,
                       as_json, explicit, mcfg, tcfg, comm, data_cfg, data_explicit)
    if comm.rank == 0:
        if as_json:
            _emit(summary)
        _print_summary(summary)


def _emit(rec: dict) -> None:
    import json
    import sys

    sys.stdout.write(json.dumps(rec) + "\n")
    sys.stdout.flush()


def _run(data, corpus, run_dir, restart, init_from, publish, grow_vocab, threads, as_json,
         explicit, mcfg, tcfg, comm, data_cfg=None, data_explicit=frozenset()) -> dict:
    """Lock, resolve the data and train.  Under MPI (``comm``) the set-up steps run on
    every rank inside :meth:`Comm.together`, so a failure on one rank (the lock is held,
    the data is bad) stops every rank with one Error line instead of a hang; rank 0
    alone takes the lock and prepares the data."""
    import os
    from pathlib import Path

    from ..errors import InputError

    rank0 = comm.rank == 0
    run = Path(run_dir)
    with comm.together():
        if not str(run_dir).strip():
            raise click.BadParameter("give a run directory, not an empty path",
                                     param_hint="'-o' / '--out'")
        if data is not None and data != "-" and not Path(data).exists():
            raise InputError(f"{data}: no such file or directory")
        if data is not None and data != "-" and Path(data, "latest.safetensors").is_file() \
                and not Path(data, "meta.json").is_file():
            raise InputError(f"{data} is a run directory, not data; its prepared data is "
                             f"{Path(data, 'data')}")
        if Path(run_dir, "meta.json").is_file():
            raise InputError(f"{run_dir} is a prepared data directory, not a run directory; "
                             "give training a folder of its own with -o")
        if threads is None and not os.environ.get("CHARRNN_THREADS"):
            threads = comm.default_threads()        # MPI: the host's cores shared by its ranks
        n_threads = use_threads(threads)
        if publish is not None and rank0:
            from ..store.fsutil import check_publish_target

            check_publish_target(publish)
    from ..training.lock import RunLock
    from ..training.runs import resolve_training_data
    from ..training.loop import RunOptions, train

    lock = RunLock(run) if rank0 else None
    data_dir = None
    created = rank0 and not run.exists() and not run.is_symlink()
    try:
        with comm.together():
            if lock is not None:
                lock.acquire()
            if rank0:       # the other ranks wait in together()'s exchange meanwhile
                data_dir = resolve_training_data(data, corpus, run, restart=restart,
                                                 grow_vocab=grow_vocab, data_cfg=data_cfg,
                                                 data_explicit=data_explicit)
        data_dir = comm.bcast(data_dir)
        opts = RunOptions(run_dir=run, data_dir=data_dir, restart=restart, init_from=init_from,
                          explicit=explicit, json_lines=as_json, threads=n_threads,
                          emit=_emit if as_json else None, comm=comm, grow_vocab=grow_vocab,
                          publish=Path(publish) if publish else None)
        return train(mcfg, tcfg, opts)
    except BaseException:
        if lock is not None:
            lock.release()
            lock = None
        if created:                  # a run that failed before writing anything leaves
            with contextlib.suppress(OSError):     # no empty run directory behind
                run.rmdir()
        raise
    finally:
        if lock is not None:
            lock.release()


def _check_log_file(path):
    """--log-file must be appendable before anything runs: a cron job whose stderr goes
    nowhere has only this file to tell it what happened."""
    if path is None:
        return None
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        from ..errors import InputError

        raise InputError(f"--log-file {path}: cannot append to it ({e.strerror or e})") \
            from None
    return path


def _stop_cleanly_before_training() -> None:
    """SIGTERM while the run is still setting up (imports, data, checkpoint) ends it with
    one line and exit 143, like SIGTERM during training; the training loop installs its
    own handler, which saves first."""
    import signal

    from ..errors import Interrupted

    def handler(signum, frame):
        raise Interrupted("terminated by SIGTERM before training started; nothing new was "
                          "saved (run the same command again to start)", 128 + signum)
    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:          # not the main thread (embedded use): leave it alone
        pass


def _print_summary(s: dict) -> None:
    from .. import console
    from ..units import fmt_duration

    def lb(loss, bpc):
        return "n/a" if loss is None else f"{loss:.4f} (bpc {bpc:.3f})"

    if s.get("nothing_to_do"):
        return                       # train() said why in one line
    reason = {"max_iters": "reached --max-iters", "max_epochs": "reached the epoch limit",
              "max_time": "reached --max-time", "patience": "early stopping"}.get(
        s["stopped"], s["stopped"] or "done")
    console.log(
        f"{reason}: iteration {s['iteration']} (epoch {s['epoch']:.2f}), "
        f"{s['iterations_this_run']} iterations in {fmt_duration(s['seconds'])}, "
        f"{s['chars_per_sec']:,.0f} chars/s; val loss {lb(s['val_loss'], s['val_bpc'])}, "
        f"best {lb(s['best_val_loss'], s['best_val_bpc'])} at iteration {s['best_iteration']}")
    console.log(f"saved {s['latest']} and {s['best']}")
