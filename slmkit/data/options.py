"""`PrepareOptions`: every setting of `prepare` besides its sources and output, declared once.

Each field carries its default and its help; `prepare(...)` and `train_tokenizer_on_sources(...)` take
them as keyword arguments, and `slm prepare` / `slm tokenizer train` derive their flags from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from slmkit.data.dedup import DEFAULT_THRESHOLD
from slmkit.data.loader import DTYPES
from slmkit.data.readers import TEXT_EXTENSIONS
from slmkit.errors import SlmError
from slmkit.utils import option

NEAR_DUP_MODES = ("group", "drop", "off")
ENCODING_POLICIES = ("strict", "replace", "skip")
JOIN_MODES = ("auto", "wikitext", "none")


@dataclass(frozen=True)
class PrepareOptions:
    """The settings of a `prepare` run; all but RUN_FIELDS shape the dataset (its fingerprint)."""

    # How sources are read and cleaned: what `train_tokenizer_on_sources` shares with `prepare`.
    SOURCE_FIELDS = ("encoding_errors", "min_chars", "max_line_chars", "doc_separator", "extensions", "text_field",
                     "hf_split", "max_documents", "join")
    # How prepare runs, not what it makes: left out of the dataset's fingerprint.
    RUN_FIELDS = ("workers", "force", "progress")
    # Fields added after datasets were first fingerprinted: left out of the fingerprint while at these
    # defaults, so that datasets made before them stay reusable.
    LATER_FIELDS = {"join": "auto"}

    tokenizer: str = option("gpt2", "gpt2, bpe:VOCAB (trained here), char, or a tokenizer dir / tokenizer.json",
                            short="-t")
    val: float = option(0.05, "validation: a share of the tokens (0 < val < 1) or a number of documents (>= 1)")
    seed: int = option(1337, "seed of the split")
    near_dup: str = option("group", "near-duplicates: keep on one side of the split (group), keep one (drop), "
                           "or skip the check", choices=NEAR_DUP_MODES)
    near_dup_threshold: float = option(DEFAULT_THRESHOLD,
                                       "estimated Jaccard similarity that makes two documents near-duplicates")
    encoding_errors: str = option("strict", "invalid UTF-8: stop (strict), replace with U+FFFD, or skip the document",
                                  choices=ENCODING_POLICIES)
    min_chars: int = option(32, "drop documents shorter than this")
    max_line_chars: int = option(20_000, "drop documents with a longer line (minified)")
    doc_separator: str | None = option(None, "split text files into documents at this string (e.g. '<|endoftext|>')")
    # Always TEXT_EXTENSIONS, the common text and code extensions, plus any given (lower case, with a dot);
    # .jsonl/.json/.parquet/.csv always.
    extensions: tuple[str, ...] | None = option(
        None, "another file extension to read from folders, besides the common text and code ones (repeatable)",
        flag="--ext", metavar="EXT")
    text_field: str = option("text", "field or column holding the text in .jsonl/.json/.parquet/.csv and hf: sources")
    hf_split: str = option("train", "split of hf: sources that name none")
    max_documents: int | None = option(None, "read at most this many documents (files, rows) per source")
    join: str = option("auto", "rows of local .jsonl/.json/.parquet/.csv files: wikitext joins WikiText-style rows (a "
                       "line each, articles opened by ' = Title = ') into articles; auto does so when a file's first "
                       "rows look like that; none keeps a row a document", choices=JOIN_MODES)
    dtype: str | None = option(None, "token dtype (default: uint16 when the vocab fits)", choices=DTYPES)
    chat_tokens: bool = option(False, "trained BPE: add <|im_start|> and <|im_end|>")
    tokenizer_train_bytes: int = option(1 << 30, "train bpe:/char on at most this many characters of the cleaned text")
    workers: int | None = option(None, "tokenizing processes (default: usable cores minus the load average, at least 1)")
    force: bool = option(False, "rebuild even when the inputs are unchanged")
    progress: bool = option(True, "show progress bars")

    def __post_init__(self):
        given = (e.lower() if e.startswith(".") else f".{e.lower()}" for e in self.extensions or ())
        added = tuple(e for e in dict.fromkeys(given) if e not in TEXT_EXTENSIONS)
        object.__setattr__(self, "extensions", TEXT_EXTENSIONS + added)

    def dataset_fields(self) -> dict:
        """The fields that shape the dataset (all but RUN_FIELDS; LATER_FIELDS only when not at their
        default), for its fingerprint."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.RUN_FIELDS
                and not (f.name in self.LATER_FIELDS and getattr(self, f.name) == self.LATER_FIELDS[f.name])}

    def check(self, explicit_val: bool = False) -> None:
        """SlmError naming the first invalid setting and its fix. `explicit_val`: validation sources are
        given, so `val` is unused."""
        if self.encoding_errors not in ENCODING_POLICIES:
            raise SlmError(f"encoding_errors must be strict, replace or skip, not {self.encoding_errors!r}")
        if self.near_dup not in NEAR_DUP_MODES:
            raise SlmError(f"near_dup must be one of {', '.join(NEAR_DUP_MODES)}, not {self.near_dup!r}")
        if not 0 < self.near_dup_threshold <= 1:
            raise SlmError(f"near-duplicate threshold must be in (0, 1], not {self.near_dup_threshold}")
        if not explicit_val and not (0 < self.val < 1 or (self.val >= 1 and float(self.val).is_integer())):
            raise SlmError(
                f"val must be a fraction between 0 and 1 or a whole number of documents, not {self.val}; "
                "or give validation sources with --val-source"
            )
        if self.dtype not in (None, *DTYPES):
            raise SlmError(f"dtype must be uint16 or uint32, not {self.dtype!r}")
        if self.join not in JOIN_MODES:
            raise SlmError(f"join must be one of {', '.join(JOIN_MODES)}, not {self.join!r}")
        if self.min_chars < 0:
            raise SlmError(f"min_chars must be >= 0, not {self.min_chars}")
