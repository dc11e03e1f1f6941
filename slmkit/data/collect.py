"""The pass over the sources: the main process reads and hashes the raw bytes; the workers decode,
clean, filter, hash and MinHash every document (and tokenize it, for a ready tokenizer). The first copy
of each exact duplicate is kept, validation sources first, so a document in both keeps its validation
copy. Kept documents go into the `Documents` table (a few numbers each) and their contents into the
scratch files as they come, so memory does not grow with the text.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np

from slmkit.data.dedup import SeenHashes
from slmkit.data.documents import Documents, Scratch
from slmkit.data.pool import Workers
from slmkit.data.sources import Source
from slmkit.errors import SlmError
from slmkit.utils import progress_bar

BATCH_BYTES = 256 << 10  # per task sent to a worker: small enough to balance the load at the end


def collect(sources: list[Source], is_val_source: list[bool], workers: Workers, tokenizer, dtype: np.dtype,
            scratch: Scratch, progress: bool) -> tuple[Documents, list[dict]]:
    """The kept documents and, per source, {"raw_bytes", "sha256" of names and raw bytes}. With
    `tokenizer` None the scratch file holds each document's cleaned text instead of its tokens.
    Raises SlmError when every document is filtered out."""
    stats = [{"raw_bytes": 0, "sha256": None} for _ in sources]
    total_bytes = None
    if all(s.kind == "local" for s in sources):
        total_bytes = sum(s.raw_bytes() for s in sources)
    docs = Documents(names_path=scratch.names, per_source_filters=[Counter() for _ in sources])
    seen = SeenHashes()
    offset = 0
    start = time.perf_counter()
    bar = progress_bar(total_bytes, "prepare", progress, unit="B", unit_scale=True)
    # Validation sources first, so that a document in both keeps its validation copy.
    order = sorted(range(len(sources)), key=lambda i: not is_val_source[i])
    tasks = ((index, size, batch) for index in order for batch, size in _batches(sources[index], stats[index]))
    scratch_path = scratch.tokens if tokenizer is not None else scratch.text
    with bar, contextlib.closing(workers.map("process", tasks, tokenizer, dtype, bar)) as batches, \
            open(scratch_path, "wb") as scratch_file, open(scratch.signatures, "wb") as signature_file:
        for source_index, results in batches:
            for result in results:
                if result.replaced or result.reason == "decode_error":
                    docs.decode_problems += 1
                    if len(docs.decode_problem_files) < 100:
                        docs.decode_problem_files.append(result.name)
                reason = result.reason or (None if seen.add(result.hash) else "exact_duplicate")
                if reason is not None:
                    docs.filters[reason] += 1
                    docs.per_source_filters[source_index][reason] += 1
                    continue
                if result.tokens is None:
                    scratch_file.write(result.text)
                else:
                    result.tokens.tofile(scratch_file)
                    offset += len(result.tokens)
                if result.signature is not None:
                    result.signature.tofile(signature_file)
                docs.add(result.name, result.hash, source_index, result.n_bytes,
                         0 if result.tokens is None else len(result.tokens), result.signature is not None,
                         result.group)
            if offset:
                rate = offset / max(time.perf_counter() - start, 1e-9) / 1e6
                bar.set_postfix_str(f"{rate:.2f}M tok/s", refresh=False)
    docs.flush_names()
    if not len(docs):
        counts = ", ".join(f"{k}: {v}" for k, v in docs.filters.items()) or "no documents found"
        raise SlmError(f"every document was filtered out ({counts}); check the sources and --min-chars")
    return docs, stats


def _batches(source: Source, stats: dict) -> Iterator[tuple[list, int]]:
    """Batches of about BATCH_BYTES of the source's raw items, with their size; fills `stats`."""
    digest = hashlib.sha256()
    batch, size = [], 0
    for item in source.iter_items():
        data = item.data if isinstance(item.data, bytes) else item.data.encode("utf-8", "surrogatepass")
        digest.update(item.name.encode("utf-8", "surrogatepass") + b"\0" + data)
        stats["raw_bytes"] += len(data)
        batch.append(item)
        size += len(data)
        if size >= BATCH_BYTES:
            yield batch, size
            batch, size = [], 0
    if batch:
        yield batch, size
    stats["sha256"] = digest.hexdigest()
