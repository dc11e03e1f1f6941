"""`prepare`: sources in, a training-ready dataset directory out; and `train_tokenizer_on_sources`.

`prepare` runs these stages, each in its own module, in a temporary folder renamed into place at the end:
  collect.py     one pass over the sources: read, decode, clean, filter, hash, MinHash (and tokenize, for
                 a ready tokenizer) in worker processes (pool.py); the kept documents' contents go to
                 scratch files (documents.py)
  split.py       near-duplicate groups, then the split by group
  tokenizing.py  a tokenizer trained here ("bpe:N", "char") learns from the training side of the split
                 only; a second parallel pass then tokenizes the kept documents
  write.py       train.bin / val.bin from the scratch tokens; an unchanged dataset is reused instead, one
                 made from other inputs is refused without `force`
  meta.py        tokenizer health, leak check and meta.json

A lone text file (the nanoGPT habit: one input.txt) is one document, which a split by document cannot
divide: prepare cuts it at the paragraph break nearest to the asked share and holds out that contiguous
tail as validation (`_cut_tail`), and says so in the summary and in meta.json (split.tail).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from slmkit.data.clean import DocumentProcessor
from slmkit.data.collect import collect
from slmkit.data.documents import Scratch
from slmkit.data.loader import Dataset, open_dataset
from slmkit.data.meta import check_splits, dataset_meta
from slmkit.data.options import PrepareOptions
from slmkit.data.pool import Workers, default_workers
from slmkit.data.readers import TABLE_EXTENSIONS
from slmkit.data.sources import Source, resolve_source
from slmkit.data.split import FRACTION_TOLERANCE, assign_split, group_documents, repeat_counts
from slmkit.data.tokenizing import (
    TOKENIZER_MARKER,
    is_tokenizer_folder,
    save_tokenizer,
    tokenize_documents,
    train_on_texts,
    train_on_training_split,
    vocab_shortfall,
)
from slmkit.data.write import (
    PREPARE_MARKER,
    check_out_dir,
    dataset_inputs,
    fingerprint,
    input_paths,
    remove_stale_temporaries,
    write_splits,
)
from slmkit.errors import SlmError
from slmkit.tokenizer import Tokenizer, load_tokenizer, needs_training
from slmkit.utils import (
    atomic_dir,
    check_replaceable,
    dataclass_from_dict,
    output_errors,
    write_json_atomic,
    write_marker,
)


def prepare(sources, out_dir, tokenizer: str | os.PathLike | Tokenizer | None = None, *, val_sources=None,
            **options) -> Dataset:
    """Build the dataset directory `out_dir` from `sources` and return it opened (`Dataset`, with
    `.reused` True when an identical earlier result was kept).

    sources: source specs (see `slmkit.data.sources`: paths, globs, hf:NAME, built-ins, SPEC@WEIGHT).
    tokenizer: "gpt2" (default), "bpe:N" or "char" (trained here on the cleaned training documents only),
    a tokenizer directory or tokenizer.json, or a Tokenizer. val_sources: explicit validation sources
    instead of a share of the documents (training documents that are near-duplicates of them are dropped).
    options: the fields of `PrepareOptions` (val, seed, near_dup, encoding_errors, dtype, workers, force,
    progress, ...), each with its default and meaning there. Raises SlmError for anything the user can
    fix (an unknown option too), naming the value and the fix.
    """
    sources, val_sources = _as_list(sources), _as_list(val_sources)
    tokenizer = PrepareOptions.tokenizer if tokenizer is None else tokenizer
    name = tokenizer.name if isinstance(tokenizer, Tokenizer) else str(tokenizer)
    options = dataclass_from_dict(PrepareOptions, {**options, "tokenizer": name}, "prepare options")
    if not sources:
        raise SlmError("no sources given: name files, folders, globs, hf:NAME or a built-in")
    options.check(explicit_val=bool(val_sources))
    train_list = [resolve_source(str(s), options) for s in sources]
    val_list = [resolve_source(str(s), options) for s in val_sources]
    out_dir = Path(out_dir).expanduser()
    dataset_fingerprint = fingerprint(options, train_list, val_list, tokenizer)
    inputs = dataset_inputs(options, train_list, val_list)
    if check_out_dir(out_dir, dataset_fingerprint, inputs, input_paths(train_list + val_list, tokenizer),
                     options.force):
        dataset = open_dataset(out_dir)
        dataset.reused = True
        return dataset
    build_options, tail = options, None
    lone = _lone_text_file(train_list, val_list, options)
    if lone is not None:  # one document: a contiguous tail is the validation split; no near-duplicates to seek
        train_list, val_list, tail = _cut_tail(train_list[0], lone, options)
        build_options = dataclasses.replace(options, near_dup="off")
    local = [s for s in train_list + val_list if s.kind == "local"]
    needed = None
    if len(local) == len(train_list) + len(val_list):
        raw = sum(s.raw_bytes() for s in local)
        needed = f"up to about {2 * raw / 1e6:,.1f} MB while it is built (twice the size of the sources)"
    with output_errors(out_dir, "the dataset", needed=needed):
        remove_stale_temporaries(out_dir)
        with atomic_dir(out_dir) as tmp:
            meta = _build(build_options, train_list, val_list, tokenizer, tmp, tail)
            meta["inputs"] = inputs
            meta["fingerprint"] = dataset_fingerprint
            write_json_atomic(tmp / "meta.json", meta)
            Scratch(tmp).remove()
            write_marker(tmp, PREPARE_MARKER, "a dataset")
    return open_dataset(out_dir, scan_ids=False)  # the largest id was just counted while writing


def _lone_text_file(train: list[Source], val: list[Source], options: PrepareOptions) -> Path | None:
    """The one text file all training text comes from, when that is all there is to split (no validation
    sources, a share to hold out, no --doc-separator to cut it into documents); else None."""
    if val or options.doc_separator or not 0 < options.val < 1 or any(s.kind != "local" for s in train):
        return None
    paths = [path for source in train for path in source.paths]
    if len(paths) != 1 or paths[0].suffix.lower() in TABLE_EXTENSIONS or paths[0].stat().st_size < options.min_chars:
        return None  # (a file too short to be kept at all: the filters say so)
    return paths[0]


def _cut_tail(source: Source, path: Path, options: PrepareOptions) -> tuple[list[Source], list[Source], dict]:
    """Cut the one text file of `source` into a training head and a validation tail of about `options.val`
    of its bytes, at the paragraph break (else line break) nearest to that share within the split's
    tolerance; returns the two as sources and meta.json's split.tail."""
    size = path.stat().st_size
    target = round(size * (1 - options.val))
    reach = max(int(size * options.val * FRACTION_TOLERANCE), 1)
    low, high = max(target - reach, 1), min(target + reach, size - 1)
    with open(path, "rb") as f:
        f.seek(low)
        window = f.read(max(high - low, 0))
    cut, where = None, "character"
    for pattern, name in ((rb"\n[ \t\r]*\n", "paragraph break"), (rb"\n", "line break")):
        ends = [low + m.end() for m in re.finditer(pattern, window) if low + m.end() < size]
        if ends:
            cut, where = min(ends, key=lambda end: abs(end - target)), name
            break
    if cut is None:  # no line break near: cut at the target, at the start of a UTF-8 character
        cut = min(max(target, 1), size - 1)
        with open(path, "rb") as f:
            f.seek(cut)
            following = f.read(4)
        cut += next((i for i, byte in enumerate(following) if byte & 0xC0 != 0x80), 0)
    if size - cut < max(options.min_chars, 1) or cut <= 0:
        raise SlmError(f"{path} is one document of {size:,} bytes, too short to hold out {options.val:.0%} of it as "
                       "validation; give more text, a larger --val, or a validation source (--val SOURCE)")
    share = (size - cut) / size
    head = dataclasses.replace(source, byte_range=(0, cut), description=f"bytes 0-{cut:,} of {path} (training)")
    tail = dataclasses.replace(source, byte_range=(cut, size), weight=1.0,
                               description=f"the last {share:.1%} of {path}, from a {where} (validation)")
    info = {"file": str(path), "bytes": size, "cut_byte": cut, "cut_at": where, "val_share_of_bytes": round(share, 4)}
    return [head], [tail], info


