"""File readers: one class per kind of file, each turning a file into raw items (documents, or blocks of
them, still to decode and clean in the worker processes; see `slmkit.data.clean`).

A text file is a document (a large one is read in pieces of one group); a row of a .jsonl, .json,
.parquet or .csv file is a document, its text in the field or column `text_field`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from slmkit.errors import SlmError

TEXT_EXTENSIONS = (
    ".txt", ".text", ".md", ".markdown", ".rst", ".tex", ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp",
    ".java", ".js", ".ts", ".go", ".rs", ".rb", ".sh", ".toml", ".yaml", ".yml", ".ini", ".cfg", ".html",
    ".xml",
)
TABLE_EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")
CHUNK_BYTES = 16 << 20  # text files larger than this are read in pieces cut at line breaks
JSONL_BLOCK_BYTES = 4 << 20  # JSON lines go to the workers in blocks of about this size

# Kinds of raw item: bytes of a text file (or of one piece of a large one), bytes of JSON lines, or a
# document already decoded (rows of parquet, csv, json, Hugging Face datasets).
TEXT, JSONL, STR = "text", "jsonl", "str"


@dataclass
class RawItem:
    kind: str
    name: str
    data: bytes | str
    group: str | None = None  # pieces of one large file share a group: they stay on one side of the split


def text_of(row, field_name: str, where: str):
    """The text of a JSON row (a string row is its own text); SlmError naming `where` and the fix when
    the row has no `field_name`."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict) or field_name not in row:
        keys = list(row) if isinstance(row, dict) else type(row).__name__
        raise SlmError(f"{where}: no {field_name!r} field (found {keys}); choose the field with --text-field")
    return row[field_name]


class Reader:
    """Reads one kind of file into RawItems; the text of a row is in its field or column `text_field`."""

    def __init__(self, text_field: str = "text"):
        self.text_field = text_field

    def read(self, path: Path) -> Iterator[RawItem]:
        raise NotImplementedError


class TextReader(Reader):
    """A file is one document; one larger than CHUNK_BYTES comes in pieces cut after a line break, all
    in one group so the split keeps them together."""

    def read(self, path: Path) -> Iterator[RawItem]:
        if path.stat().st_size <= CHUNK_BYTES:
            yield RawItem(TEXT, str(path), path.read_bytes())
            return
        with open(path, "rb") as f:
            carry = b""
            index = 0
            while block := f.read(CHUNK_BYTES):
                data = carry + block
                cut = data.rfind(b"\n") + 1 or len(data)
                data, carry = data[:cut], data[cut:]
                yield RawItem(TEXT, f"{path}#{index}", data, group=str(path))
                index += 1
            if carry:
                yield RawItem(TEXT, f"{path}#{index}", carry, group=str(path))


class JsonLinesReader(Reader):
    """A line is a document. Blocks of raw lines go to the workers, which parse them; `row_by_row`
    parses here and yields one item per row (so that a document cap counts documents, not blocks)."""

    def __init__(self, text_field: str = "text", row_by_row: bool = False):
        super().__init__(text_field)
        self.row_by_row = row_by_row

    def read(self, path: Path) -> Iterator[RawItem]:
        yield from self._rows(path) if self.row_by_row else self._blocks(path)

    def _blocks(self, path: Path) -> Iterator[RawItem]:
        with open(path, "rb") as f:
            index = 0
            while lines := f.readlines(JSONL_BLOCK_BYTES):
                yield RawItem(JSONL, f"{path}:{index}", b"".join(lines))
                index += len(lines)

    def _rows(self, path: Path) -> Iterator[RawItem]:
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (UnicodeDecodeError, json.JSONDecodeError) as error:
                    raise SlmError(f"{path} line {number} is not valid JSON: {error}") from None
                text = text_of(row, self.text_field, f"{path} line {number}")
                if text is not None:
                    yield RawItem(STR, f"{path}:{number - 1}", str(text))


class JsonReader(Reader):
    """A list of records (or an object holding one list of them); a record is a document."""

    def read(self, path: Path) -> Iterator[RawItem]:
        try:
            data = json.loads(path.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SlmError(f"{path} is not valid UTF-8 JSON: {error}") from None
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise SlmError(f"{path}: expected a list of records (or an object holding one list)")
            data = lists[0]
        if not isinstance(data, list):
            raise SlmError(f"{path}: expected a list of records, found {type(data).__name__}")
        for i, row in enumerate(data):
            text = text_of(row, self.text_field, f"{path} row {i}")
            if text is not None:
                yield RawItem(STR, f"{path}:{i}", str(text))


class ParquetReader(Reader):
    """A row is a document; only the text column is read, in batches."""

    def read(self, path: Path) -> Iterator[RawItem]:
        try:
            import pyarrow.parquet as pq  # optional dependency, needed only for .parquet files
        except ImportError:
            raise SlmError(f"reading {path} needs pyarrow: pip install pyarrow") from None
        parquet = pq.ParquetFile(path)
        if self.text_field not in parquet.schema_arrow.names:
            raise SlmError(f"{path}: no column {self.text_field!r} (columns: {parquet.schema_arrow.names}); "
                           "use --text-field")
        index = 0
        for batch in parquet.iter_batches(columns=[self.text_field], batch_size=4096):
            for text in batch.column(0).to_pylist():
                if text is not None:
                    yield RawItem(STR, f"{path}:{index}", str(text))
                index += 1


class CsvReader(Reader):
    """A row is a document (empty cells skipped); the file is read as UTF-8, invalid bytes replaced."""

    def read(self, path: Path) -> Iterator[RawItem]:
        csv.field_size_limit(1 << 30)
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or self.text_field not in reader.fieldnames:
                raise SlmError(f"{path}: no column {self.text_field!r} (columns: {reader.fieldnames}); "
                               "use --text-field")
            for i, row in enumerate(reader):
                if row[self.text_field]:
                    yield RawItem(STR, f"{path}:{i}", row[self.text_field])


TABLE_READERS = {".jsonl": JsonLinesReader, ".json": JsonReader, ".parquet": ParquetReader, ".csv": CsvReader}


def read_files(paths: list[Path], text_field: str = "text", row_by_row: bool = False) -> Iterator[RawItem]:
    """The raw items of `paths` in order, each file read by the reader of its extension (text otherwise).
    `row_by_row`: JSON lines parsed here, one item per row."""
    for path in paths:
        reader_class = TABLE_READERS.get(path.suffix.lower(), TextReader)
        reader = JsonLinesReader(text_field, row_by_row) if reader_class is JsonLinesReader else reader_class(text_field)
        yield from reader.read(path)
