"""``charrnn info CKPT``: what a checkpoint or run directory holds (see charrnn.info)."""
from __future__ import annotations

import sys

import click

from .options import checkpoint_argument, json_option


def _fmt(x, spec: str = ".4f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def _render(info: dict, out) -> None:
    import io
    import shutil

    buf = io.StringIO()
    tty = out.isatty()
    width = shutil.get_terminal_size((100, 24)).columns if tty else 100
    _render_to(info, buf, width, tty)
    out.write("\n".join(line.rstrip() for line in buf.getvalue().split("\n")))


def _render_to(info: dict, out, width: int, color: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..units import fmt_bytes, fmt_duration

    # markup and emoji codes off: the strings shown come from the file ("[/]" in a
    # crafted 'created' or vocabulary would be a MarkupError, "[bold]" would vanish)
    con = Console(file=out, highlight=False, markup=False, emoji=False, width=width,
                  force_terminal=color, color_system="auto" if color else None)
    c = info["config"]
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("checkpoint", f"{info['path']} ({info['kind']}, format "
                            f"{info['format']} v{info['format_version']}, "
                            f"{fmt_bytes(info['file_bytes'])})")
    if info.get("created") or info.get("charrnn_version"):
        t.add_row("written", f"{info.get('created') or '-'} by charrnn "
                             f"{info.get('charrnn_version') or '?'}")
    opts = []
    if c.get("embed_size"):
        opts.append(f"embedding {c['embed_size']}")
    else:
        opts.append("one-hot input")
    if c.get("peepholes"):
        opts.append("peepholes")
    if c.get("residual"):
        opts.append("residual")
    if c["cell"] == "gru":
        opts.append(f"reset {c['gru_reset']}")
    if c["cell"] == "rnn":
        opts.append(c["nonlinearity"])
    if c.get("dropout"):
        opts.append(f"dropout {c['dropout']}")
    t.add_row("model", f"{c['cell'].upper()} {c['num_layers']} x {c['hidden_size']}, "
                       f"{', '.join(opts)}, {c['dtype']}")
    t.add_row("parameters", f"{info['params']:,}")
    v = info.get("vocab")
    if v:
        unk = f", unknown symbol {v['unk']!r}" if v.get("unk") else ""
        t.add_row("vocabulary", f"{v['size']} symbols{unk}")
        t.add_row("", v["preview"])
    else:
        t.add_row("vocabulary", f"none stored ({c['vocab_size']} symbols)")
    tr = info.get("training")
    if tr:
        t.add_row("training", f"iteration {_fmt(tr.get('iteration'))}, epoch "
                              f"{_fmt(tr.get('epoch'), '.2f')}, trained "
                              f"{tr.get('elapsed_text') or '-'}")
        if tr.get("best_val_loss") is not None:
            at = f" (iteration {tr['best_iteration']})" if tr.get("best_iteration") else ""
            t.add_row("best val", f"loss {tr['best_val_loss']:.4f} nats/char, bpc "
                                  f"{tr['best_val_bpc']:.4f}{at}")
        tc = tr.get("train_config") or {}
        if tc:
            keys = ("optimizer", "lr", "batch_size", "seq_len", "schedule")
            t.add_row("train config", ", ".join(f"{k} {tc[k]}" for k in keys if k in tc))
        if tr.get("data_dir"):
            t.add_row("data", str(tr["data_dir"]))
        if tr.get("corpus_sha256"):
            chars = tr.get("data_chars")
            t.add_row("corpus", (f"{chars:,} chars, " if isinstance(chars, int) else "")
                      + f"sha256 {tr['corpus_sha256'][:16]}...")
    if info.get("extra_tensors"):
        t.add_row("extra tensors", f"{len(info['extra_tensors'])} (optimizer state etc.)")
    t.add_row("checksums", info["checksums"])
    con.print(t)
    m = info.get("metrics")
    if m:
        from ..info import sparkline

        con.print()
        mt = Table(title=f"metrics.jsonl (last {len(m['recent'])} of {m['count']})",
                   title_justify="left")
        for col in ("iter", "epoch", "train_loss", "val_loss", "val_bpc", "lr",
                    "chars/s", "elapsed"):
            mt.add_column(col, justify="right")
        for r in m["recent"]:
            mt.add_row(_fmt(r.get("iter")), _fmt(r.get("epoch"), ".2f"),
                       _fmt(r.get("train_loss")), _fmt(r.get("val_loss")),
                       _fmt(r.get("val_bpc")), _fmt(r.get("lr"), ".2e"),
                       _fmt(r.get("chars_per_sec"), ".0f"),
                       "-" if r.get("elapsed") is None else fmt_duration(r["elapsed"]))
        con.print(mt)
        for key, label in (("train_loss", "train loss"), ("val_loss", "val loss  ")):
            vals = [x for x in m[key] if x is not None]
            if vals:
                con.print(f"{label} {sparkline(vals)}  {vals[0]:.3f} -> {vals[-1]:.3f} "
                          f"(min {min(vals):.3f})")


@click.command("info")
@checkpoint_argument
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check every tensor's checksum (--no-verify: read only the header).")
@click.option("--plot", "plot", type=click.Path(dir_okay=False), default=None,
              help="Write the loss curves of a run directory to a PNG (needs matplotlib).")
@json_option
def command(ckpt, latest, verify, plot, as_json):
    """Show what CKPT holds: config, parameters, vocabulary, training progress.

    \b
    CKPT: a checkpoint file, or a run directory (its best, or latest with --latest);
    a run directory also shows its recent metrics.jsonl records and loss curves.
    Every check of loading is made (config, vocabulary, each tensor's name, dtype and
    shape), and every checksum and value unless --no-verify (then only the header is
    read): "checksums verified" means the file loads.
    """
    from ..info import checkpoint_info, json_safe, plot_png

    info = json_safe(checkpoint_info(ckpt, latest=latest, verify=verify))
    if plot:
        plot_png(info, plot)
    if as_json:
        import json

        # NaN/Infinity (a metrics line may hold them) become null: strict JSON only
        sys.stdout.write(json.dumps(info, ensure_ascii=False, allow_nan=False)
                         + "\n")
    else:
        _render(info, sys.stdout)