def _build(options: PrepareOptions, train_sources: list[Source], val_sources: list[Source], tokenizer_arg,
           directory: Path, tail: dict | None = None) -> dict:
    """Run every stage in `directory`; return meta.json's content.

    A ready tokenizer tokenizes in the pass that reads the sources. One trained here learns from
    training text only: the pass keeps the cleaned text, the split is decided on its size in bytes,
    the tokenizer is trained on the training side, and then the kept documents are tokenized."""
    start = time.perf_counter()
    timings: dict[str, float] = {}
    sources = train_sources + val_sources
    is_val_source = [False] * len(train_sources) + [True] * len(val_sources)
    progress = sys.stderr.isatty() if options.progress == "auto" else bool(options.progress)
    workers = Workers(default_workers() if options.workers is None else max(1, int(options.workers)), options,
                      directory)
    scratch = Scratch(directory)
    trains = not isinstance(tokenizer_arg, Tokenizer) and needs_training(str(tokenizer_arg))
    tokenizer, trained_on, dtype = None, None, np.dtype("uint16")  # dtype: decided by the vocabulary
    shortfall = None
    if not trains:
        tokenizer = load_tokenizer(tokenizer_arg)
        dtype = save_tokenizer(tokenizer, directory, options.dtype)

    with _timed(timings, "read_clean_s" if trains else "read_clean_tokenize_s"):
        docs, source_stats = collect(sources, is_val_source, workers, tokenizer, dtype, scratch, progress)
    with _timed(timings, "near_dup_s"):
        roots, pairs = group_documents(docs, scratch, options.near_dup, options.near_dup_threshold)
    source_of = docs.column("source")
    dest, drops = assign_split(roots, docs.column("text_bytes" if trains else "tokens"),
                               np.array(is_val_source, dtype=bool)[source_of], docs.hash_array(), options.val,
                               options.seed, drop_near_duplicates=options.near_dup == "drop")
    docs.filters.update(drops)
    if trains:
        with _timed(timings, "tokenizer_training_s"):
            tokenizer, trained_on = train_on_training_split(docs, dest, scratch, str(tokenizer_arg), options,
                                                            progress)
        shortfall = vocab_shortfall(str(tokenizer_arg), tokenizer, trained_on)
        if shortfall and progress:
            print(f"warning: {shortfall}", file=sys.stderr)  # now, not only in the summary at the end
        dtype = save_tokenizer(tokenizer, directory, options.dtype)
        with _timed(timings, "tokenize_s"):
            tokenize_documents(docs, dest, tokenizer, dtype, scratch, workers, progress)
    with _timed(timings, "write_s"):
        repeats = repeat_counts(dest, np.array([s.weight for s in sources])[source_of], docs.hash_array())
        splits, per_source = write_splits(directory, scratch, docs, dest, repeats, dtype, len(sources))
    with _timed(timings, "reports_s"):
        health, leak, warnings = check_splits(directory, dtype, tokenizer, splits, pairs, dest)
    if shortfall:
        warnings.insert(0, shortfall)
    timings["total_s"] = round(time.perf_counter() - start, 3)
    return dataset_meta(
        options=options, tokenizer=tokenizer, trained_on=trained_on, dtype=dtype, sources=sources,
        is_val_source=is_val_source, source_stats=source_stats, docs=docs, roots=roots, pairs=pairs, dest=dest,
        splits=splits, per_source=per_source, health=health, leak=leak, warnings=warnings, timings=timings,
        workers=workers.count, tail=tail,
    )


