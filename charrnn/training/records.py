"""What a training run tells its user: each evaluation's record (metrics.jsonl, the log
line and --json's event) and the summary of the invocation."""
from __future__ import annotations

import math
import time

from .. import console

LN2 = math.log(2.0)


def eval_record(tr, train_loss: float | None, val: float | None, lr: float,
                cps: float) -> dict:
    """The record of the evaluation trainer ``tr`` has just made."""
    return {
        "iter": tr.iteration,
        "epoch": round(tr.epoch_float(), 4),
        "train_loss": None if train_loss is None else round(train_loss, 6),
        "val_loss": None if val is None else round(val, 6),
        "val_bpc": None if val is None else round(val / LN2, 6),
        "lr": lr,
        "chars_per_sec": round(cps, 1),
        "elapsed": round(tr.elapsed, 3),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def publish_record(tr, rec: dict, bar) -> None:
    """metrics.jsonl, the log line and --json's record of an evaluation: written
    after latest is saved, so a run that dies in between (a closed pipe, a full
    disk) never has metrics ahead of its checkpoint."""
    if not tr.rank0:
        return
    tr.files.append_metrics(rec)
    if tr.opts.emit is not None:
        tr.opts.emit(dict(rec, event="eval"))
    val = ("" if rec["val_loss"] is None
           else f" val {rec['val_loss']:.4f} (bpc {rec['val_bpc']:.3f})")
    loss = "-" if rec["train_loss"] is None else f"{rec['train_loss']:.4f}"
    line = (f"iter {rec['iter']} epoch {rec['epoch']:.2f} loss {loss}"
            f"{val} lr {rec['lr']:.3g} {rec['chars_per_sec']:,.0f} chars/s")
    if bar is not None:
        bar.write(line)
    else:
        console.log(line)


def summary(tr, stopped, start_iter: int, run_start: float) -> dict:
    """The ``done`` record of an invocation (--json's last line; the CLI's summary)."""
    wall = time.monotonic() - run_start
    iters = tr.iteration - start_iter
    cps = iters * tr.tcfg.batch_size * tr.tcfg.seq_len / wall if wall > 0 else 0.0
    best = None if not math.isfinite(tr.best_val) else tr.best_val
    return {
        "event": "done",
        "stopped": stopped,
        "iteration": tr.iteration,
        "epoch": round(tr.epoch_float(), 4),
        "iterations_this_run": iters,
        "seconds": round(wall, 3),
        "chars_per_sec": round(cps, 1),
        "val_loss": tr.last_val,
        "val_bpc": None if tr.last_val is None else tr.last_val / LN2,
        "best_val_loss": best,
        "best_val_bpc": None if best is None else best / LN2,
        "best_iteration": tr.best_iter,
        "latest": str(tr.files.latest),
        "best": str(tr.files.best),
        "saved": True,
    }


def nothing_to_do_line(tr, stopped: str, saved: bool) -> str:
    """The one line of a run that is already past its limits."""
    t = tr.tcfg
    limit = {"max_iters": f"--max-iters {t.max_iters}",
             "max_epochs": f"{t.epoch_limit} epochs"
             + ("" if t.max_epochs else " (the cap of a run that names no limit)"),
             "max_time": "--max-time"}[stopped]
    extra = "; the new corpus is recorded in latest" if saved else ""
    return (f"nothing to do: {tr.files.dir} is at iteration {tr.iteration}, "
            f"epoch {tr.epoch_float():.2f}, and has reached {limit}; give "
            f"--max-time, --max-iters or a higher --max-epochs to train "
            f"further{extra}")
