"""The inputs users bring most often: one input.txt (the nanoGPT habit), a local WikiText-style .jsonl or
.parquet (what users download when the Hub is out of reach), --ext, and a BPE asked for more ids than its
text gives."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import make_text
from test_force_safety import slm

from slmkit.cli import main
from slmkit.data import PrepareOptions, open_dataset, prepare, readers, resolve_source
from slmkit.data.readers import RawItem, wikitext_articles


def run(sources, out, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("workers", 1)
    return prepare(sources, out, **kwargs)


def paragraphs_text(n: int, seed: int = 0) -> str:
    """`n` paragraphs of pseudo-English separated by blank lines, as in a book's input.txt."""
    return "\n\n".join(make_text(seed + i, random.Random(i).randint(20, 80)) for i in range(n)) + "\n"


def split_text(ds, name: str) -> str:
    ids = np.asarray(ds.split(name)).tolist()
    assert ids[-1] == ds.eot_id and ds.eot_id not in ids[:-1]  # one document: one separator, at its end
    return ds.tokenizer.decode(ids[:-1])


# -- a lone input.txt -------------------------------------------------------------------------------
def test_a_lone_input_txt_becomes_a_training_head_and_a_contiguous_validation_tail(tmp_path):
    text = paragraphs_text(300)
    (tmp_path / "input.txt").write_text(text)
    done = slm("prepare", tmp_path / "input.txt", "--out", tmp_path / "ds", "-t", "char")
    assert done.returncode == 0, done.stderr
    ds = open_dataset(tmp_path / "ds")
    tail = ds.meta["split"]["tail"]
    assert ds.meta["split"]["method"] == "contiguous tail of one document"
    assert f"input.txt is one document: validation is its last {tail['val_share_of_bytes']:.1%}" in done.stdout
    cut = tail["cut_byte"]
    assert tail["cut_at"] == "paragraph break" and text.encode()[cut - 2 : cut] == b"\n\n"
    assert abs(tail["val_share_of_bytes"] - 0.05) <= 0.005  # the split's tolerance: 10% of the share
    assert split_text(ds, "train") == text.encode()[:cut].decode().strip()
    assert split_text(ds, "val") == text.encode()[cut:].decode().strip()


def test_the_tail_share_follows_val(tmp_path):
    text = paragraphs_text(200, seed=7)
    (tmp_path / "input.txt").write_text(text)
    ds = run([str(tmp_path / "input.txt")], tmp_path / "ds", tokenizer="char", val=0.2)
    assert abs(ds.meta["split"]["tail"]["val_share_of_bytes"] - 0.2) <= 0.02
    assert abs(ds.meta["splits"]["val"]["bytes"] / len(text.encode()) - 0.2) <= 0.02


def test_a_lone_file_without_line_breaks_is_cut_between_characters(tmp_path):
    text = " ".join(f"café{i}" for i in range(250))  # no line break (and under 2,000 characters, the
    # longest line kept), two-byte characters throughout
    (tmp_path / "one.txt").write_text(text)
    ds = run([str(tmp_path / "one.txt")], tmp_path / "ds", tokenizer="char", val=0.1)
    tail = ds.meta["split"]["tail"]
    assert tail["cut_at"] == "character" and abs(tail["val_share_of_bytes"] - 0.1) <= 0.01
    data = text.encode()
    assert split_text(ds, "train") == data[: tail["cut_byte"]].decode().strip()  # strict: a whole character
    assert split_text(ds, "val") == data[tail["cut_byte"] :].decode().strip()


