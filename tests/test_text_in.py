"""Text in, the way prepare takes it (issue 28, items 13-15): one decoding rule for
prepare and eval (a leading byte order mark dropped, NUL bytes refused, line ends kept),
the vocabulary's --lowercase applied by eval and sample --prime, prepare's data options
defined once (``charrnn.cli.dataopts``) and honoured by ``resolve_training_data``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from charrnn.store.checkpoint import LATEST_NAME
from charrnn.cli.dataopts import DATA_FIELDS, data_config, data_options
from charrnn.config import DataConfig
from charrnn.store.dataset import Dataset
from charrnn.store.prepare import prepare
from charrnn.store.text import codec_name, decode_stream
from charrnn.errors import ConfigError, InputError, VocabError
from charrnn.training.runs import resolve_training_data
from charrnn.sampling import encode_prime
from charrnn.store.vocab import Vocab

from conftest import make_text, run_cli

TINY = ["--layers", "1", "--hidden", "16", "--max-iters", "5", "--batch-size", "4",
        "--seq-len", "16", "--eval-every", "5"]


@pytest.fixture(scope="module")
def lower_run(tmp_path_factory):
    """A tiny model trained on data prepared with --lowercase."""
    root = tmp_path_factory.mktemp("lower")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(6000, seed=2), encoding="utf-8")
    r = run_cli("prepare", corpus, "-o", root / "data", "--lowercase")
    assert r.returncode == 0, r.stderr
    r = run_cli("train", root / "data", "-o", root / "run", *TINY)
    assert r.returncode == 0, r.stderr
    return root


def _eval(run, *args, input=None):
    r = run_cli("eval", run, *args, input=input)
    return r.returncode, r.stdout, r.stderr


# ------------------------------------------------------------------ Vocab.lowercase

def test_vocab_carries_lowercase():
    low = Vocab(list("ab "), lowercase=True)
    plain = Vocab(list("ab "))
    assert low.to_dict() == {"version": 1, "chars": ["a", "b", " "], "unk": None,
                             "lowercase": True}
    assert plain.to_dict() == {"version": 1, "chars": ["a", "b", " "], "unk": None}
    assert Vocab.from_dict(low.to_dict()) == low
    assert Vocab.from_dict(low.to_dict()).lowercase is True
    # a file of an earlier version (no field) loads as not lower-cased
    assert Vocab.from_dict({"version": 1, "chars": ["a"], "unk": None}).lowercase is False
    assert low != plain and plain == Vocab(list("ab "))
    grown = low.extend(["c"])
    assert grown.lowercase is True and grown.chars == ["a", "b", " ", "c"]
    assert low.normalize("AB Ç") == "ab ç" and plain.normalize("AB") == "AB"
    with pytest.raises(VocabError) as ei:
        Vocab.from_dict({"version": 1, "chars": ["a"], "unk": None, "lowercase": "yes"})
    assert str(ei.value) == "the vocabulary's 'lowercase' must be true or false (got 'yes')"
    with pytest.raises(VocabError) as ei:
        Vocab.from_dict({"version": 1, "chars": ["a"], "unk": None, "lower": True})
    assert str(ei.value) == "vocabulary has unknown field(s): lower"


def test_encode_prime_normalizes_as_the_vocabulary_says():
    low = Vocab(list("eht "), lowercase=True)
    assert encode_prime(low, "THE the").tolist() == low.encode("the the").tolist()
    with pytest.raises(VocabError, match="'E', 'H', 'T'"):
        encode_prime(Vocab(list("eht ")), "THE")


# ------------------------------------------------------------------ the decoding rule

def _decode(data: bytes, size: int, encoding: str = "utf-8", errors: str = "strict"):
    chunks = [data[i:i + size] for i in range(0, len(data), size)]
    pairs = list(decode_stream(chunks, "in", encoding, errors))
    assert b"".join(raw for raw, _ in pairs) == data
    return "".join(text for _, text in pairs)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 1000])
def test_one_leading_bom_is_dropped_and_crlf_kept_whatever_the_chunks(size):
    data = b"\xef\xbb\xbfh\xc3\xa9llo\r\n\xef\xbb\xbfx"
    assert _decode(data, size) == "héllo\r\n\ufeffx"      # only the leading one
    assert _decode(b"\xef\xbb\xbf", size) == ""
    assert _decode(b"\xef\xbb\xbf\xef\xbb\xbfa", size) == "\ufeffa"


@pytest.mark.parametrize("encoding,data,want", [
    ("utf-16-le", "\ufeffab\r\n".encode("utf-16-le"), "ab\r\n"),
    ("utf-16", "ab".encode("utf-16"), "ab"),                          # the codec's BOM
    ("utf-32-be", "\ufeffab".encode("utf-32-be"), "ab"),
    ("utf-8-sig", b"\xef\xbb\xbf\xef\xbb\xbfa", "\ufeffa"),             # one, not two
    ("latin-1", b"\xef\xbb\xbfa", "\xef\xbb\xbfa"),                     # no U+FEFF in it
    ("cp1252", "\ufeffa".encode("utf-8"), "ï»¿a"),
])
def test_bom_in_every_encoding(encoding, data, want):
    assert _decode(data, 1, encoding) == want
    assert _decode(data, 1000, encoding) == want


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_nul_bytes_and_bad_bytes_report_the_same_offset_whatever_the_chunks(size):
    with pytest.raises(InputError) as ei:
        _decode(b"abcdefg\0hij", size)
    assert str(ei.value) == "in: looks like a binary file (NUL byte at offset 7)"
    with pytest.raises(InputError) as ei:
        _decode(b"ab\xc3(def", size)
    assert str(ei.value) == "in: invalid utf-8 at byte 2"
    assert _decode(b"ab\xff", size, errors="replace") == "ab\ufffd"
    # UTF-16 text is full of NUL bytes: not checked there
    assert _decode("a\0b".encode("utf-16-le"), size, "utf-16-le") == "a\0b"


def test_encoding_names():
    assert codec_name("UTF8") == "utf-8"
    with pytest.raises(InputError) as ei:
        codec_name("klingon")
    assert str(ei.value) == "unknown encoding 'klingon'"
    with pytest.raises(InputError) as ei:
        codec_name("rot13")
    assert str(ei.value) == "'rot13' is not a text encoding"


# ------------------------------------------------------------------ charrnn prepare

def test_prepare_drops_the_bom_of_each_file_and_keeps_crlf(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"\xef\xbb\xbfab\r\n")
    (folder / "b.txt").write_bytes(b"\xef\xbb\xbfba\r\n")
    r = run_cli("prepare", folder, "-o", tmp_path / "d", "--val-frac", "0", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["chars"] == 8
    vocab = json.loads((tmp_path / "d" / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == {"version": 1, "chars": ["\n", "\r", "a", "b"], "unk": None}
    ds = Dataset(tmp_path / "d")
    assert ds.vocab.decode(ds.split("train")) == "ab\r\nba\r\n"


def test_prepare_drops_the_bom_of_stdin_and_of_utf16le(tmp_path):
    r = run_cli("prepare", "-", "-o", tmp_path / "d", "--val-frac", "0", "--json",
                input="\ufeffhello\n")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["chars"] == 6
    src = tmp_path / "w.txt"
    src.write_bytes("\ufeffHello\n".encode("utf-16-le"))
    r = run_cli("prepare", src, "-o", tmp_path / "e", "--val-frac", "0", "--encoding",
                "utf-16-le", "--lowercase")
    assert r.returncode == 0, r.stderr
    vocab = json.loads((tmp_path / "e" / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == {"version": 1, "chars": ["\n", "e", "h", "l", "o"], "unk": None,
                     "lowercase": True}


def test_prepare_help_documents_bom_and_line_ends():
    r = run_cli("prepare", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "a byte order mark at the start of each file is dropped" in text
    assert "line ends are kept as they are (CRLF is two characters, \\r and \\n;" in text


def test_data_options_decorator_builds_the_config_and_the_explicit_set():
    seen = {}

    @click.command()
    @data_options
    @click.pass_context
    def cmd(ctx, **values):
        seen["result"] = data_config(ctx, values)

    runner = CliRunner()
    res = runner.invoke(cmd, [])
    assert res.exit_code == 0, res.output
    assert seen["result"] == (DataConfig(), frozenset())
    res = runner.invoke(cmd, ["--lowercase", "--val-frac", "0.2", "--glob", "*.py",
                              "--min-count", "1"])
    assert res.exit_code == 0, res.output
    cfg, explicit = seen["result"]
    assert cfg == DataConfig(lowercase=True, val_frac=0.2, glob="*.py")
    assert explicit == {"lowercase", "val_frac", "glob", "min_count"}
    res = runner.invoke(cmd, ["--val-frac", "0.6", "--test-frac", "0.5"])
    assert res.exit_code == 2
    assert "--val-frac + --test-frac must be < 1 (got 0.6 + 0.5)" in res.output
    assert set(DATA_FIELDS) == {f for f in DataConfig().to_dict()}


# ------------------------------------------------------------------ eval and sample

def test_eval_lowercases_for_a_lowercase_model(lower_run, tmp_path):
    run = lower_run / "run"
    up, lo = tmp_path / "up.txt", tmp_path / "lo.txt"
    up.write_text("THE QUICK FOX.\nJumps Over!\n", encoding="utf-8")
    lo.write_text("the quick fox.\njumps over!\n", encoding="utf-8")
    code, want, err = _eval(run, lo)
    assert code == 0 and want.startswith("loss ") and "unknown" not in want, err
    for args, inp in [((up,), None), (("-",), up.read_text()),
                      ((up, "--streams", "2"), None)]:
        code, out, err = _eval(run, *args, input=inp)
        assert (code, out, err) == (0, want, ""), args
    code, out, _ = _eval(run, up, "--json")
    assert json.loads(out)["unknown"] == 0 and json.loads(out)["chars"] == 27
    # --lines scores the lower-cased line and prints it as it was read
    code, out_up, _ = _eval(run, "--lines", up)
    code2, out_lo, _ = _eval(run, "--lines", lo)
    assert code == code2 == 0
    rows_up = [line.split("\t") for line in out_up.splitlines()]
    rows_lo = [line.split("\t") for line in out_lo.splitlines()]
    assert [r[:2] for r in rows_up] == [r[:2] for r in rows_lo]
    assert [r[2] for r in rows_up] == ["THE QUICK FOX.", "Jumps Over!"]


def test_eval_reads_text_as_prepare_does(lower_run, tmp_path):
    run = lower_run / "run"
    lo = tmp_path / "lo.txt"
    lo.write_text("the quick fox.\n", encoding="utf-8")
    _, want, _ = _eval(run, lo)
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + lo.read_bytes())
    wide = tmp_path / "wide.txt"
    wide.write_bytes("\ufeffThe quick fox.\n".encode("utf-16-le"))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("the quick fox.\n".encode("latin-1"))
    for args in [(bom,), (wide, "--encoding", "utf-16-le"), (latin, "--encoding", "latin-1")]:
        assert _eval(run, *args) == (0, want, ""), args
    binary = tmp_path / "bin.dat"
    binary.write_bytes(b"the\0fox\n")
    assert _eval(run, binary) == (1, "", f"Error: {binary}: looks like a binary file "
                                         "(NUL byte at offset 3)\n")
    assert _eval(run, "--lines", binary)[::2] == (1, f"Error: {binary}: looks like a "
                                                     "binary file (NUL byte at offset 3)\n")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"the \xff fox\n")
    assert _eval(run, bad) == (1, "", f"Error: {bad}: invalid utf-8 at byte 4\n")
    code, out, err = _eval(run, bad, "--errors", "replace")
    assert code == 0 and out.startswith("loss ") and out.endswith("chars 9  unknown 1\n")
    assert err == ("Warning: 1 character(s) not in the model's vocabulary ('\ufffd') were "
                   "left out of the score\n")
    assert _eval(run, lo, "--encoding", "klingon") == (1, "", "Error: unknown encoding "
                                                               "'klingon'\n")
    code, _, err = _eval(run, lo, "--errors", "ignore")
    assert code == 2 and "'ignore' is not one of 'strict', 'replace'" in err
    help_text = run_cli("eval", "--help").stdout
    assert "--encoding NAME" in help_text and "--errors [strict|replace]" in help_text


def test_sample_lowercases_the_prime(lower_run):
    run = lower_run / "run"
    args = ["-n", "30", "--seed", "3", "--no-echo"]
    up = run_cli("sample", run, "--prime", "THE QUICK", *args)
    lo = run_cli("sample", run, "--prime", "the quick", *args)
    assert up.returncode == 0 and up.stderr == "", up.stderr
    assert up.stdout == lo.stdout and len(up.stdout) >= 30


# ------------------------------------------------------------------ resolve_training_data

def _meta(d: Path) -> dict:
    return json.loads((d / "meta.json").read_text(encoding="utf-8"))


def _stamp(d: Path):
    st = (d / "meta.json").stat()
    return st.st_ino, st.st_mtime_ns


def _corpus(tmp_path, seed=2, n=6000) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(make_text(n, seed=seed), encoding="utf-8")
    return p


def _with_checkpoint(lower_run, run: Path) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    shutil.copy(lower_run / "run" / LATEST_NAME, run / LATEST_NAME)
    return run


def test_resolve_prepares_text_with_the_data_options_and_reuses_it(tmp_path):
    text, run = _corpus(tmp_path), tmp_path / "run"
    cfg = DataConfig(val_frac=0.2, lowercase=True)
    d = resolve_training_data(str(text), None, run, data_cfg=cfg,
                              data_explicit={"val_frac", "lowercase"})
    assert d == run / "data"
    meta = _meta(d)
    assert meta["options"] == cfg.to_dict()
    assert meta["counts"]["val"] == 1200
    assert Dataset(d).vocab.lowercase is True
    stamp = _stamp(d)
    resolve_training_data(str(text), None, run, data_cfg=cfg,
                          data_explicit={"val_frac", "lowercase"})
    assert _stamp(d) == stamp                                     # up to date: reused
    # no checkpoint: other options re-prepare (the options given, defaults for the rest)
    resolve_training_data(str(text), None, run, data_cfg=DataConfig(val_frac=0.1),
                          data_explicit={"val_frac"})
    assert _stamp(d) != stamp
    assert _meta(d)["options"] == DataConfig(val_frac=0.1).to_dict()
    assert Dataset(d).vocab.lowercase is False


def test_resolve_glob_is_part_of_the_sources(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "a.txt").write_text(make_text(3000, seed=1), encoding="utf-8")
    (folder / "b.py").write_text("print('hi')\n" * 100, encoding="utf-8")
    run = tmp_path / "run"
    cfg = DataConfig(glob="*.txt")
    d = resolve_training_data(str(folder), None, run, data_cfg=cfg, data_explicit={"glob"})
    assert [Path(s["path"]).name for s in _meta(d)["sources"]] == ["a.txt"]
    stamp = _stamp(d)
    resolve_training_data(str(folder), None, run, data_cfg=cfg, data_explicit={"glob"})
    assert _stamp(d) == stamp


def test_resolve_resume_keeps_the_recorded_options(lower_run, tmp_path):
    text, run = _corpus(tmp_path), tmp_path / "run"
    cfg = DataConfig(val_frac=0.2, lowercase=True)
    resolve_training_data(str(text), None, run, data_cfg=cfg,
                          data_explicit={"val_frac", "lowercase"})
    _with_checkpoint(lower_run, run)
    # the nightly run: the corpus grew, no data option given (the CLI's defaults)
    with open(text, "a", encoding="utf-8") as f:
        f.write(make_text(4000, seed=9))
    d = resolve_training_data(str(text), None, run, data_cfg=DataConfig(),
                              data_explicit=frozenset())
    meta = _meta(d)
    assert meta["options"] == cfg.to_dict()
    assert meta["counts"]["chars"] == 10_000 and meta["counts"]["val"] == 2000
    assert Dataset(d).vocab.lowercase is True
    # an option given with the recorded value is no change
    stamp = _stamp(d)
    resolve_training_data(str(text), None, run, data_cfg=DataConfig(lowercase=True),
                          data_explicit={"lowercase"})
    assert _stamp(d) == stamp


def test_resolve_resume_refuses_other_options(lower_run, tmp_path):
    text, run = _corpus(tmp_path), tmp_path / "run"
    resolve_training_data(str(text), None, run,
                          data_cfg=DataConfig(val_frac=0.2, lowercase=True),
                          data_explicit={"val_frac", "lowercase"})
    _with_checkpoint(lower_run, run)
    stamp = _stamp(run / "data")
    with pytest.raises(ConfigError) as ei:
        resolve_training_data(str(text), None, run, data_cfg=DataConfig(val_frac=0.1),
                              data_explicit={"val_frac"})
    assert str(ei.value) == (
        f"{run} was trained on text prepared with --val-frac 0.2, but this command asks for "
        "--val-frac 0.1; the data's options are part of what the run is: drop the option "
        "to resume, or add --restart to start a new run")
    with pytest.raises(ConfigError) as ei:
        resolve_training_data(str(text), None, run,
                              data_cfg=DataConfig(lowercase=False, min_count=2),
                              data_explicit={"lowercase", "min_count"})
    assert str(ei.value) == (
        f"{run} was trained on text prepared with --lowercase and --min-count 1, but this "
        "command asks for --no-lowercase and --min-count 2; the data's options are part "
        "of what the run is: drop the options to resume, or add --restart to start a new "
        "run")
    assert _stamp(run / "data") == stamp                          # nothing was written
    # --restart: the options given (defaults for the others), re-prepared
    d = resolve_training_data(str(text), None, run, restart=True,
                              data_cfg=DataConfig(val_frac=0.1), data_explicit={"val_frac"})
    assert _meta(d)["options"] == DataConfig(val_frac=0.1).to_dict()


def test_resolve_refuses_data_options_for_a_prepared_directory(lower_run, tmp_path):
    data = lower_run / "data"
    with pytest.raises(ConfigError) as ei:
        resolve_training_data(str(data), None, tmp_path / "run",
                              data_cfg=DataConfig(lowercase=True, val_frac=0.1),
                              data_explicit={"lowercase", "val_frac"})
    assert str(ei.value) == (
        f"{data} is a prepared data directory, and --lowercase and --val-frac 0.1 apply "
        "only to text (the directory keeps the options it was prepared with, see its "
        "meta.json); drop them, or prepare the text again with 'charrnn prepare'")
    with pytest.raises(ConfigError, match=r"--glob \*\.py applies only to text .* drop it,"):
        resolve_training_data(str(data), None, tmp_path / "run",
                              data_cfg=DataConfig(glob="*.py"), data_explicit={"glob"})
    assert resolve_training_data(str(data), None, tmp_path / "run", data_cfg=DataConfig(),
                                 data_explicit=()) == data
    assert not (tmp_path / "run").exists()


def test_resolve_resume_without_data_takes_lowercase_from_the_model(lower_run, tmp_path):
    text = _corpus(tmp_path, seed=4)
    run = _with_checkpoint(lower_run, tmp_path / "run")
    d = resolve_training_data(str(text), None, run, data_cfg=DataConfig(), data_explicit=())
    assert _meta(d)["options"]["lowercase"] is True
    run2 = _with_checkpoint(lower_run, tmp_path / "run2")
    with pytest.raises(ConfigError, match=r"trained on lower-cased text \(--lowercase\), "
                                          r"but this command asks for --no-lowercase"):
        resolve_training_data(str(text), None, run2, data_cfg=DataConfig(),
                              data_explicit={"lowercase"})


def test_prepare_with_a_vocabulary_records_the_config_lowercase(tmp_path):
    src = _corpus(tmp_path, n=2000)
    vocab = Vocab(sorted(set(src.read_text().lower())))           # not marked lowercase
    prepare([str(src)], tmp_path / "d", DataConfig(lowercase=True), vocab=vocab,
            show_progress=False)
    ds = Dataset(tmp_path / "d")
    assert ds.vocab.lowercase is True and ds.vocab.chars == vocab.chars
    assert np.array_equal(np.asarray(ds.split("train"))[:5],
                          vocab.encode(src.read_text().lower()[:5]))
