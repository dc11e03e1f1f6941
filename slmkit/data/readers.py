"""File readers: one class per kind of file, each turning a file into raw items (documents, or blocks of
them, still to decode and clean in the worker processes; see `slmkit.data.clean`).

A text file is a document (a large one is read in pieces of one group); a row of a .jsonl, .json,
.parquet or .csv file is a document, its text in the field or column `text_field`, except in a
WikiText-style file (a row per line, articles opened by " = Title = " headings), whose rows are joined
into articles (`wikitext_articles`, as for the built-in wikitext-103).
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterable, Iterator
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
WIKITEXT_PROBE_ROWS = 200  # rows of a table file looked at to tell whether it is WikiText-style

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
    in one group so the split keeps them together. With `byte_range` (start, stop), only those bytes of
    the file are read, as a document of their own (named "PATH[start:stop]")."""

    def __init__(self, text_field: str = "text", byte_range: tuple[int, int] | None = None):
        super().__init__(text_field)
        self.byte_range = byte_range

    def read(self, path: Path) -> Iterator[RawItem]:
        if self.byte_range is None:
            start, stop, name = 0, path.stat().st_size, str(path)
        else:
            (start, stop), name = self.byte_range, f"{path}[{self.byte_range[0]}:{self.byte_range[1]}]"
        if stop - start <= CHUNK_BYTES:
            if self.byte_range is None:
                yield RawItem(TEXT, name, path.read_bytes())
            else:
                with open(path, "rb") as f:
                    f.seek(start)
                    yield RawItem(TEXT, name, f.read(stop - start))
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = stop - start
            carry = b""
            index = 0
            while left > 0 and (block := f.read(min(CHUNK_BYTES, left))):
                left -= len(block)
                data = carry + block
                cut = data.rfind(b"\n") + 1 or len(data)
                data, carry = data[:cut], data[cut:]
                yield RawItem(TEXT, f"{name}#{index}", data, group=name)
                index += 1
            if carry:
                yield RawItem(TEXT, f"{name}#{index}", carry, group=name)


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


def read_files(paths: list[Path], text_field: str = "text", row_by_row: bool = False,
               joined: frozenset[Path] = frozenset(), byte_range: tuple[int, int] | None = None) -> Iterator[RawItem]:
    """The raw items of `paths` in order, each file read by the reader of its extension (text otherwise).
    `row_by_row`: JSON lines parsed here, one item per row. `joined`: table files whose rows are lines
    of WikiText-style articles, joined into one item per article. `byte_range`: read only these bytes of
    the (one) text file."""
    for path in paths:
        reader_class = TABLE_READERS.get(path.suffix.lower(), TextReader)
        if reader_class is TextReader:
            yield from TextReader(text_field, byte_range).read(path)
        elif path in joined:
            rows = table_reader(path, text_field, row_by_row=True).read(path)
            yield from wikitext_articles((item.data for item in rows), str(path))
        else:
            yield from table_reader(path, text_field, row_by_row).read(path)


def table_reader(path: Path, text_field: str, row_by_row: bool = False) -> Reader:
    """The reader of a .jsonl/.json/.parquet/.csv file."""
    reader_class = TABLE_READERS[path.suffix.lower()]
    return JsonLinesReader(text_field, row_by_row) if reader_class is JsonLinesReader else reader_class(text_field)


def is_wikitext_title(line: str) -> bool:
    """A top-level WikiText heading (" = Title = "), where an article starts; not " = = Section = = "."""
    s = line.strip()
    return s.startswith("= ") and s.endswith(" =") and not s.startswith("= =")


def wikitext_articles(rows: Iterable[str | None], prefix: str) -> Iterator[RawItem]:
    """WikiText rows (a line each, headings included) joined into one document per article: a new
    article starts at each top-level " = Title = " row. Named "PREFIX:ROW" (the row after the article)
    and "PREFIX:end" for the last, as the built-in wikitext-103 names them."""
    pending: list[str] = []
    for i, text in enumerate(rows):
        text = text or ""
        if is_wikitext_title(text) and "".join(pending).strip():
            yield RawItem(STR, f"{prefix}:{i}", "".join(pending))
            pending = []
        pending.append(text)
    if pending and "".join(pending).strip():
        yield RawItem(STR, f"{prefix}:end", "".join(pending))


def looks_like_wikitext(path: Path, text_field: str) -> bool:
    """Whether a .jsonl or .parquet file holds WikiText-style rows: among its first rows, a top-level
    " = Title = " heading, and nearly every non-empty row one line ending in a line break."""
    if path.suffix.lower() not in (".jsonl", ".parquet"):
        return False
    try:
        rows = [item.data for item in
                itertools.islice(table_reader(path, text_field, row_by_row=True).read(path), WIKITEXT_PROBE_ROWS)]
    except SlmError:
        return False  # no such field, invalid JSON: reading it properly will say so
    lines = [row for row in rows if row.strip()]
    single = sum(row.endswith("\n") and row.count("\n") == 1 for row in lines)
    return len(lines) >= 3 and any(is_wikitext_title(row) for row in lines) and single >= 0.9 * len(lines)
