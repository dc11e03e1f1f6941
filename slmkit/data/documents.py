"""The table of kept documents a prepare run builds, and the scratch files that hold their contents.

Per document only a few numbers stay in memory (BYTES_PER_DOCUMENT: its 16-byte content hash, its source,
sizes and whether it has a signature, the end of its name in the names file, and 8 bytes in the set of
seen hashes); everything that grows with its length goes to scratch files in the output's temporary
folder, which the run removes before renaming that folder into place: its tokens (or its cleaned text,
when the tokenizer is trained after the split), its MinHash signature and its name. The scratch files are
read back in bounded pieces (`read_tokens`, `texts`, `signature_rows`), never mapped whole, so that the
pages read do not stay resident.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slmkit.data.dedup import NUM_PERM

HASH_BYTES = 16
# In memory per kept document: hash 16, source 4, tokens 8, text bytes 8, has-signature 1, name end 8,
# seen-hash set 8 (16 while its runs merge).
BYTES_PER_DOCUMENT = 53
NAME_BUFFER_BYTES = 1 << 20  # names are written to their scratch file in pieces of about this size


@dataclass
class Documents:
    """Columns of the kept documents (one entry each, in corpus order) and the pass's counts. Names are
    kept in the scratch file `names_path` (see `name` and `names`), not in memory."""

    names_path: Path | None = None
    hashes: bytearray = field(default_factory=bytearray)  # HASH_BYTES per document
    source: array = field(default_factory=lambda: array("i"))  # source index
    # 0 until the tokenizing pass when the tokenizer is trained after the split (and for dropped documents)
    tokens: array = field(default_factory=lambda: array("q"))  # tokens, end-of-text included
    text_bytes: array = field(default_factory=lambda: array("q"))  # UTF-8 bytes of the text
    has_signature: array = field(default_factory=lambda: array("b"))  # 1 when it has a row in the signature file
    name_end: array = field(default_factory=lambda: array("q"))  # end of its name in the names file
    group: dict[int, str] = field(default_factory=dict)  # pieces of one large file
    n_signatures: int = 0
    filters: Counter = field(default_factory=Counter)
    per_source_filters: list[Counter] = field(default_factory=list)
    decode_problems: int = 0
    decode_problem_files: list[str] = field(default_factory=list)
    _pending_names: bytearray = field(default_factory=bytearray, repr=False)
    _names_written: int = 0

    def __len__(self) -> int:
        return len(self.source)

    def add(self, name: str, content_hash: bytes, source: int, text_bytes: int, tokens: int, signature: bool,
            group: str | None = None) -> None:
        """Append a kept document (its tokens or text and signature go to the scratch files by the caller)."""
        if group is not None:
            self.group[len(self)] = group
        self.hashes += content_hash
        self.source.append(source)
        self.tokens.append(tokens)
        self.text_bytes.append(text_bytes)
        self.has_signature.append(1 if signature else 0)
        self.n_signatures += bool(signature)
        encoded = name.encode("utf-8", "surrogatepass")
        self.name_end.append((self.name_end[-1] if self.name_end else 0) + len(encoded))
        self._pending_names += encoded
        if len(self._pending_names) >= NAME_BUFFER_BYTES:
            self.flush_names()

    def flush_names(self) -> None:
        """Append the names not yet written to the names file."""
        if self.names_path is None:
            raise RuntimeError("Documents without a names file keep no names")
        with open(self.names_path, "ab") as f:
            f.write(self._pending_names)
        self._names_written += len(self._pending_names)
        self._pending_names = bytearray()

    def names(self, indices) -> list[str]:
        """The names of the documents at `indices` (read from the names file)."""
        self.flush_names()
        ends = self.name_end
        found = []
        with open(self.names_path, "rb") as f:
            for i in indices:
                start = ends[i - 1] if i else 0
                f.seek(start)
                found.append(f.read(ends[i] - start).decode("utf-8", "surrogatepass"))
        return found

    def name(self, index: int) -> str:
        return self.names([int(index)])[0]

    def hash(self, index: int) -> bytes:
        return bytes(self.hashes[HASH_BYTES * index : HASH_BYTES * (index + 1)])

    def hash_array(self) -> np.ndarray:
        """The content hashes as a (documents, HASH_BYTES) uint8 array, without a copy."""
        return np.frombuffer(self.hashes, dtype=np.uint8).reshape(-1, HASH_BYTES)

    def column(self, name: str) -> np.ndarray:
        """A numeric column ("source", "tokens", "text_bytes", "has_signature") as a numpy array, without a
        copy."""
        values = getattr(self, name)
        return np.frombuffer(values, dtype={"i": np.int32, "q": np.int64, "b": np.int8}[values.typecode])

    def offsets(self) -> np.ndarray:
        """Each document's first token in the scratch token file, which holds the documents with tokens in
        corpus order (int64)."""
        tokens = self.column("tokens")
        return np.cumsum(tokens) - tokens


class Scratch:
    """The scratch files of one run, in the output's temporary folder."""

    NAMES = ("scratch_text.bin", "scratch_tokens.bin", "scratch_signatures.bin", "scratch_names.bin")
    READ_BYTES = 1 << 24  # read at a time from a scratch file

    def __init__(self, directory: Path):
        self.text, self.tokens, self.signatures, self.names = (directory / name for name in self.NAMES)

    def texts(self, docs: Documents, indices) -> Iterator[tuple[int, bytes]]:
        """(document index, its cleaned UTF-8 text) for each of `indices` (increasing), read from the
        scratch text file in order."""
        n_bytes = docs.column("text_bytes")
        starts = np.cumsum(n_bytes) - n_bytes
        with open(self.text, "rb", buffering=1 << 20) as f:
            for i in indices:
                if f.tell() != starts[i]:
                    f.seek(int(starts[i]))
                yield int(i), f.read(int(n_bytes[i]))

    def signature_rows(self, rows: np.ndarray) -> np.ndarray:
        """The MinHash signatures (uint32[len(rows), NUM_PERM]) at `rows` of the signature file. The file
        is mapped only while they are copied out, so the pages read do not stay resident."""
        mapped = np.memmap(self.signatures, dtype=np.uint32, mode="r").reshape(-1, NUM_PERM)
        try:
            return np.asarray(mapped[rows])
        finally:
            del mapped

    def signature_blocks(self, rows_per_block: int) -> Iterator[np.ndarray]:
        """The signature file in order, as blocks of up to `rows_per_block` rows (uint32[rows, NUM_PERM])."""
        with open(self.signatures, "rb") as f:
            while True:
                block = np.fromfile(f, dtype=np.uint32, count=rows_per_block * NUM_PERM)
                if not len(block):
                    return
                yield block.reshape(-1, NUM_PERM)

    def read_tokens(self, dtype: np.dtype, start: int, count: int) -> np.ndarray:
        """`count` tokens from token `start` of the scratch token file (read, not mapped)."""
        with open(self.tokens, "rb") as f:
            f.seek(start * dtype.itemsize)
            return np.fromfile(f, dtype=dtype, count=count)

    def remove(self) -> None:
        for path in (self.text, self.tokens, self.signatures, self.names):
            path.unlink(missing_ok=True)