def test_a_lone_large_file_read_in_pieces_keeps_every_piece(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CHUNK_BYTES", 4096)  # so that head and tail are both read in pieces
    text = paragraphs_text(200, seed=3)
    (tmp_path / "input.txt").write_text(text)
    ds = run([str(tmp_path / "input.txt")], tmp_path / "ds", tokenizer="char", val=0.2)
    assert ds.meta["splits"]["train"]["documents"] > 3 and ds.meta["splits"]["val"]["documents"] > 1
    assert ds.meta["filters"]["documents_kept"] == ds.meta["splits"]["train"]["documents"] + \
        ds.meta["splits"]["val"]["documents"]  # no piece of the head dropped as a near-duplicate of the tail
    assert ds.meta["splits"]["train"]["bytes"] + ds.meta["splits"]["val"]["bytes"] >= 0.99 * len(text.encode())


def test_a_lone_file_with_a_doc_separator_is_split_by_document_as_before(tmp_path):
    (tmp_path / "input.txt").write_text("<|sep|>".join(make_text(i) for i in range(10)))
    ds = run([str(tmp_path / "input.txt")], tmp_path / "ds", val=2, doc_separator="<|sep|>")
    assert "tail" not in ds.meta["split"] and ds.meta["splits"]["val"]["documents"] == 2


# -- WikiText-style tables --------------------------------------------------------------------------
def wikitext_rows(n_articles: int) -> list[str]:
    """Rows as the Hub's wikitext-103-raw-v1 holds them: a line each, blank rows between, headings."""
    rows = []
    for a in range(n_articles):
        rows += ["", f" = Article {a} = \n", ""]
        for s in range(2):
            rows += [f" = = Section {s} = = \n", ""]
            for p in range(3):
                rows += [" " + make_text(100 * a + 10 * s + p, 60).replace("\n", " ") + " \n", ""]
    return rows


def articles_of(ds, name: str) -> list[str]:
    ids = np.asarray(ds.split(name)).tolist()
    docs, current = [], []
    for i in ids:
        if i == ds.eot_id:
            docs.append(ds.tokenizer.decode(current))
            current = []
        else:
            current.append(i)
    return docs


def test_a_local_wikitext_jsonl_is_joined_into_articles(tmp_path):
    rows = wikitext_rows(12)
    (tmp_path / "wiki.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    assert main(["prepare", str(tmp_path / "wiki.jsonl"), "--out", str(tmp_path / "ds"), "--val", "2", "-q"]) == 0
    ds = open_dataset(tmp_path / "ds")
    train, val = articles_of(ds, "train"), articles_of(ds, "val")
    assert (len(train), len(val)) == (10, 2)
    for article in train + val:  # one title each, with all of its sections: no article on both sides
        assert article.startswith("= Article ") and article.count(" = = Section") == 2
    assert "joined into articles" in ds.meta["sources"][0]["description"]


def test_a_local_wikitext_parquet_is_joined_into_articles(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": wikitext_rows(12)}), tmp_path / "train-00000-of-00001.parquet")
    ds = run([str(tmp_path)], tmp_path / "ds", val=2)
    assert ds.meta["splits"]["train"]["documents"] + ds.meta["splits"]["val"]["documents"] == 12


def test_join_none_keeps_a_row_a_document_and_join_wikitext_forces_joining(tmp_path):
    rows = wikitext_rows(6)
    (tmp_path / "wiki.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    rowwise = run([str(tmp_path / "wiki.jsonl")], tmp_path / "rows", val=2, join="none")
    assert rowwise.meta["filters"]["documents_kept"] == 6 * 2 * 3  # the paragraphs; headings are too short
    odd = [r.strip() + "\n" if r.strip() else r for r in rows]  # ends trimmed: detection still holds
    (tmp_path / "forced.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in odd))
    forced = run([str(tmp_path / "forced.jsonl")], tmp_path / "forced", val=2, join="wikitext")
    assert forced.meta["filters"]["documents_kept"] == 6


def test_ordinary_jsonl_documents_are_not_mistaken_for_wikitext(tmp_path):
    rows = [{"text": "= Notes =\n"}] + [{"text": make_text(i) + "\n"} for i in range(10)]  # multi-line documents
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert resolve_source(str(tmp_path / "docs.jsonl")).joined == frozenset()


def test_wikitext_rows_are_joined_and_named_as_the_builtin_names_them():
    rows = ["", " = A = \n", "", " one \n", "", " = = S = = \n", " two \n", " = B = \n", " three \n"]
    items = list(wikitext_articles(rows, "wikitext-103"))
    assert [(i.name, i.data) for i in items] == [
        ("wikitext-103:7", "".join(rows[:7])),
        ("wikitext-103:end", "".join(rows[7:])),
    ]
    assert all(isinstance(i, RawItem) for i in items)


# -- --ext and a BPE asked for more ids than its text gives -----------------------------------------
def test_ext_adds_an_extension_to_the_default_ones(tmp_path):
    for name in ("a.txt", "b.html", "c.foo"):
        (tmp_path / name).write_text(make_text(len(name)))
    assert [p.name for p in resolve_source(str(tmp_path), PrepareOptions(extensions=("foo",))).paths] == \
        ["a.txt", "b.html", "c.foo"]
    assert [p.name for p in resolve_source(str(tmp_path), PrepareOptions(extensions=("html",))).paths] == \
        ["a.txt", "b.html"]
    assert PrepareOptions(extensions=("FOO", ".foo")).extensions[-1:] == (".foo",)


def test_bpe_asked_for_more_ids_than_the_text_gives_is_said_at_prepare(corpus_dir, tmp_path, capsys):
    assert main(["prepare", str(corpus_dir), "--out", str(tmp_path / "ds"), "-t", "bpe:100000000"]) == 0
    printed = capsys.readouterr().out
    ds = open_dataset(tmp_path / "ds")
    assert ds.vocab_size < 5000
    said = "warning: bpe:100000000 asked for 100,000,000 ids, but the training text"
    assert said in printed and f"gave only {ds.vocab_size:,}" in printed
    assert ds.meta["warnings"][0].startswith("bpe:100000000 asked for")
    assert main(["prepare", str(corpus_dir), "--out", str(tmp_path / "q"), "-t", "bpe:100000000", "-q"]) == 0
    assert "asked for 100,000,000 ids" in capsys.readouterr().err  # --quiet: the warning still shows
    assert main(["tokenizer", "train", str(corpus_dir), "-t", "bpe:100000000", "--out", str(tmp_path / "t")]) == 0
    assert "asked for 100,000,000 ids" in capsys.readouterr().err


def test_bpe_that_gets_its_ids_gives_no_vocabulary_warning(corpus_dir, tmp_path):
    ds = run([str(corpus_dir)], tmp_path / "ds", tokenizer="bpe:300")
    assert ds.vocab_size == 300 and not any("asked for" in w for w in ds.meta["warnings"])
