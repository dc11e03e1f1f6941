import json
import time

import pytest
from conftest import make_text

from slmkit.data import PrepareOptions, prepare, readers
from slmkit.data.clean import DocumentProcessor
from slmkit.data.corpora import python_stdlib_files
from slmkit.data.sources import parse_weight, resolve_source
from slmkit.errors import SlmError


def texts_of(source):
    processor = DocumentProcessor(PrepareOptions(min_chars=1, doc_separator=None))
    return [t for item in source.iter_items() for _, t, _, _ in processor.clean_texts(item) if t]


def test_folder_is_read_recursively_in_sorted_order_with_extension_filter(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.md").write_text("two")
    (tmp_path / "one.txt").write_text("one")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("hidden")
    source = resolve_source(str(tmp_path))
    assert [p.name for p in source.paths] == ["one.txt", "two.md"]
    assert texts_of(source) == ["one", "two"]


def test_glob_and_single_file_sources(tmp_path):
    for i in range(3):
        (tmp_path / f"f{i}.txt").write_text(f"text {i}")
    assert len(resolve_source(str(tmp_path / "f*.txt")).paths) == 3
    assert texts_of(resolve_source(str(tmp_path / "f1.txt"))) == ["text 1"]


def test_jsonl_json_csv_and_parquet_rows_are_documents(tmp_path):
    rows = [{"text": "alpha", "other": "x"}, {"text": "beta", "other": "y"}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "b.json").write_text(json.dumps({"data": rows}))
    (tmp_path / "c.csv").write_text("text,other\ngamma,1\ndelta,2\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["epsilon", "zeta"]}), tmp_path / "d.parquet")
    assert texts_of(resolve_source(str(tmp_path / "a.jsonl"))) == ["alpha", "beta"]
    assert texts_of(resolve_source(str(tmp_path / "b.json"))) == ["alpha", "beta"]
    assert texts_of(resolve_source(str(tmp_path / "c.csv"))) == ["gamma", "delta"]
    assert texts_of(resolve_source(str(tmp_path / "d.parquet"), PrepareOptions(text_field="body"))) == ["epsilon", "zeta"]
    with pytest.raises(SlmError, match="no column 'text'"):
        texts_of(resolve_source(str(tmp_path / "d.parquet")))


def test_jsonl_without_the_field_names_file_line_and_fix(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{"body": "no"}\n')
    with pytest.raises(SlmError, match=r"a.jsonl line 2: no 'text' field.*--text-field"):
        texts_of(resolve_source(str(tmp_path / "a.jsonl")))


def test_missing_path_and_empty_pattern_are_errors(tmp_path):
    with pytest.raises(SlmError, match="not found"):
        resolve_source(str(tmp_path / "nope"))
    with pytest.raises(SlmError, match="matches no files"):
        resolve_source(str(tmp_path / "*.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlmError, match="no files with extensions"):
        resolve_source(str(tmp_path / "empty"))


def test_weight_suffix_is_parsed_only_when_numeric():
    assert parse_weight("data/x@2.5") == ("data/x", 2.5)
    assert parse_weight("user@host/x") == ("user@host/x", 1.0)
    with pytest.raises(SlmError):
        parse_weight("x@-1")


def test_python_stdlib_has_no_test_directories():
    files = python_stdlib_files()
    assert len(files) > 300
    assert any(p.name == "json" or p.parent.name == "json" for p in files)
    assert not any(part in ("test", "tests", "site-packages") for p in files for part in p.parts[-4:-1])


def test_hf_source_fails_fast_when_the_hub_is_unreachable(tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.monotonic()
    with pytest.raises(SlmError, match=r"Hub is unreachable.*local \.parquet"):
        prepare(["hf:roneneldan/TinyStories"], tmp_path / "out", progress=False)
    assert time.monotonic() - start < 10
    assert not (tmp_path / "out").exists()


def test_hf_source_in_offline_mode_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SlmError, match=r"offline mode.*\.parquet"):
        prepare(["tinystories"], tmp_path / "out", progress=False)


def test_large_text_file_is_read_in_pieces_of_one_group(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CHUNK_BYTES", 1000)
    text = "\n".join(make_text(i, 40) for i in range(10))
    (tmp_path / "big.txt").write_text(text)
    items = list(resolve_source(str(tmp_path / "big.txt")).iter_items())
    assert len(items) > 3 and {i.group for i in items} == {str(tmp_path / "big.txt")}
    assert b"".join(i.data for i in items).decode() == text


def test_max_documents_counts_rows_of_jsonl_files(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(50)))
    source = resolve_source(str(tmp_path / "a.jsonl"), PrepareOptions(max_documents=7))
    assert texts_of(source) == [f"row {i}" for i in range(7)]
