"""What a checkpoint (or a run directory) holds.

:func:`checkpoint_info` runs the same checks as loading
(:func:`charrnn.store.checkpoint.inspect_header`: the header, config, vocabulary, train_state
and every parameter's name, dtype and shape) and returns a JSON-able dict::

    {"path", "file_bytes", "format", "format_version", "kind", "created",
     "charrnn_version", "config": {...}, "params": int, "tensors": int,
     "extra_tensors": [names not of the model, e.g. optimizer moments],
     "vocab": {"size", "unk", "preview"} | null,
     "training": {"iteration", "epoch", "best_val_loss", "best_val_bpc",
                  "elapsed", "elapsed_text" (e.g. "3h25m46s"), "data_dir", "data_chars",
                  "corpus_sha256", "data_sources", "train_config"} | null,
     "checksums": "verified" | "not verified",
     "run_dir": str | null, "metrics": {"count", "recent": [...], "val_loss": [...],
                                        "train_loss": [...]} | null}

With ``verify`` (the default) the tensors are read too: every checksum is checked and
every value must be finite, so "verified" means the file loads; ``verify=False`` reads
only the header (still every check above).  Missing keys in train_state or metrics
lines are tolerated (shown as null).  :func:`json_safe` turns NaN and infinities (which
metrics lines and a train_state may hold) into null, so ``--json`` output is strict JSON.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import CharrnnError
from .units import fmt_duration

LN2 = math.log(2.0)
METRICS_NAME = "metrics.jsonl"
RECENT = 5
PREVIEW_CHARS = 60


def vocab_preview(vocab, limit: int = PREVIEW_CHARS) -> str:
    """The first characters of the vocabulary, with escapes for invisible ones."""
    shown = []
    for ch in vocab.chars[:limit]:
        if ch == "\n":
            shown.append("\\n")
        elif ch == "\t":
            shown.append("\\t")
        elif ch == " ":
            shown.append("␣")
        elif not ch.isprintable():
            shown.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            shown.append(ch)
    text = "".join(shown)
    if len(vocab.chars) > limit:
        text += f" … (+{len(vocab.chars) - limit})"
    return text


def corpus_digest(sources) -> str | None:
    """One sha256 for the training text: the source's own sha256 when there is one
    source, else the sha256 of the sources' "path sha256" lines in order."""
    if not isinstance(sources, list) or not sources:
        return None
    try:
        if len(sources) == 1:
            return str(sources[0]["sha256"])
        import hashlib

        lines = "".join(f"{s['path']} {s['sha256']}\n" for s in sources)
        return hashlib.sha256(lines.encode("utf-8")).hexdigest()
    except (KeyError, TypeError):
        return None


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl (unreadable lines are skipped)."""
    from .store.checkpoint import MAX_JSON_DEPTH, json_depth

    p = Path(run_dir) / METRICS_NAME
    out = []
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                if isinstance(rec, dict) and json_depth(rec, MAX_JSON_DEPTH) <= MAX_JSON_DEPTH:
                    out.append(rec)
    except OSError:
        return []
    return out


def _num(x):
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) \
        and math.isfinite(x) else None


def metrics_summary(records: list[dict], recent: int = RECENT) -> dict:
    return {
        "count": len(records),
        "recent": records[-recent:],
        "iters": [r.get("iter") for r in records],
        "train_loss": [_num(r.get("train_loss")) for r in records],
        "val_loss": [_num(r.get("val_loss")) for r in records],
    }


def json_safe(obj):
    """``obj`` with every non-finite float (NaN, Infinity) replaced by None and every
    lone surrogate in a string (a checkpoint's metadata may hold them) written as its
    ``\\udcXX`` escape, containers copied: what ``json.dumps(..., allow_nan=False)``
    accepts and what a UTF-8 stdout can print."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
            return obj
        except UnicodeEncodeError:
            return obj.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(obj, dict):
        return {json_safe(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def checkpoint_info(path, latest: bool = False, verify: bool = True) -> dict:
    """See the module docstring."""
    from .store.checkpoint import inspect_header, read_checkpoint

    if verify:       # every check loading makes, the tensors' checksums and values too
        h = read_checkpoint(path, latest, model=False).header
    else:
        h = inspect_header(path, latest)
    p, meta, entries, cfg = h.path, h.metadata, h.entries, h.config
    names = set(h.param_names)
    params = h.num_params
    vocab = None
    if h.vocab is not None:
        v = h.vocab
        vocab = {"size": len(v), "chars": len(v.chars), "unk": v.unk,
                 "preview": vocab_preview(v)}
    ts = h.train_state
    training = None
    if isinstance(ts, dict):
        best = _num(ts.get("best_val_loss"))
        elapsed = _num(ts.get("elapsed"))
        training = {
            "iteration": ts.get("iteration"),
            "epoch": ts.get("epoch"),
            "best_val_loss": best,
            "best_val_bpc": None if best is None else best / LN2,
            "best_iteration": ts.get("best_iteration"),
            "last_val_loss": _num(ts.get("last_val_loss")),
            "elapsed": elapsed,
            # null, not fmt_duration's "?", for a missing or invalid time
            "elapsed_text": None if elapsed is None or elapsed < 0 else fmt_duration(elapsed),
            "chars_seen": ts.get("chars_seen"),
            "data_dir": ts.get("data_dir"),
            "data_chars": ts.get("data_chars"),
            "corpus_sha256": corpus_digest(ts.get("data_sources")),
            "data_sources": ts.get("data_sources"),
            "train_config": ts.get("train_config") if isinstance(ts.get("train_config"),
                                                                 dict) else None,
        }
    size = h.file_bytes
    run_dir = Path(path) if Path(path).is_dir() else None
    metrics = None
    if run_dir is not None:
        recs = read_metrics(run_dir)
        if recs:
            metrics = metrics_summary(recs)
    return {
        "path": str(p),
        "file_bytes": size,
        "format": meta.get("format"),
        "format_version": int(meta["format_version"]),
        "kind": meta.get("kind", "model"),
        "created": meta.get("created"),
        "charrnn_version": meta.get("charrnn_version"),
        "config": cfg.to_dict(),
        "params": int(params),
        "tensors": len(entries),
        "extra_tensors": sorted(n for n in entries if n not in names),
        "vocab": vocab,
        "training": training,
        "checksums": "verified" if verify else "not verified",
        "run_dir": None if run_dir is None else str(run_dir),
        "metrics": metrics,
    }


# ---------------------------------------------------------------------- terminal plot

_BARS = " ▁▂▃▄▅▆▇█"


def sparkline(values, width: int = 60) -> str:
    """Unicode bars of the finite values (resampled to at most ``width``)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return ""
    if len(vals) > width:
        step = len(vals) / width
        vals = [vals[int(i * step)] for i in range(width - 1)] + [vals[-1]]
    lo, hi = min(vals), max(vals)
    span = hi - lo
    out = []
    for v in vals:
        k = 8 if span == 0 else 1 + int(round((v - lo) / span * 7))
        out.append(_BARS[k])
    return "".join(out)


def plot_png(info: dict, path) -> None:
    """Loss curves to a PNG (needs matplotlib: pip install matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CharrnnError("--plot needs matplotlib (pip install matplotlib)") from None
    m = info.get("metrics")
    if not m:
        raise CharrnnError("no metrics.jsonl to plot (give a run directory)")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    it = m["iters"]
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        pts = [(i, v) for i, v in zip(it, m[key]) if v is not None and i is not None]
        if pts:
            ax.plot([a for a, _ in pts], [b for _, b in pts], label=label,
                    marker="o" if key == "val_loss" else None, markersize=3)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (nats/char)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    from .store.fsutil import atomic_open
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


__all__ = ["checkpoint_info", "json_safe", "read_metrics", "metrics_summary", "sparkline",
           "vocab_preview", "plot_png"]
