"""The tokenizer of a prepare run: saved beside the dataset with the token dtype its vocabulary needs;
when prepare trains it ("bpe:N", "char"), trained on the training side of the split only, and then a
second parallel pass tokenizes the kept documents' cleaned text from the scratch file.

A tokenizer trained on validation text would have merges for words only validation holds, and
validation loss would flatter the model.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from slmkit.data.collect import BATCH_BYTES
from slmkit.data.documents import Documents, Scratch
from slmkit.data.options import PrepareOptions
from slmkit.data.pool import Workers
from slmkit.data.split import TRAIN
from slmkit.errors import SlmError
from slmkit.tokenizer import MANIFEST, CharTokenizer, Tokenizer, parse_spec, train_tokenizer
from slmkit.tokenizer.base import MANIFEST_FORMAT
from slmkit.utils import progress_bar

TOKENIZER_MARKER = ".slmkit-tokenizer-train"  # the mark of a folder `slm tokenizer train` wrote
TOKENIZER_FILES = (MANIFEST, "tokenizer.json")  # what a saved slmkit tokenizer's folder holds


def is_tokenizer_folder(path: Path) -> bool:
    """Whether `path` holds a saved slmkit tokenizer and nothing else (what `slm tokenizer train` wrote
    before it left a marker)."""
    try:
        names = {p.name for p in path.iterdir()}
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT and names <= set(TOKENIZER_FILES)


def vocab_shortfall(spec: str, tokenizer: Tokenizer, trained_on: dict | None) -> str | None:
    """The warning when a trained "bpe:N" has fewer than N ids (its training text ran out of pairs to
    merge), else None."""
    kind, asked = parse_spec(spec)
    if kind != "bpe" or tokenizer.vocab_size >= asked:
        return None
    text = f" ({trained_on['documents']:,} documents, {trained_on['bytes'] / 1e6:,.2f} MB)" if trained_on else ""
    return (f"{spec} asked for {asked:,} ids, but the training text{text} gave only {tokenizer.vocab_size:,}: "
            f"no pair of tokens was left that occurs often enough to merge; the vocabulary, and the vocab_size of models trained on this "
            f"data, is {tokenizer.vocab_size:,} (train on more text, or ask for fewer ids)")


def save_tokenizer(tokenizer: Tokenizer, directory: Path, dtype: str | None) -> np.dtype:
    """Save `tokenizer` into `directory` (spawned workers load it from there) and return the token dtype:
    `dtype` when given, else uint16 when the vocabulary fits. SlmError when it does not fit `dtype`."""
    tokenizer.save(directory)
    vocab_size = tokenizer.vocab_size
    if dtype == "uint16" and vocab_size > 65536:
        raise SlmError(f"vocab size {vocab_size} does not fit uint16 tokens; use --dtype uint32")
    return np.dtype(dtype or ("uint16" if vocab_size <= 65536 else "uint32"))


def train_on_texts(texts: Iterable[str], spec: str, budget: int, chat_tokens: bool, progress: bool = False,
                   **train_options) -> tuple[Tokenizer, dict]:
    """Train tokenizer `spec` on `texts` (cleaned documents, in order) until `budget` characters are
    taken; return it and what it learned from, {"documents": N, "bytes": UTF-8 bytes}. `train_options`
    go to `slmkit.tokenizer.train_tokenizer` (min_frequency)."""
    used = {"documents": 0, "bytes": 0}
    check: list[str] = []

    def within_budget() -> Iterator[str]:
        left = budget
        for text in texts:
            if left <= 0:
                return
            left -= len(text)
            used["documents"] += 1
            used["bytes"] += len(text.encode("utf-8", "surrogatepass"))
            if len(check) < 4:
                check.append(text[:200_000])
            yield text

    corpus = within_budget()
    first = next(corpus, None)
    if first is None:
        raise SlmError(f"every document was filtered out, so {spec} cannot be trained; check the sources and --min-chars")
    tokenizer = train_tokenizer(itertools.chain([first], corpus), spec, chat_tokens=chat_tokens, check_texts=check,
                                progress=progress, **train_options)
    return tokenizer, used


def train_on_training_split(docs: Documents, dest: np.ndarray, scratch: Scratch, spec: str,
                            options: PrepareOptions, progress: bool) -> tuple[Tokenizer, dict]:
    """Train `spec` on the training documents of the split only (never on validation documents or their
    near-duplicates), in corpus order, at most `options.tokenizer_train_bytes` characters; return it and
    meta.json's `trained_on`. A trained "char" gets an `<|unk|>` id for characters only validation holds."""
    texts = (data.decode("utf-8", "surrogatepass") for _, data in scratch.texts(docs, np.flatnonzero(dest == TRAIN)))
    tokenizer, used = train_on_texts(texts, spec, options.tokenizer_train_bytes, options.chat_tokens,
                                     progress=progress)
    if isinstance(tokenizer, CharTokenizer):
        tokenizer = CharTokenizer(tokenizer.chars, name=tokenizer.name, unknown=True)
    return tokenizer, {"split": "train", **used}


def tokenize_documents(docs: Documents, dest: np.ndarray, tokenizer: Tokenizer, dtype: np.dtype, scratch: Scratch,
                       workers: Workers, progress: bool) -> None:
    """Tokenize the kept documents' text from the scratch text file (worker processes, corpus order)
    into the scratch token file, filling `docs.tokens`; then drop the text file. Texts are read and tokens
    written as they come (BATCH_BYTES per task, two tasks per worker in flight): memory stays flat."""
    start = time.perf_counter()
    kept = np.flatnonzero(dest >= 0)

    def tasks():
        indices, batch, size = [], [], 0
        for i, data in scratch.texts(docs, kept):
            indices.append(i)
            batch.append(data)
            size += len(data)
            if size >= BATCH_BYTES:
                yield indices, size, batch
                indices, batch, size = [], [], 0
        if batch:
            yield indices, size, batch

    total = int(docs.column("text_bytes")[kept].sum())
    offset = 0
    bar = progress_bar(total, "tokenize", progress, unit="B", unit_scale=True)
    with bar, contextlib.closing(workers.map("tokenize", tasks(), tokenizer, dtype, bar)) as batches, \
            open(scratch.tokens, "wb") as token_file:
        for indices, results in batches:
            for i, tokens in zip(indices, results):
                docs.tokens[i] = len(tokens)
                tokens.tofile(token_file)
                offset += len(tokens)
            bar.set_postfix_str(f"{offset / max(time.perf_counter() - start, 1e-9) / 1e6:.2f}M tok/s", refresh=False)
    scratch.text.unlink()
