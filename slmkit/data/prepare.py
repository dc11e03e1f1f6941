"""`prepare`: sources in, a training-ready dataset directory out.

One streaming pass reads the sources and hands batches to worker processes that decode, clean, filter,
hash, MinHash and tokenize; the main process keeps the first copy of each exact duplicate and appends
its tokens to a scratch file. Then near-duplicates are grouped, groups are split between train and
validation, the scratch tokens are copied into train.bin / val.bin, and the tokenizer health and leak
reports go into meta.json. A tokenizer trained here ("bpe:N", "char") must learn from training text
only (validation numbers would flatter it otherwise), so then the pass keeps the cleaned text in a
scratch file instead of tokens, the split comes first, the tokenizer is trained on the training side,
and a second parallel pass tokenizes the kept text. Everything is written in a temporary directory
renamed into place at the end, so an interrupted or failed run leaves no half dataset behind; a run
whose inputs match the existing dataset's fingerprint reuses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import multiprocessing
import os
import platform
import shutil
import sys
import time
from array import array
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from slmkit.data.clean import FILTERS, CleanOptions, DocumentProcessor, init_worker, run_in_worker
from slmkit.data.dedup import DEFAULT_THRESHOLD, NUM_PERM, UnionFind, near_duplicate_pairs
from slmkit.data.leak import leak_check
from slmkit.data.sources import TEXT_EXTENSIONS, Source, SourceOptions, resolve_source
from slmkit.data.split import TRAIN, assign_split, repeat_counts
from slmkit.errors import SlmError
from slmkit.tokenizer import Tokenizer, load_tokenizer, needs_training, tokenizer_health, train_tokenizer
from slmkit.tokenizer.base import MANIFEST, write_json_atomic
from slmkit.tokenizer.char import CharTokenizer

FORMAT = "slmkit-dataset"
VERSION = 1
BATCH_BYTES = 256 << 10  # per task sent to a worker: small enough to balance the load at the end
WRITE_TOKENS = 1 << 22
NEAR_DUP_MODES = ("group", "drop", "off")


@dataclass(frozen=True)
class PrepareOptions:
    """Everything besides the sources and the output directory that shapes a dataset (its fingerprint)."""

    tokenizer: str = "gpt2"
    val: float = 0.05  # a fraction (0 < val < 1) of the tokens, or a number of documents (>= 1)
    seed: int = 1337
    near_dup: str = "group"  # group: near-duplicates share a side of the split; drop: keep one; off
    near_dup_threshold: float = DEFAULT_THRESHOLD
    encoding_errors: str = "strict"
    min_chars: int = 32
    max_line_chars: int = 20_000
    doc_separator: str | None = None
    extensions: tuple[str, ...] = TEXT_EXTENSIONS
    text_field: str = "text"
    hf_split: str = "train"
    max_documents: int | None = None
    dtype: str | None = None
    chat_tokens: bool = False
    tokenizer_train_bytes: int = 1 << 30


def prepare(
    sources,
    out_dir,
    tokenizer="gpt2",
    *,
    val: float = 0.05,
    val_sources=None,
    seed: int = 1337,
    near_dup: str = "group",
    near_dup_threshold: float = DEFAULT_THRESHOLD,
    encoding_errors: str = "strict",
    min_chars: int = 32,
    max_line_chars: int = 20_000,
    doc_separator: str | None = None,
    extensions=None,
    text_field: str = "text",
    hf_split: str = "train",
    max_documents: int | None = None,
    dtype: str | None = None,
    chat_tokens: bool = False,
    tokenizer_train_bytes: int = 1 << 30,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
):
    """Build the dataset directory `out_dir` from `sources` and return it opened (`Dataset`, with
    `.reused` True when an identical earlier result was kept).

    sources: source specs (see `slmkit.data.sources`: paths, globs, hf:NAME, built-ins, SPEC@WEIGHT).
    tokenizer: "gpt2", "bpe:N" or "char" (trained here on the cleaned training documents only, at most
    `tokenizer_train_bytes` characters; a trained "char" gets an `<|unk|>` id for characters only
    validation text holds), a tokenizer directory or tokenizer.json, or a Tokenizer. val: fraction of
    tokens for validation (of UTF-8 bytes when the tokenizer is trained here, since the split comes
    first), or a number of documents; val_sources: explicit validation sources instead (training
    documents that are near-duplicates of them are dropped). near_dup: "group" keeps near-duplicates on one side, "drop"
    keeps one of each group, "off" skips the check. encoding_errors: "strict" (stop), "replace", "skip".
    dtype: "uint16"/"uint32", default by vocabulary size. workers: tokenizing processes (default: the
    usable cores not busy with other work, see `default_workers`). Raises SlmError for anything the user can fix, naming the value and the fix.
    """
    from slmkit.data.loader import open_dataset

    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    val_sources = [val_sources] if isinstance(val_sources, (str, os.PathLike)) else list(val_sources or [])
    options = PrepareOptions(
        tokenizer=tokenizer.name if isinstance(tokenizer, Tokenizer) else str(tokenizer),
        val=val, seed=seed, near_dup=near_dup, near_dup_threshold=near_dup_threshold,
        encoding_errors=encoding_errors, min_chars=min_chars, max_line_chars=max_line_chars,
        doc_separator=doc_separator, extensions=tuple(extensions or TEXT_EXTENSIONS), text_field=text_field,
        hf_split=hf_split, max_documents=max_documents, dtype=dtype, chat_tokens=chat_tokens,
        tokenizer_train_bytes=tokenizer_train_bytes,
    )
    _validate(options, sources, val_sources)
    source_options = SourceOptions(options.extensions, text_field, hf_split, max_documents)
    train_list = [resolve_source(str(s), source_options) for s in sources]
    val_list = [resolve_source(str(s), source_options) for s in val_sources]
    out_dir = Path(out_dir).expanduser()
    fingerprint = _fingerprint(options, train_list, val_list, tokenizer)
    if not force and _reusable(out_dir, fingerprint):
        dataset = open_dataset(out_dir)
        dataset.reused = True
        return dataset
    _check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{os.urandom(3).hex()}"
    tmp.mkdir()
    try:
        meta = _Builder(options, train_list, val_list, tokenizer, tmp, workers, progress).build()
        meta["fingerprint"] = fingerprint
        write_json_atomic(tmp / "meta.json", meta)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dataset = open_dataset(out_dir)
    dataset.reused = False
    return dataset


def _validate(options: PrepareOptions, sources, val_sources) -> None:
    if not sources:
        raise SlmError("no sources given: name files, folders, globs, hf:NAME or a built-in")
    if options.encoding_errors not in ("strict", "replace", "skip"):
        raise SlmError(f"encoding_errors must be strict, replace or skip, not {options.encoding_errors!r}")
    if options.near_dup not in NEAR_DUP_MODES:
        raise SlmError(f"near_dup must be one of {', '.join(NEAR_DUP_MODES)}, not {options.near_dup!r}")
    if not 0 < options.near_dup_threshold <= 1:
        raise SlmError(f"near-duplicate threshold must be in (0, 1], not {options.near_dup_threshold}")
    if not val_sources and not (0 < options.val < 1 or (options.val >= 1 and float(options.val).is_integer())):
        raise SlmError(
            f"val must be a fraction between 0 and 1 or a whole number of documents, not {options.val}; "
            "or give validation sources with --val-source"
        )
    if options.dtype not in (None, "uint16", "uint32"):
        raise SlmError(f"dtype must be uint16 or uint32, not {options.dtype!r}")
    if options.min_chars < 0:
        raise SlmError(f"min_chars must be >= 0, not {options.min_chars}")


def _fingerprint(options: PrepareOptions, train: list[Source], val: list[Source], tokenizer) -> str:
    tokenizer_id = options.tokenizer
    if isinstance(tokenizer, Tokenizer):
        tokenizer_id = None  # an in-memory tokenizer cannot be fingerprinted cheaply: never reuse
    elif Path(str(tokenizer)).exists():
        path = Path(str(tokenizer))
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        tokenizer_id = [str(path)] + [hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()]
    if tokenizer_id is None:
        return os.urandom(16).hex()
    inputs = {
        "format": FORMAT, "version": VERSION, "options": asdict(options), "tokenizer": tokenizer_id,
        "train": [(s.fingerprint(), s.weight) for s in train], "val": [s.fingerprint() for s in val],
    }
    if needs_training(tokenizer):
        # Not reused: a dataset from before prepare trained tokenizers on the training split only.
        inputs["tokenizer_trained_on"] = "train"
    blob = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _reusable(out_dir: Path, fingerprint: str) -> bool:
    try:
        meta = json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if meta.get("fingerprint") != fingerprint:
        return False
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in ("train", "val"):
        path = out_dir / f"{split}.bin"
        if not path.is_file() or path.stat().st_size != meta["splits"][split]["tokens"] * itemsize:
            return False
    return True


def _is_dataset(path: Path) -> bool:
    try:
        return json.loads((path / "meta.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise SlmError(f"output {out_dir} exists and is a file; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_dataset(out_dir):
        raise SlmError(f"output folder {out_dir} is not empty and holds no slmkit dataset; choose another --out")


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Remove scratch folders of earlier runs of this output that were killed (their process is gone)."""
    for path in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        try:
            pid = int(path.name.rsplit(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError, IndexError):
            continue


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    for scratch in ("scratch_text.bin", "scratch_tokens.bin", "scratch_signatures.bin"):
        (tmp / scratch).unlink(missing_ok=True)
    if out_dir.is_dir():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{os.urandom(3).hex()}"
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def _train_on(texts, spec: str, budget: int, chat_tokens: bool, min_frequency: int = 2,
              progress: bool = False) -> tuple[Tokenizer, dict]:
    """Train tokenizer `spec` on `texts` (cleaned documents, in order) until `budget` characters are
    taken; return it and what it learned from, {"documents": N, "bytes": UTF-8 bytes}."""
    used = {"documents": 0, "bytes": 0}
    check: list[str] = []

    def within_budget():
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
    tokenizer = train_tokenizer(itertools.chain([first], corpus), spec, chat_tokens=chat_tokens,
                                min_frequency=min_frequency, check_texts=check, progress=progress)
    return tokenizer, used


def train_tokenizer_on_sources(
    sources,
    spec: str = "bpe:8192",
    out_dir=None,
    *,
    chat_tokens: bool = False,
    min_frequency: int = 2,
    max_bytes: int = 1 << 30,
    encoding_errors: str = "strict",
    min_chars: int = 32,
    doc_separator: str | None = None,
    extensions=None,
    text_field: str = "text",
    hf_split: str = "train",
) -> Tokenizer:
    """Train tokenizer `spec` ("bpe:N" or "char") on the cleaned documents of `sources` (same specs and
    cleaning as `prepare`, at most `max_bytes` characters) and save it to `out_dir` when given."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise SlmError("no sources given to train the tokenizer on")
    if not needs_training(spec):
        raise SlmError(f"{spec!r} is not a trainable tokenizer spec; use bpe:VOCAB_SIZE or char")
    options = SourceOptions(tuple(extensions or TEXT_EXTENSIONS), text_field, hf_split)
    resolved = [resolve_source(str(s), options) for s in sources]
    clean = CleanOptions(encoding_errors=encoding_errors, min_chars=min_chars, doc_separator=doc_separator,
                         text_field=text_field, near_dup=False)
    processor = DocumentProcessor(clean)
    texts = (text for source in resolved for item in source.iter_items()
             for _, text, reason, _ in processor.clean_texts(item) if reason is None)
    tokenizer, _ = _train_on(texts, spec, max_bytes, chat_tokens, min_frequency)
    if out_dir is not None:
        out_dir = Path(out_dir)
        if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
            raise SlmError(f"{out_dir} is not empty and holds no slmkit tokenizer; choose another --out")
        tokenizer.save(out_dir)
    return tokenizer


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers() -> int:
    """Tokenizing processes when none are asked for: the usable cores not already busy (cores minus the
    1-minute load average, at least 1). On a machine other jobs keep busy, extra processes only add
    start-up, copying and switching; 1 means the main process does the work itself."""
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


@dataclass
class _Documents:
    """Columns of the kept documents (one entry each, in corpus order) and the pass's counts."""

    names: list[str] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    source: array = field(default_factory=lambda: array("q"))  # source index
    # offset and tokens are 0 until `_tokenize` when the tokenizer is trained after the split
    offset: array = field(default_factory=lambda: array("q"))  # first token in the scratch file
    tokens: array = field(default_factory=lambda: array("q"))  # tokens, end-of-text included
    text_bytes: array = field(default_factory=lambda: array("q"))  # UTF-8 bytes of the text
    signature_row: array = field(default_factory=lambda: array("q"))  # row in the signature file, or -1
    group: dict[int, str] = field(default_factory=dict)  # pieces of one large file
    n_signatures: int = 0
    filters: Counter = field(default_factory=Counter)
    per_source_filters: list[Counter] = field(default_factory=list)
    decode_problems: int = 0
    decode_problem_files: list[str] = field(default_factory=list)


class _Builder:
    """One run of prepare; holds the per-document table while it is built."""

    def __init__(self, options, train_sources, val_sources, tokenizer, tmp: Path, workers, progress):
        self.options = options
        self.sources: list[Source] = train_sources + val_sources
        self.is_val_source = [False] * len(train_sources) + [True] * len(val_sources)
        self.tokenizer_arg = tokenizer
        self.tmp = tmp
        self.workers = default_workers() if workers is None else max(1, int(workers))
        self.progress = progress and sys.stderr.isatty() if progress == "auto" else bool(progress)
        self.clean = CleanOptions(
            encoding_errors=options.encoding_errors, min_chars=options.min_chars,
            max_line_chars=options.max_line_chars, doc_separator=options.doc_separator,
            text_field=options.text_field, near_dup=options.near_dup != "off",
        )
        self.dtype = np.dtype("uint16")  # of the tokens; decided by the vocabulary size in `_use_tokenizer`
        self.warnings: list[str] = []
        self.timings: dict[str, float] = {}

    # ---- tokenizer ----

    def _use_tokenizer(self, tokenizer: Tokenizer) -> Tokenizer:
        """Save `tokenizer` into the scratch folder (spawned workers load it from there) and choose the
        token dtype for its vocabulary."""
        tokenizer.save(self.tmp)
        vocab_size = tokenizer.vocab_size
        if self.options.dtype == "uint16" and vocab_size > 65536:
            raise SlmError(f"vocab size {vocab_size} does not fit uint16 tokens; use --dtype uint32")
        self.dtype = np.dtype(self.options.dtype or ("uint16" if vocab_size <= 65536 else "uint32"))
        return tokenizer

    def _train_tokenizer(self, docs: _Documents, dest: np.ndarray) -> tuple[Tokenizer, dict]:
        """Train the asked tokenizer on the training documents of the split only (never on validation
        documents or their near-duplicates), at most `tokenizer_train_bytes` characters; return it and
        meta.json's `trained_on`."""
        start = time.perf_counter()
        spec = str(self.tokenizer_arg)
        texts = (data.decode("utf-8", "surrogatepass")
                 for _, data in self._scratch_texts(docs, np.flatnonzero(dest == TRAIN)))
        tokenizer, used = _train_on(texts, spec, self.options.tokenizer_train_bytes, self.options.chat_tokens,
                                    progress=self.progress)
        if isinstance(tokenizer, CharTokenizer):
            # Validation text may hold characters training text lacks: they encode as <|unk|>.
            tokenizer = CharTokenizer(tokenizer.chars, name=tokenizer.name, unknown=True)
        self.timings["tokenizer_training_s"] = round(time.perf_counter() - start, 3)
        return tokenizer, {"split": "train", **used}

    def _scratch_texts(self, docs: _Documents, indices):
        """(document index, its cleaned UTF-8 text) for each of `indices`, from the scratch text file."""
        n_bytes = np.frombuffer(docs.text_bytes, dtype=np.int64)
        starts = np.cumsum(n_bytes) - n_bytes
        text = np.memmap(self.tmp / "scratch_text.bin", dtype=np.uint8, mode="r")
        for i in indices:
            yield int(i), text[starts[i] : starts[i] + n_bytes[i]].tobytes()

    # ---- the pass over the sources ----

    def _batches(self, source: Source, stats: dict):
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

    def _results(self, tokenizer: Tokenizer | None, total_bytes: int | None):
        """Yield (source index, DocResult) in corpus order; with `tokenizer` None the results carry the
        cleaned text instead of tokens."""
        from tqdm import tqdm

        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare", disable=not self.progress,
                        smoothing=0.1, dynamic_ncols=True)
        # Validation sources first, so that a document in both keeps its validation copy.
        order = sorted(range(len(self.sources)), key=lambda i: not self.is_val_source[i])
        tasks = ((index, size, batch) for index in order
                 for batch, size in self._batches(self.sources[index], self.source_stats[index]))
        with self.bar, contextlib.closing(self._map("process", tasks, tokenizer, self.bar)) as batches:
            for index, results in batches:
                for result in results:
                    yield index, result

    def _map(self, method: str, tasks, tokenizer: Tokenizer | None, bar):
        """Yield (key, `DocumentProcessor.<method>(batch)`) for each (key, size, batch) of `tasks`, in
        order, advancing `bar` by size. Worker processes do the work, at most 2 batches each in flight."""
        pool = None
        if self.workers > 1:
            start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            # Forked workers inherit the loaded tokenizer; spawned ones load it from the scratch folder.
            shared = tokenizer if start_method == "fork" or tokenizer is None else str(self.tmp)
            pool = multiprocessing.get_context(start_method).Pool(
                self.workers, initializer=init_worker, initargs=(self.clean, shared, self.dtype.name)
            )
        local = getattr(DocumentProcessor(self.clean, tokenizer, self.dtype), method)
        try:
            pending: deque = deque()
            for count, (key, size, batch) in enumerate(tasks, 1):
                # The main process takes every (workers + 1)-th batch itself rather than wait idle.
                if pool is None or count % (self.workers + 1) == 0:
                    pending.append((key, size, local(batch)))
                else:
                    pending.append((key, size, pool.apply_async(run_in_worker, (method, batch))))
                while len(pending) > (2 * self.workers if pool else 0):
                    yield self._drain(pending.popleft(), bar)
            while pending:
                yield self._drain(pending.popleft(), bar)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()

    @staticmethod
    def _drain(entry, bar):
        key, size, results = entry
        if not isinstance(results, list):
            results = results.get()
        bar.update(size)
        return key, results

    def build(self) -> dict:
        """Run every stage in the scratch folder; return meta.json's content.

        A ready tokenizer tokenizes in the pass that reads the sources. One trained here learns from
        training text only: the pass keeps the cleaned text, the split is decided on its size in bytes,
        the tokenizer is trained on the training side, and then the kept documents are tokenized."""
        start = time.perf_counter()
        arg = self.tokenizer_arg
        trains = not isinstance(arg, Tokenizer) and needs_training(str(arg))
        tokenizer = None if trains else self._use_tokenizer(load_tokenizer(arg))
        docs = self._collect(tokenizer)
        roots, pairs = self._group(docs)
        sources = np.frombuffer(docs.source, dtype=np.int64)
        is_val_doc = np.array(self.is_val_source, dtype=bool)[sources]
        sizes = np.frombuffer(docs.text_bytes if trains else docs.tokens, dtype=np.int64)
        dest, split_counts = assign_split(roots, sizes, is_val_doc, docs.hashes, self.options.val,
                                          self.options.seed, drop_near_duplicates=self.options.near_dup == "drop")
        docs.filters.update(split_counts)
        trained_on = None
        if trains:
            tokenizer, trained_on = self._train_tokenizer(docs, dest)
            self._use_tokenizer(tokenizer)
            self._tokenize(docs, dest, tokenizer)
        t0 = time.perf_counter()
        weights = np.array([s.weight for s in self.sources])[sources]
        repeats = repeat_counts(dest, weights, docs.hashes)
        splits, per_source = self._write(dest, repeats, docs.offset, docs.tokens, docs.text_bytes, sources)
        self.timings["write_s"] = round(time.perf_counter() - t0, 3)
        health, leak = self._reports(tokenizer, splits, pairs, dest)
        self.timings["total_s"] = round(time.perf_counter() - start, 3)
        return self._meta(tokenizer, trained_on, docs, roots, pairs, dest, splits, per_source, health, leak)

    def _collect(self, tokenizer: Tokenizer | None) -> _Documents:
        """The pass over the sources: filter counts, and per kept document its scratch tokens (its
        cleaned text when `tokenizer` is None), signature and hash (the first of each exact duplicate
        kept)."""
        self.source_stats = [{"raw_bytes": 0, "sha256": None} for _ in self.sources]
        total_bytes = None
        if all(s.kind == "local" for s in self.sources):
            total_bytes = sum(p.stat().st_size for s in self.sources for p in s.paths)
        docs = _Documents(per_source_filters=[Counter() for _ in self.sources])
        seen: set[bytes] = set()
        offset = 0
        start = time.perf_counter()
        scratch = "scratch_tokens.bin" if tokenizer is not None else "scratch_text.bin"
        with open(self.tmp / scratch, "wb") as scratch_file, \
                open(self.tmp / "scratch_signatures.bin", "wb") as sig_file:
            for source_index, result in self._results(tokenizer, total_bytes):
                if result.replaced or result.reason == "decode_error":
                    docs.decode_problems += 1
                    if len(docs.decode_problem_files) < 100:
                        docs.decode_problem_files.append(result.name)
                reason = result.reason or ("exact_duplicate" if result.hash in seen else None)
                if reason is not None:
                    docs.filters[reason] += 1
                    docs.per_source_filters[source_index][reason] += 1
                    continue
                seen.add(result.hash)
                if result.group is not None:
                    docs.group[len(docs.names)] = result.group
                docs.names.append(result.name)
                docs.hashes.append(result.hash)
                docs.source.append(source_index)
                docs.text_bytes.append(result.n_bytes)
                if result.tokens is None:
                    scratch_file.write(result.text)
                    docs.offset.append(0)
                    docs.tokens.append(0)
                else:
                    docs.offset.append(offset)
                    docs.tokens.append(len(result.tokens))
                    result.tokens.tofile(scratch_file)
                    offset += len(result.tokens)
                if result.signature is not None:
                    result.signature.tofile(sig_file)
                    docs.signature_row.append(docs.n_signatures)
                    docs.n_signatures += 1
                else:
                    docs.signature_row.append(-1)
                if offset:
                    rate = offset / max(time.perf_counter() - start, 1e-9) / 1e6
                    self.bar.set_postfix_str(f"{rate:.2f}M tok/s", refresh=False)
        self.timings["read_clean_tokenize_s" if tokenizer is not None else "read_clean_s"] = \
            round(time.perf_counter() - start, 3)
        if not docs.names:
            counts = ", ".join(f"{k}: {v}" for k, v in docs.filters.items()) or "no documents found"
            raise SlmError(f"every document was filtered out ({counts}); check the sources and --min-chars")
        return docs

    def _tokenize(self, docs: _Documents, dest: np.ndarray, tokenizer: Tokenizer) -> None:
        """Tokenize the kept documents' text from the scratch text file (worker processes, corpus order)
        into the scratch token file, filling `docs.offset` and `docs.tokens`; then drop the text file."""
        from tqdm import tqdm

        start = time.perf_counter()
        kept = np.flatnonzero(dest >= 0)

        def tasks():
            indices, batch, size = [], [], 0
            for i, data in self._scratch_texts(docs, kept):
                indices.append(i)
                batch.append(data)
                size += len(data)
                if size >= BATCH_BYTES:
                    yield indices, size, batch
                    indices, batch, size = [], [], 0
            if batch:
                yield indices, size, batch

        total = int(np.frombuffer(docs.text_bytes, dtype=np.int64)[kept].sum())
        offset = 0
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenize", disable=not self.progress,
                   smoothing=0.1, dynamic_ncols=True)
        with bar, contextlib.closing(self._map("tokenize", tasks(), tokenizer, bar)) as batches, \
                open(self.tmp / "scratch_tokens.bin", "wb") as token_file:
            for indices, results in batches:
                for i, tokens in zip(indices, results):
                    docs.offset[i] = offset
                    docs.tokens[i] = len(tokens)
                    tokens.tofile(token_file)
                    offset += len(tokens)
                bar.set_postfix_str(f"{offset / max(time.perf_counter() - start, 1e-9) / 1e6:.2f}M tok/s",
                                    refresh=False)
        (self.tmp / "scratch_text.bin").unlink()
        self.timings["tokenize_s"] = round(time.perf_counter() - start, 3)

    def _group(self, docs: _Documents) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
        """Union-find roots of the documents (near-duplicates, and pieces of one large file, share a
        root) and the near-duplicate pairs (document a, document b, estimated Jaccard)."""
        start = time.perf_counter()
        n = len(docs.names)
        union = UnionFind(n)
        pairs = []
        if self.options.near_dup != "off" and docs.n_signatures > 1:
            signatures = np.memmap(self.tmp / "scratch_signatures.bin", dtype=np.uint32, mode="r",
                                   shape=(docs.n_signatures, NUM_PERM))
            owner = np.flatnonzero(np.frombuffer(docs.signature_row, dtype=np.int64) >= 0)
            for a, b, similarity in near_duplicate_pairs(signatures, self.options.near_dup_threshold):
                da, db = int(owner[a]), int(owner[b])
                union.union(da, db)
                pairs.append((da, db, similarity))
            del signatures
        first_of_group: dict[str, int] = {}
        for doc, key in docs.group.items():
            union.union(first_of_group.setdefault(key, doc), doc)
        self.timings["near_dup_s"] = round(time.perf_counter() - start, 3)
        return union.roots().astype(np.int64), pairs

    def _reports(self, tokenizer, splits, pairs, dest) -> tuple[dict, dict]:
        """Tokenizer health and leak check on the written splits; their warnings join self.warnings."""
        start = time.perf_counter()
        train = np.memmap(self.tmp / "train.bin", dtype=self.dtype, mode="r")
        val = np.memmap(self.tmp / "val.bin", dtype=self.dtype, mode="r")
        health = tokenizer_health(
            tokenizer, {name: {**splits[name], "tokens": arr} for name, arr in (("train", train), ("val", val))},
            sample_text=tokenizer.decode(np.asarray(train[:30_000])),
        )
        train_bpt = splits["train"]["bytes"] / max(splits["train"]["tokens"] - splits["train"]["documents"], 1)
        leak = leak_check(train, val, tokenizer.eot_id, train_bpt)
        leak["near_duplicate_pairs_across_split"] = sum(
            1 for a, b, _ in pairs if dest[a] >= 0 and dest[b] >= 0 and dest[a] != dest[b]
        )
        del train, val
        self.warnings += health["warnings"]
        if leak["warning"]:
            self.warnings.append(leak["warning"])
        self.timings["reports_s"] = round(time.perf_counter() - start, 3)
        return health, leak

    def _meta(self, tokenizer, trained_on, docs, roots, pairs, dest, splits, per_source, health, leak) -> dict:
        options = self.options
        if docs.decode_problems:
            self.warnings.append(f"{docs.decode_problems} documents had invalid UTF-8 (policy {options.encoding_errors})")
        for split in splits.values():  # all tokens, separators included: what bits per byte divides by
            split["bytes_per_token"] = round(split["bytes"] / split["tokens"], 6) if split["tokens"] else None
        group_sizes = np.bincount(roots, minlength=len(roots))
        examples = [{"a": docs.names[a], "b": docs.names[b], "similarity": round(similarity, 3)}
                    for a, b, similarity in sorted(pairs, key=lambda p: -p[2])[:20]]
        explicit_val = any(self.is_val_source)
        filters = docs.filters
        return {
            "format": FORMAT,
            "version": VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tokenizer": {
                "name": tokenizer.name, "kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                "eot_id": tokenizer.eot_id, "pad_id": tokenizer.pad_id, "files": MANIFEST,
                "tiktoken": bool(getattr(tokenizer, "uses_tiktoken", False)),
                "trained_on": trained_on,  # None for a ready tokenizer; else {"split": "train", ...}
            },
            "vocab_size": tokenizer.vocab_size,
            "dtype": self.dtype.name,
            "eot_id": tokenizer.eot_id,
            "document_separator": "eot appended after every document",
            "splits": splits,
            "sources": [
                {
                    "spec": s.spec, "kind": s.kind, "description": s.description, "weight": s.weight,
                    "role": "val" if self.is_val_source[i] else ("train" if explicit_val else "train+val"),
                    "files": len(s.paths) if s.kind == "local" else None, "raw_bytes": self.source_stats[i]["raw_bytes"],
                    "sha256": self.source_stats[i]["sha256"], "filters": dict(docs.per_source_filters[i]),
                    **per_source[i],
                }
                for i, s in enumerate(self.sources)
            ],
            "filters": {
                **{name: int(filters.get(name, 0)) for name in FILTERS},
                "exact_duplicate": int(filters.get("exact_duplicate", 0)),
                "near_duplicate_dropped": int(filters.get("near_duplicate_dropped", 0)),
                "near_duplicate_of_val": int(filters.get("near_duplicate_of_val", 0)),
                "documents_kept": int((dest >= 0).sum()),
                "decode_problem_files": docs.decode_problem_files,
                "settings": {
                    "encoding_errors": options.encoding_errors, "min_chars": options.min_chars,
                    "max_line_chars": options.max_line_chars, "doc_separator": options.doc_separator,
                },
            },
            "near_duplicates": {
                "mode": options.near_dup, "threshold": options.near_dup_threshold, "method": (
                    f"MinHash ({NUM_PERM} one-permutation bins) over 10-character shingles of a spelling-"
                    "insensitive skeleton, LSH candidates confirmed by estimated Jaccard"),
                "pairs": len(pairs), "groups": int((group_sizes > 1).sum()),
                "documents_in_groups": int(group_sizes[group_sizes > 1].sum()), "examples": examples,
            },
            "split": {
                "method": "explicit validation sources" if explicit_val else "by group of near-duplicate documents",
                "seed": options.seed, "val": options.val,
                "val_documents_names": [docs.names[i] for i in np.flatnonzero(dest == 1)[:1000]],
            },
            "health": health,
            "leak_check": leak,
            "warnings": self.warnings,
            "timings": self.timings,
            "machine": {"python": platform.python_version(), "platform": platform.platform(), "workers": self.workers},
        }

    def _write(self, dest, repeats, offsets, lengths, doc_bytes, sources):
        scratch = np.memmap(self.tmp / "scratch_tokens.bin", dtype=self.dtype, mode="r") \
            if (self.tmp / "scratch_tokens.bin").stat().st_size else np.empty(0, self.dtype)
        splits = {name: {"documents": 0, "tokens": 0, "bytes": 0} for name in ("train", "val")}
        per_source = [{"train_documents": 0, "val_documents": 0, "train_tokens": 0, "val_tokens": 0}
                      for _ in self.sources]
        with open(self.tmp / "train.bin", "wb") as train_file, open(self.tmp / "val.bin", "wb") as val_file:
            files = {0: train_file, 1: val_file}
            n = len(dest)
            i = 0
            while i < n:
                d, r = int(dest[i]), int(repeats[i])
                if d < 0 or r == 0:
                    i += 1
                    continue
                j = i + 1  # extend a run of consecutive documents that go to the same place once
                while j < n and dest[j] == d and repeats[j] == 1 and r == 1 and offsets[j] == offsets[j - 1] + lengths[j - 1]:
                    j += 1
                run = scratch[offsets[i] : offsets[j - 1] + lengths[j - 1]]
                for _ in range(r):
                    for piece in range(0, len(run), WRITE_TOKENS):  # bounded memory for long runs
                        files[d].write(memoryview(np.ascontiguousarray(run[piece : piece + WRITE_TOKENS])))
                name = "train" if d == 0 else "val"
                for k in range(i, j):
                    splits[name]["documents"] += r
                    splits[name]["tokens"] += r * lengths[k]
                    splits[name]["bytes"] += r * doc_bytes[k]
                    per_source[sources[k]][f"{name}_documents"] += r
                    per_source[sources[k]][f"{name}_tokens"] += r * lengths[k]
                i = j
        del scratch
        return splits, per_source
