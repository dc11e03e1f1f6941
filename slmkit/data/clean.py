"""Per-document work, run in worker processes: decode, clean, filter, hash, MinHash, tokenize (in the
same pass for a ready tokenizer; in a later one, from the cleaned text, for one `prepare` trains).

Every filter has a name; a dropped document reports the name so `prepare` can count it.
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass

import numpy as np

from slmkit.data.dedup import NUM_PERM, content_hash, minhash_batch
from slmkit.data.options import PrepareOptions
from slmkit.data.readers import JSONL, STR, TEXT, RawItem
from slmkit.errors import SlmError
from slmkit.tokenizer import load_tokenizer

# Filter names, in the order they are checked (also the keys of meta.json "filters").
FILTERS = ("binary", "decode_error", "empty", "error_page", "too_short", "long_lines", "garbled")

_ERROR_PAGE = re.compile(
    r"\A\s*(?:<!doctype html[^>]*>\s*)?(?:<html[^>]*>\s*)?(?:<head>\s*)?(?:<title>\s*)?"
    r"(?:\d{3}:? (?:not found|forbidden|bad gateway|bad request|internal server error|service unavailable|"
    r"unauthorized|gateway time-?out|too many requests)|not found|access denied|page not found|error \d{3})",
    re.IGNORECASE,
)
ERROR_PAGE_MAX_CHARS = 4000
MAX_MEAN_LINE_CHARS = 2_000  # a longer mean line is minified or machine text
MAX_REPLACEMENT_SHARE = 0.01  # more U+FFFD than this (after decoding with replacement) is garbled text
MINHASH_BATCH_BYTES = 1 << 20  # text MinHashed at once: bounds the pass's arrays (~25 bytes per byte of text)


@dataclass
class DocResult:
    """One document after processing. `reason` is None when it is kept."""

    name: str
    group: str | None
    reason: str | None
    n_bytes: int = 0
    hash: bytes = b""
    signature: np.ndarray | None = None
    tokens: np.ndarray | None = None  # ids with the end-of-text id appended
    text: bytes | None = None  # the cleaned text in UTF-8, when there is no tokenizer to turn it into tokens
    replaced: bool = False


def normalize(text: str) -> str:
    """Drop a BOM, turn CRLF/CR into LF, strip surrounding whitespace."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.lstrip("\ufeff").strip()


def longest_line(data: bytes) -> int:
    """Length in bytes of the longest line of UTF-8 `data` (numpy over newline positions)."""
    breaks = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    if len(breaks) == 0:
        return len(data)
    edges = np.concatenate([[-1], breaks, [len(data)]])
    return int(np.diff(edges).max()) - 1


def garbage_reason(text: str, options: PrepareOptions, replaced: bool, data: bytes | None = None) -> str | None:
    """Name of the filter `text` fails (after decoding), or None. `data`: its UTF-8 bytes, if at hand."""
    if not text:
        return "empty"
    if len(text) <= ERROR_PAGE_MAX_CHARS and _ERROR_PAGE.match(text):
        return "error_page"
    if len(text) < options.min_chars:
        return "too_short"
    lines = text.count("\n") + 1
    if len(text) / lines > MAX_MEAN_LINE_CHARS:
        return "long_lines"
    if len(text) > options.max_line_chars:
        if data is None:
            data = text.encode("utf-8", "surrogatepass")
        if longest_line(data) > options.max_line_chars:  # bytes >= characters: exact when ASCII
            return "long_lines"
    if replaced and text.count("\ufffd") > MAX_REPLACEMENT_SHARE * len(text):
        return "garbled"
    return None


