"""The table of kept documents a prepare run builds, and the scratch files that hold their contents.

Per document only a few numbers and its hash stay in memory; its tokens (or its cleaned text, when the
tokenizer is trained after the split) and its MinHash signature go to scratch files in the output's
temporary folder, which the run removes before renaming that folder into place.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slmkit.data.dedup import NUM_PERM


@dataclass
class Documents:
    """Columns of the kept documents (one entry each, in corpus order) and the pass's counts."""

    names: list[str] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    source: array = field(default_factory=lambda: array("q"))  # source index
    # offset and tokens are 0 until the tokenizing pass when the tokenizer is trained after the split
    offset: array = field(default_factory=lambda: array("q"))  # first token in the scratch token file
    tokens: array = field(default_factory=lambda: array("q"))  # tokens, end-of-text included
    text_bytes: array = field(default_factory=lambda: array("q"))  # UTF-8 bytes of the text
    signature_row: array = field(default_factory=lambda: array("q"))  # row in the signature file, or -1
    group: dict[int, str] = field(default_factory=dict)  # pieces of one large file
    n_signatures: int = 0
    filters: Counter = field(default_factory=Counter)
    per_source_filters: list[Counter] = field(default_factory=list)
    decode_problems: int = 0
    decode_problem_files: list[str] = field(default_factory=list)

    def column(self, name: str) -> np.ndarray:
        """A numeric column ("source", "offset", "tokens", "text_bytes", "signature_row") as int64,
        without a copy."""
        return np.frombuffer(getattr(self, name), dtype=np.int64)


class Scratch:
    """The scratch files of one run, in the output's temporary folder."""

    NAMES = ("scratch_text.bin", "scratch_tokens.bin", "scratch_signatures.bin")

    def __init__(self, directory: Path):
        self.text, self.tokens, self.signatures = (directory / name for name in self.NAMES)

    def texts(self, docs: Documents, indices) -> Iterator[tuple[int, bytes]]:
        """(document index, its cleaned UTF-8 text) for each of `indices`, from the scratch text file."""
        n_bytes = docs.column("text_bytes")
        starts = np.cumsum(n_bytes) - n_bytes
        text = np.memmap(self.text, dtype=np.uint8, mode="r")
        for i in indices:
            yield int(i), text[starts[i] : starts[i] + n_bytes[i]].tobytes()

    def signature_matrix(self, n_signatures: int) -> np.memmap:
        """The MinHash signatures, one row of NUM_PERM values per document that has one."""
        return np.memmap(self.signatures, dtype=np.uint32, mode="r", shape=(n_signatures, NUM_PERM))

    def token_array(self, dtype: np.dtype) -> np.ndarray:
        """Every kept document's tokens, in the order they were written (memory-mapped)."""
        if not self.tokens.stat().st_size:  # numpy cannot map an empty file
            return np.empty(0, dtype)
        return np.memmap(self.tokens, dtype=dtype, mode="r")

    def remove(self) -> None:
        for path in (self.text, self.tokens, self.signatures):
            path.unlink(missing_ok=True)
