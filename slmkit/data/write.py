"""The dataset directory on disk: train.bin / val.bin copied from the scratch tokens in bounded pieces,
the output folder checked and cleared of scratch folders of killed runs, and the fingerprint that lets
a run with unchanged inputs reuse the existing directory.

The directory itself is built in a temporary folder beside it and renamed into place at the end
(`slmkit.utils.atomic_dir`), so a failed or interrupted run leaves no half dataset behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from slmkit.data.documents import Documents, Scratch
from slmkit.data.loader import FORMAT, SPLITS, VERSION, read_meta
from slmkit.data.options import PrepareOptions
from slmkit.data.sources import Source
from slmkit.errors import SlmError
from slmkit.tokenizer import Tokenizer, needs_training

WRITE_TOKENS = 1 << 22  # tokens copied at a time: memory stays bounded for long runs of documents


def write_splits(directory: Path, scratch: Scratch, docs: Documents, dest: np.ndarray, repeats: np.ndarray,
                 dtype: np.dtype, n_sources: int) -> tuple[dict, list[dict]]:
    """Write train.bin and val.bin in `directory`: each kept document's tokens from the scratch file,
    `repeats` times, in corpus order. Returns the counts per split {"documents", "tokens", "bytes"} and
    per source {"train_documents", "val_documents", "train_tokens", "val_tokens"}."""
    scratch_tokens = scratch.token_array(dtype)
    # Python ints from the arrays (numpy ints would not go into meta.json)
    offsets, lengths, doc_bytes, sources = docs.offset, docs.tokens, docs.text_bytes, docs.source
    splits = {name: {"documents": 0, "tokens": 0, "bytes": 0} for name in SPLITS}
    per_source = [{"train_documents": 0, "val_documents": 0, "train_tokens": 0, "val_tokens": 0}
                  for _ in range(n_sources)]
    with open(directory / "train.bin", "wb") as train_file, open(directory / "val.bin", "wb") as val_file:
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
            run = scratch_tokens[offsets[i] : offsets[j - 1] + lengths[j - 1]]
            for _ in range(r):
                for piece in range(0, len(run), WRITE_TOKENS):
                    files[d].write(memoryview(np.ascontiguousarray(run[piece : piece + WRITE_TOKENS])))
            name = SPLITS[d]
            for k in range(i, j):
                splits[name]["documents"] += r
                splits[name]["tokens"] += r * lengths[k]
                splits[name]["bytes"] += r * doc_bytes[k]
                per_source[sources[k]][f"{name}_documents"] += r
                per_source[sources[k]][f"{name}_tokens"] += r * lengths[k]
            i = j
    del scratch_tokens
    return splits, per_source


def fingerprint(options: PrepareOptions, train: list[Source], val: list[Source], tokenizer) -> str:
    """A hash of everything that shapes the dataset: options, sources (names, sizes, modification
    times), tokenizer (its files' hashes for a tokenizer on disk). Random for an in-memory Tokenizer,
    which cannot be fingerprinted cheaply: such a dataset is never reused."""
    tokenizer_id = options.tokenizer
    if isinstance(tokenizer, Tokenizer):
        return os.urandom(16).hex()
    if Path(str(tokenizer)).exists():
        path = Path(str(tokenizer))
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        tokenizer_id = [str(path)] + [hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()]
    inputs = {
        "format": FORMAT, "version": VERSION, "options": options.dataset_fields(), "tokenizer": tokenizer_id,
        "train": [(s.fingerprint(), s.weight) for s in train], "val": [s.fingerprint() for s in val],
    }
    if needs_training(tokenizer):
        # Not reused: a dataset from before prepare trained tokenizers on the training split only.
        inputs["tokenizer_trained_on"] = "train"
    blob = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def reusable(out_dir: Path, fingerprint: str) -> bool:
    """True when `out_dir` holds a complete dataset made from inputs with this fingerprint."""
    try:
        return read_meta(out_dir).get("fingerprint") == fingerprint
    except SlmError:
        return False


def _is_dataset(path: Path) -> bool:
    try:
        return json.loads((path / "meta.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_out_dir(out_dir: Path) -> None:
    """SlmError when `out_dir` is a file, or a non-empty folder that holds no slmkit dataset."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SlmError(f"output {out_dir} exists and is a file; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_dataset(out_dir):
        raise SlmError(f"output folder {out_dir} is not empty and holds no slmkit dataset; choose another --out")


def remove_stale_temporaries(out_dir: Path) -> None:
    """Remove temporary folders of earlier runs of this output that were killed (their process is gone)."""
    for path in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        try:
            pid = int(path.name.rsplit(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError, IndexError):
            continue