class DocumentProcessor:
    """Turns raw items into DocResults; one per worker process (it holds the tokenizer). Reads the
    cleaning settings of `options`; MinHash signatures unless its near_dup is "off"."""

    def __init__(self, options: PrepareOptions, tokenizer=None, dtype=np.uint16):
        self.options = options
        self.minhash = options.near_dup != "off"
        self.tokenizer = tokenizer
        self.dtype = np.dtype(dtype)

    def texts(self, item: RawItem):
        """(name, text or None, reason, replaced) for each document in `item` (decode and split only)."""
        options = self.options
        if item.kind == STR:
            yield item.name, item.data, None, False
            return
        data = item.data
        if item.kind == TEXT and b"\x00" in data[:8192]:
            yield item.name, None, "binary", False
            return
        replaced = False
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            if options.encoding_errors == "strict":
                raise SlmError(
                    f"{item.name} is not valid UTF-8 (byte {error.start}: {error.reason}); use "
                    "--encoding-errors replace (or skip) to keep going"
                ) from None
            if options.encoding_errors == "skip":
                yield item.name, None, "decode_error", False
                return
            text, replaced = data.decode("utf-8", "replace"), True
        if item.kind == JSONL:
            start = int(item.name.rsplit(":", 1)[1])
            path = item.name.rsplit(":", 1)[0]
            for offset, line in enumerate(text.split("\n")):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise SlmError(f"{path} line {start + offset + 1} is not valid JSON: {error}") from None
                if isinstance(row, dict):
                    if options.text_field not in row:
                        raise SlmError(
                            f"{path} line {start + offset + 1}: no {options.text_field!r} field "
                            f"(found {list(row)}); choose the field with --text-field"
                        )
                    row = row[options.text_field]
                yield f"{path}:{start + offset}", "" if row is None else str(row), None, replaced
            return
        if options.doc_separator:
            for k, part in enumerate(text.split(options.doc_separator)):
                yield f"{item.name}#{k}", part, None, replaced
        else:
            yield item.name, text, None, replaced

    def clean_texts(self, item: RawItem, with_bytes: bool = False):
        """(name, cleaned text or None, reason, replaced) for each document in `item`; with `with_bytes`,
        (name, text, reason, replaced, UTF-8 bytes of the text)."""
        for name, text, reason, replaced in self.texts(item):
            data = None
            if reason is None:
                text = normalize(text)
                data = text.encode("utf-8", "surrogatepass")
                reason = garbage_reason(text, self.options, replaced, data)
            if reason is not None:
                text = data = None
            yield (name, text, reason, replaced, data) if with_bytes else (name, text, reason, replaced)

    def process(self, items: list[RawItem]) -> list[DocResult]:
        results, kept_data = [], []
        eot = np.array([self.tokenizer.eot_id], dtype=self.dtype) if self.tokenizer else None
        for item in items:
            for name, text, reason, replaced, data in self.clean_texts(item, with_bytes=True):
                if reason is not None:
                    results.append(DocResult(name, item.group, reason, replaced=replaced))
                    continue
                result = DocResult(name, item.group, None, n_bytes=len(data), hash=content_hash(data),
                                   replaced=replaced)
                if self.tokenizer is not None:
                    result.tokens = self._tokens(text, eot)
                else:
                    result.text = data
                results.append(result)
                kept_data.append(data)
        if self.minhash and kept_data:
            kept = [r for r in results if r.reason is None]
            for start, stop in _pieces([len(data) for data in kept_data], MINHASH_BATCH_BYTES):
                # vectorised MinHash passes over pieces of the batch: its arrays take ~25 bytes per byte of text
                signatures, valid = minhash_batch(kept_data[start:stop], NUM_PERM)
                for result, signature, ok in zip(kept[start:stop], signatures, valid):
                    result.signature = signature.copy() if ok else None
        return results

    def tokenize(self, texts: list[bytes]) -> list[np.ndarray]:
        """Token ids, end-of-text appended, of each cleaned UTF-8 text (as `DocResult.text` holds it)."""
        eot = np.array([self.tokenizer.eot_id], dtype=self.dtype)
        return [self._tokens(data.decode("utf-8", "surrogatepass"), eot) for data in texts]

    def _tokens(self, text: str, eot: np.ndarray) -> np.ndarray:
        ids = self.tokenizer.encode_to_array(text, np.uint32)
        return np.concatenate([ids.astype(self.dtype, copy=False), eot])


def _pieces(sizes: list[int], limit: int) -> list[tuple[int, int]]:
    """(start, stop) ranges of consecutive items whose sizes add up to about `limit` (at least one item)."""
    pieces, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if total and total + size > limit:
            pieces.append((start, i))
            start, total = i, 0
        total += size
    pieces.append((start, len(sizes)))
    return pieces


# A worker process's own processor, set once by `init_worker` (process-local, never shared).
_worker: DocumentProcessor | None = None


def init_worker(options: PrepareOptions, tokenizer, dtype: str) -> None:
    """Pool initializer; `tokenizer` is a Tokenizer (inherited by fork) or a directory to load it from."""
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the main process

    _worker = DocumentProcessor(options, load_tokenizer(tokenizer) if tokenizer else None, dtype)


def run_in_worker(method: str, batch: list):
    """This worker's `DocumentProcessor.<method>(batch)` ("process" or "tokenize")."""
    return getattr(_worker, method)(batch)