def train_tokenizer_on_sources(sources, spec: str = "bpe:8192", out_dir=None, *, min_frequency: int = 2,
                               max_bytes: int | None = None, **options) -> Tokenizer:
    """Train tokenizer `spec` ("bpe:N" or "char") on the cleaned documents of `sources` and save it to
    `out_dir` when given.

    Sources are read and cleaned as `prepare` does; options: PrepareOptions' fields for that
    (SOURCE_FIELDS: encoding_errors, min_chars, doc_separator, extensions, text_field, ...) and
    chat_tokens. max_bytes: train on at most this many characters (default
    PrepareOptions.tokenizer_train_bytes); min_frequency: BPE's least count of a merged pair. A vocabulary
    smaller than asked (too little text) is said on stderr. `out_dir` is written atomically, and only when
    new, empty, or a tokenizer this function wrote there (`slmkit.utils.check_replaceable`). Raises
    SlmError for a bad spec, an unknown option or one that does not apply here, an output it may not
    replace, or one it cannot write."""
    sources = _as_list(sources)
    settings = dataclass_from_dict(PrepareOptions, options, "tokenizer training options")
    inapplicable = sorted(set(options) - set(PrepareOptions.SOURCE_FIELDS) - {"chat_tokens"})
    if inapplicable:
        raise SlmError(f"{', '.join(inapplicable)}: prepare options that do not apply to tokenizer training")
    if not sources:
        raise SlmError("no sources given to train the tokenizer on")
    if not needs_training(spec):
        raise SlmError(f"{spec!r} is not a trainable tokenizer spec; use bpe:VOCAB_SIZE or char")
    resolved = [resolve_source(str(s), settings) for s in sources]
    processor = DocumentProcessor(settings)
    texts = (text for source in resolved for item in source.iter_items()
             for _, text, reason, _ in processor.clean_texts(item) if reason is None)
    budget = settings.tokenizer_train_bytes if max_bytes is None else max_bytes
    if out_dir is not None:  # before training: a refusal should not cost the training time
        out_dir = Path(out_dir).expanduser()
        check_replaceable(out_dir, input_paths(resolved, None), kind="a tokenizer", marker=TOKENIZER_MARKER,
                          legacy_output=is_tokenizer_folder(out_dir))
    tokenizer, used = train_on_texts(texts, spec, budget, settings.chat_tokens, min_frequency=min_frequency)
    shortfall = vocab_shortfall(spec, tokenizer, used)
    if shortfall:
        print(f"warning: {shortfall}", file=sys.stderr)
    if out_dir is not None:
        with output_errors(out_dir, "the tokenizer"), atomic_dir(out_dir) as tmp:
            tokenizer.save(tmp)
            write_marker(tmp, TOKENIZER_MARKER, "a tokenizer")
    return tokenizer


def _as_list(sources) -> list:
    """A single spec (a string or path) as a one-element list; None as an empty one."""
    if isinstance(sources, (str, os.PathLike)):
        return [sources]
    return list(sources or [])


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str):
    """Record the seconds the block takes as timings[key] (rounded to milliseconds)."""
    start = time.perf_counter()
    yield
    timings[key] = round(time.perf_counter() - start, 3)
