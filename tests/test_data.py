"""charrnn.store (prepare, dataset, batches): prepare's token files and vocabulary, splits, encodings, folders, atomic
output, Dataset's checks, and the TBPTT batch layout (StreamBatches, iter_eval_batches)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.store import outdir
from charrnn.store import prepare as prepare_mod
from charrnn.store import text as text_mod
from charrnn.config import DataConfig
from charrnn.store.batches import StreamBatches, iter_eval_batches
from charrnn.store.dataset import Dataset
from charrnn.store.prepare import prepare
from charrnn.store.sources import fingerprint_sources, resolve_inputs
from charrnn.errors import DataError, InputError, VocabError
from charrnn.store.vocab import Vocab

from conftest import make_text


def _write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def _all_tokens(ds):
    return np.concatenate([np.asarray(ds.split(s)) for s in ("train", "val", "test")])


def _prep(tmp_path, text, cfg=None, name="in.txt", **kw):
    src = _write(tmp_path / name, text)
    out = tmp_path / "data"
    summary = prepare([str(src)], out, cfg or DataConfig(), show_progress=False, **kw)
    return Dataset(out), summary


# ----------------------------------------------------------------- round trips, vocab

def test_round_trip_and_files(tmp_path):
    text = make_text(5000, seed=1)
    ds, summary = _prep(tmp_path, text)
    assert sorted(os.listdir(tmp_path / "data")) == ["meta.json", "test.bin", "train.bin",
                                                     "val.bin", "vocab.json"]
    assert ds.vocab.decode(_all_tokens(ds)) == text
    assert ds.vocab.chars == sorted(set(text)) and ds.vocab.unk is None
    assert summary["chars"] == 5000 and summary["dtype"] == "uint8"
    assert summary["vocab_size"] == len(set(text))
    assert isinstance(ds.split("train"), np.memmap)
    vocab_json = json.loads((tmp_path / "data" / "vocab.json").read_text("utf-8"))
    assert vocab_json == {"version": 1, "chars": sorted(set(text)), "unk": None}
    meta = ds.meta
    assert meta["format"] == "charrnn-data" and meta["version"] == 1
    assert meta["counts"] == {"chars": 5000, "unknown": 0, "train": 4750, "val": 250,
                              "test": 0}
    assert meta["options"] == DataConfig().to_dict()
    assert meta["sources"][0]["size"] == 5000
    ds.verify()


def test_large_vocab_uses_uint16_and_round_trips(tmp_path):
    chars = "".join(chr(c) for c in range(0x400, 0x400 + 300))   # 300 Cyrillic-ish symbols
    text = (chars * 4) + "\n" + "😀 emoji outside the BMP"
    ds, summary = _prep(tmp_path, text)
    assert summary["dtype"] == "uint16" and ds.split("train").dtype == np.uint16
    assert ds.vocab.decode(_all_tokens(ds)) == text


def test_min_count_maps_rare_characters_to_unk(tmp_path):
    text = "aaaa bbbb z\n" * 3 + "q q\n"
    ds, summary = _prep(tmp_path, text, DataConfig(min_count=4, val_frac=0.0))
    assert ds.vocab.unk == "\ufffd" and "z" not in ds.vocab and "q" not in ds.vocab
    assert ds.vocab.unk_id == len(ds.vocab) - 1
    decoded = ds.vocab.decode(_all_tokens(ds))
    assert decoded == text.replace("z", "\ufffd").replace("q", "\ufffd")
    assert summary["unknown"] == 5 and ds.meta["counts"]["unknown"] == 5
    assert ds.meta["unk"] == "\ufffd"


def test_max_vocab_keeps_the_most_frequent(tmp_path):
    text = "aaaaabbbbcccdde" * 10
    ds, _ = _prep(tmp_path, text, DataConfig(max_vocab=3, val_frac=0.0))
    assert ds.vocab.chars == ["a", "b", "c"] and ds.vocab.unk is not None


def test_lowercase(tmp_path):
    ds, _ = _prep(tmp_path, "Hello World\n" * 20, DataConfig(lowercase=True))
    assert ds.vocab.decode(_all_tokens(ds)) == "hello world\n" * 20


def test_fixed_vocab_with_unk_and_without(tmp_path):
    vocab = Vocab(list("abc "), unk="?")
    ds, summary = _prep(tmp_path, "abc abd abe " * 10, vocab=vocab)
    assert ds.vocab == vocab
    assert ds.vocab.decode(_all_tokens(ds)) == "abc ab? ab? " * 10
    assert summary["unknown"] == 20
    with pytest.raises(VocabError) as ei:
        prepare([str(tmp_path / "in.txt")], tmp_path / "d2", vocab=Vocab(list("abc ")),
                show_progress=False)
    assert str(ei.value) == ("the input has characters not in the given vocabulary: "
                             "'d', 'e'")
    assert not (tmp_path / "d2").exists()
    s = prepare([str(tmp_path / "in.txt")], tmp_path / "d3", vocab=Vocab(list("dcba ")),
                grow_vocab=True, show_progress=False)
    ds = Dataset(tmp_path / "d3")
    assert ds.vocab.chars == list("dcba ") + ["e"] and s["added"] == ["e"]
    assert ds.vocab.decode(_all_tokens(ds)) == "abc abd abe " * 10


# ----------------------------------------------------------------- splits

def test_splits_are_contiguous_tails(tmp_path):
    text = make_text(1000, seed=2)
    ds, s = _prep(tmp_path, text, DataConfig(val_frac=0.1, test_frac=0.2))
    assert (s["train"], s["val"], s["test"]) == (700, 100, 200)
    dec = {k: ds.vocab.decode(ds.split(k)) for k in ("train", "val", "test")}
    assert dec["train"] == text[:700]
    assert dec["val"] == text[700:800]
    assert dec["test"] == text[800:]


def test_val_frac_zero_gives_an_empty_val_split(tmp_path):
    ds, s = _prep(tmp_path, "abcdefgh", DataConfig(val_frac=0.0))
    assert s["val"] == 0 and s["train"] == 8
    val = ds.split("val")
    assert val.shape == (0,) and val.dtype == np.uint8
    assert (tmp_path / "data" / "val.bin").stat().st_size == 0


def test_split_that_would_be_empty_is_refused(tmp_path):
    src = _write(tmp_path / "in.txt", "abcdefgh")
    with pytest.raises(InputError) as ei:
        prepare([str(src)], tmp_path / "d", DataConfig(val_frac=0.1), show_progress=False)
    assert str(ei.value) == ("val split would be empty: 8 characters x --val-frac 0.1 is less "
                             "than one character; raise --val-frac, use --val-frac 0 for no "
                             "validation, or use more text")
    with pytest.raises(InputError, match=r"^test split would be empty: 8 characters"):
        prepare([str(src)], tmp_path / "d", DataConfig(val_frac=0.0, test_frac=0.1),
                show_progress=False)
    assert not (tmp_path / "d").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.txt"]


def test_empty_corpus(tmp_path):
    src = _write(tmp_path / "empty.txt", "")
    with pytest.raises(InputError) as ei:
        prepare([str(src)], tmp_path / "d", show_progress=False)
    assert str(ei.value) == f"empty corpus: {src} has no characters"
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------- reading text

def test_chunk_boundaries_do_not_matter(tmp_path, monkeypatch):
    text = "naïve café — 😀 ünïcödé\n" * 50
    ds, _ = _prep(tmp_path, text)
    want = _all_tokens(ds).copy()
    monkeypatch.setattr(text_mod, "CHUNK_BYTES", 7)       # splits multi-byte characters
    src = tmp_path / "in.txt"
    prepare([str(src)], tmp_path / "d7", show_progress=False)
    ds7 = Dataset(tmp_path / "d7")
    assert ds7.vocab == ds.vocab
    np.testing.assert_array_equal(_all_tokens(ds7), want)


@pytest.mark.parametrize("chunk", [None, 5])
def test_invalid_utf8_reports_the_byte_offset(tmp_path, monkeypatch, chunk):
    if chunk:
        monkeypatch.setattr(text_mod, "CHUNK_BYTES", chunk)
    raw = "héllo wörld ".encode("utf-8") + b"\xff" + b" more"
    src = tmp_path / "bad.txt"
    src.write_bytes(raw)
    with pytest.raises(InputError) as ei:
        prepare([str(src)], tmp_path / "d", show_progress=False)
    where = raw.index(b"\xff")                            # 14: after 'héllo wörld '
    assert str(ei.value) == f"{src}: invalid utf-8 at byte {where}"
    # a multi-byte sequence cut off at the end of the file
    src.write_bytes(b"abc\xe2\x82")
    with pytest.raises(InputError, match=r"invalid utf-8 at byte 3$"):
        prepare([str(src)], tmp_path / "d", show_progress=False)
    assert not (tmp_path / "d").exists()


def test_errors_replace_maps_to_replacement_character(tmp_path):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"ab\xffcd" * 10)
    prepare([str(src)], tmp_path / "d", DataConfig(errors="replace"), show_progress=False)
    ds = Dataset(tmp_path / "d")
    assert ds.vocab.decode(_all_tokens(ds)) == "ab\ufffdcd" * 10
    assert "\ufffd" in ds.vocab.chars and ds.vocab.unk is None


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16", "cp1252"])
def test_other_encodings(tmp_path, encoding):
    text = "Déjà vu, naïve façade\n" * 20
    src = _write(tmp_path / "in.txt", text, encoding)
    prepare([str(src)], tmp_path / "d", DataConfig(encoding=encoding), show_progress=False)
    ds = Dataset(tmp_path / "d")
    assert ds.vocab.decode(_all_tokens(ds)) == text
    assert ds.meta["options"]["encoding"] == encoding


def test_binary_file_is_refused(tmp_path):
    src = tmp_path / "blob.bin"
    src.write_bytes(b"PK\x03\x04abc\x00\x00def")
    with pytest.raises(InputError) as ei:
        prepare([str(src)], tmp_path / "d", show_progress=False)
    assert str(ei.value) == f"{src}: looks like a binary file (NUL byte at offset 7)"


def test_unknown_encoding(tmp_path):
    src = _write(tmp_path / "in.txt", "abc")
    with pytest.raises(InputError, match="unknown encoding 'klingon'"):
        prepare([str(src)], tmp_path / "d", DataConfig(encoding="klingon"),
                show_progress=False)


# ----------------------------------------------------------------- inputs: files, folders

def _tree(root):
    _write(root / "b.py", "print('b')\n")
    _write(root / "a.py", "print('a')\n")
    _write(root / "notes.txt", "notes\n")
    _write(root / "sub" / "c.py", "print('c')\n")
    _write(root / "sub" / "deeper" / "d.py", "print('d')\n")
    _write(root / ".hidden" / "e.py", "print('hidden')\n")
    _write(root / ".f.py", "print('hidden file')\n")
    return root


def test_folder_walk_is_sorted_filtered_and_skips_hidden(tmp_path):
    root = _tree(tmp_path / "src")
    names = [os.path.relpath(p, root) for p in resolve_inputs([str(root)], glob="*.py")]
    assert names == ["a.py", "b.py", "sub/c.py", "sub/deeper/d.py"]
    every = [os.path.relpath(p, root) for p in resolve_inputs([str(root)])]
    assert every == ["a.py", "b.py", "notes.txt", "sub/c.py", "sub/deeper/d.py"]
    deep = resolve_inputs([str(root)], glob="sub/deeper/*")
    assert [os.path.relpath(p, root) for p in deep] == ["sub/deeper/d.py"]
    prepare([str(root)], tmp_path / "d", DataConfig(glob="*.py", val_frac=0.0),
            show_progress=False)
    ds = Dataset(tmp_path / "d")
    assert ds.vocab.decode(ds.split("train")) == ("print('a')\nprint('b')\nprint('c')\n"
                                                   "print('d')\n")
    assert [os.path.relpath(s["path"], root) for s in ds.meta["sources"]] == \
        ["a.py", "b.py", "sub/c.py", "sub/deeper/d.py"]
    with pytest.raises(InputError) as ei:
        resolve_inputs([str(root)], glob="*.rs")
    assert str(ei.value) == f"{root}: no files matching '*.rs'"


def test_output_inside_an_input_folder_is_not_read(tmp_path):
    root = _tree(tmp_path / "src")
    out = root / "data"
    for _ in range(2):
        prepare([str(root)], out, DataConfig(val_frac=0.0), show_progress=False)
    assert "data/" not in "".join(s["path"] for s in Dataset(out).meta["sources"])
    assert fingerprint_sources([str(root)]) == Dataset(out).meta["sources"]
    assert Dataset(out).sources_changed() == []


def test_missing_path(tmp_path):
    with pytest.raises(InputError) as ei:
        prepare([str(tmp_path / "nope.txt")], tmp_path / "d", show_progress=False)
    assert str(ei.value) == f"{tmp_path / 'nope.txt'}: no such file or directory"


def test_symlink_loop_and_broken_link(tmp_path):
    root = tmp_path / "src"
    _write(root / "a.txt", "aaa\n")
    (root / "loop").symlink_to(root, target_is_directory=True)
    with pytest.raises(InputError) as ei:
        resolve_inputs([str(root)])
    assert str(ei.value).startswith(f"{root / 'loop'}: symbolic link loop")
    os.unlink(root / "loop")
    (root / "dangling").symlink_to(root / "missing.txt")
    with pytest.raises(InputError) as ei:
        resolve_inputs([str(root)])
    assert str(ei.value) == f"{root / 'dangling'}: broken symbolic link"
    self_loop = tmp_path / "self"
    self_loop.symlink_to(self_loop)
    with pytest.raises(InputError, match="symbolic link loop"):
        resolve_inputs([str(self_loop)])


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read unreadable files")
def test_unreadable_file(tmp_path):
    src = _write(tmp_path / "secret.txt", "abc")
    src.chmod(0)
    with pytest.raises(InputError) as ei:
        prepare([str(src)], tmp_path / "d", show_progress=False)
    assert str(ei.value) == f"{src}: permission denied"


def test_paths_with_spaces_and_non_ascii(tmp_path):
    folder = tmp_path / "my texts ü"
    _write(folder / "ça va.txt", "bonjour tout le monde\n" * 10)
    out = tmp_path / "données prêtes"
    prepare([str(folder)], out, show_progress=False)
    ds = Dataset(out)
    assert ds.vocab.decode(_all_tokens(ds)) == "bonjour tout le monde\n" * 10
    assert ds.meta["sources"][0]["path"].endswith("my texts ü/ça va.txt")


def test_fingerprint_sources_matches_meta(tmp_path):
    root = _tree(tmp_path / "src")
    prepare([str(root)], tmp_path / "d", DataConfig(glob="*.py", val_frac=0.0),
            show_progress=False)
    ds = Dataset(tmp_path / "d")
    assert fingerprint_sources([str(root)], glob="*.py") == ds.meta["sources"]
    assert fingerprint_sources(["-"]) is None
    assert ds.sources_changed() == []
    _write(root / "a.py", "print('changed')\n")
    _write(root / "z.py", "print('new')\n")
    assert ds.sources_changed() == [f"new: {root / 'z.py'}", f"changed: {root / 'a.py'}"]


# ----------------------------------------------------------------- atomic output

def test_interrupted_prepare_leaves_nothing(tmp_path, monkeypatch):
    src = _write(tmp_path / "in.txt", make_text(3000))

    def boom(self, ids):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_mod._SplitWriter, "write", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare([str(src)], tmp_path / "new" / "d", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]   # no parents, no temps


def test_interrupted_replacement_keeps_the_previous_output(tmp_path, monkeypatch):
    src = _write(tmp_path / "in.txt", make_text(3000))
    prepare([str(src)], tmp_path / "d", show_progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()}
    _write(src, make_text(4000, seed=9))

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(outdir, "install", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare([str(src)], tmp_path / "d", show_progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "in.txt"]
    Dataset(tmp_path / "d").verify()


def test_rerun_replaces_previous_output_and_refuses_foreign_dirs(tmp_path):
    src = _write(tmp_path / "in.txt", make_text(3000))
    out = tmp_path / "d"
    prepare([str(src)], out, show_progress=False)
    _write(src, "xyz\n" * 100)
    prepare([str(src)], out, show_progress=False)          # own output: replaced
    assert Dataset(out).vocab.chars == ["\n", "x", "y", "z"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "in.txt"]

    other = tmp_path / "other"
    _write(other / "keep.txt", "mine")
    with pytest.raises(InputError) as ei:
        prepare([str(src)], other, show_progress=False)
    assert str(ei.value) == (f"{other}: exists and holds other files (keep.txt); use --force "
                             "to write the data files into it anyway, or choose another -o")
    assert sorted(os.listdir(other)) == ["keep.txt"]
    prepare([str(src)], other, force=True, show_progress=False)
    assert sorted(os.listdir(other)) == ["keep.txt", "meta.json", "test.bin", "train.bin",
                                         "val.bin", "vocab.json"]
    assert (other / "keep.txt").read_text() == "mine"
    Dataset(other).verify()

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(InputError, match="exists and is not a directory"):
        prepare([str(src)], afile, force=True, show_progress=False)


def test_stale_build_dirs_are_cleaned(tmp_path):
    src = _write(tmp_path / "in.txt", make_text(3000))
    stale = tmp_path / ".d.tmp-999999999"                 # no such process
    _write(stale / "train.bin", "junk")
    prepare([str(src)], tmp_path / "d", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "in.txt"]


# ----------------------------------------------------------------- Dataset checks

def test_dataset_errors(tmp_path):
    with pytest.raises(DataError) as ei:
        Dataset(tmp_path / "nope")
    assert str(ei.value) == (f"{tmp_path / 'nope'}: no such data directory; make one with "
                             f"'charrnn prepare TEXT -o {tmp_path / 'nope'}'")
    ds, _ = _prep(tmp_path, make_text(2000))
    d = tmp_path / "data"
    meta = (d / "meta.json").read_bytes()

    (d / "meta.json").unlink()
    with pytest.raises(DataError, match=r"not a complete data directory \(no meta.json"):
        Dataset(d)
    (d / "meta.json").write_bytes(meta[:50])
    with pytest.raises(DataError, match=r"meta.json: corrupt"):
        Dataset(d)
    m = json.loads(meta)
    m["version"] = 99
    (d / "meta.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="data format version 99 is newer"):
        Dataset(d)
    (d / "meta.json").write_bytes(meta)

    train = (d / "train.bin").read_bytes()
    (d / "train.bin").write_bytes(train[:-10])
    with pytest.raises(DataError) as ei:
        Dataset(d)
    assert str(ei.value) == (f"{d / 'train.bin'}: 1890 bytes, but meta.json records 1900 "
                             "tokens of uint8 (1900 bytes); the directory is damaged, run "
                             "'charrnn prepare' again")
    (d / "train.bin").write_bytes(bytes([train[0] ^ 1]) + train[1:])
    with pytest.raises(DataError, match="sha256 differs"):     # opening verifies
        Dataset(d)
    ds = Dataset(d, verify=False)                             # sizes only
    with pytest.raises(DataError, match="sha256 differs"):
        ds.verify()
    (d / "vocab.json").write_text("{")
    with pytest.raises(DataError, match=r"vocab.json: corrupt"):
        Dataset(d)
    with pytest.raises(DataError, match="unknown split"):
        ds.split("dev")


# ----------------------------------------------------------------- batches

def test_stream_layout_and_continuity():
    n, B, T = 103, 4, 5
    tokens = np.arange(n, dtype=np.uint16)                # token value == position
    sb = StreamBatches(tokens, B, T)
    S = (n - 1) // B                                      # 25
    assert sb.stream_len == S and sb.batches_per_epoch == S // T == len(sb)
    prev = None
    for i in range(sb.batches_per_epoch):
        x, y = sb.batch(i)
        assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == np.int64
        assert x.flags.c_contiguous and y.flags.c_contiguous
        want = np.arange(B)[:, None] * S + i * T + np.arange(T)     # (B, T)
        np.testing.assert_array_equal(x, want)
        np.testing.assert_array_equal(y, want + 1)
        if prev is not None:                              # each stream continues
            np.testing.assert_array_equal(x[:, 0], prev[:, -1] + 1)
        prev = x
        xs, ys = sb.batch(i, lo=1, hi=3)
        np.testing.assert_array_equal(xs, x[1:3])
        np.testing.assert_array_equal(ys, y[1:3])
    assert y.max() <= n - 1
    assert [b[0].tolist() for b in sb] == [sb.batch(i)[0].tolist() for i in range(len(sb))]
    assert sb.locate(0) == (0, 0) and sb.locate(len(sb) + 2) == (1, 2)
    with pytest.raises(IndexError):
        sb.batch(sb.batches_per_epoch)


def test_stream_batches_need_enough_tokens():
    StreamBatches(np.zeros(4 * 8 + 1, np.uint8), 4, 8)    # the minimum: one batch
    with pytest.raises(DataError) as ei:
        StreamBatches(np.zeros(32, np.uint8), 4, 8)
    assert str(ei.value) == ("training split has 32 characters; it needs at least B*T+1 = 33 "
                             "for --batch-size 4 --seq-len 8; use a smaller --batch-size or "
                             "--seq-len, or more text")


def test_batches_read_from_a_memmap(tmp_path):
    ds, _ = _prep(tmp_path, make_text(5000, seed=3))
    train = ds.split("train")
    sb = StreamBatches(train, 3, 7)
    x, y = sb.batch(2)
    S = sb.stream_len
    assert ds.vocab.decode(x[1]) == ds.vocab.decode(train[S + 14:S + 21])
    assert ds.vocab.decode(y[1]) == ds.vocab.decode(train[S + 15:S + 22])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 200), B=st.integers(1, 9), T=st.integers(1, 12))
def test_eval_batches_score_every_position_once(n, B, T):
    tokens = np.arange(n, dtype=np.uint32)
    targets, prev, prev_b = [], None, None
    for x, y in iter_eval_batches(tokens, B, T):
        assert x.shape == y.shape and x.shape[0] in (B, 1) and 1 <= x.shape[1] <= T
        assert x.dtype == np.int64
        np.testing.assert_array_equal(y, x + 1)           # targets are the next character
        if prev is not None and x.shape[0] == prev_b:     # same streams: they continue
            np.testing.assert_array_equal(x[:, 0], prev[:, -1] + 1)
        prev, prev_b = x, x.shape[0]
        targets.append(y.ravel())
    got = np.sort(np.concatenate(targets)) if targets else np.zeros(0, np.int64)
    np.testing.assert_array_equal(got, np.arange(1, max(n, 1)))


def test_eval_batches_are_deterministic(tmp_path):
    tokens = np.arange(50, dtype=np.uint8)
    a = [(x.tolist(), y.tolist()) for x, y in iter_eval_batches(tokens, 4, 5)]
    b = [(x.tolist(), y.tolist()) for x, y in iter_eval_batches(tokens, 4, 5)]
    assert a == b and a[-1][0] == [[48]]                  # 49 pairs: 4 x 12 + 1 trailing
