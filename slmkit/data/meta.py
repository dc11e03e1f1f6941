"""A prepared dataset's meta.json: the checks of the written splits (tokenizer health, leak check) and
the description of everything that made them (tokenizer, splits, sources, filters, near-duplicates,
split, warnings, timings). `slmkit.data.report` prints it as a summary.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from slmkit.data.clean import FILTERS
from slmkit.data.dedup import NUM_PERM
from slmkit.data.documents import Documents
from slmkit.data.leak import leak_check
from slmkit.data.loader import FORMAT, VERSION, TokenFile
from slmkit.data.options import PrepareOptions
from slmkit.data.sources import Source
from slmkit.data.split import VAL
from slmkit.tokenizer import Tokenizer, tokenizer_health
from slmkit.tokenizer.base import MANIFEST


def check_splits(directory: Path, dtype: np.dtype, tokenizer: Tokenizer, splits: dict,
                 pairs: list[tuple[int, int, float]], dest: np.ndarray) -> tuple[dict, dict, list[str]]:
    """Tokenizer health and leak check on the written train.bin / val.bin (each read in bounded pieces);
    returns (health, leak check, their warnings)."""
    # Read in pieces, not mapped: the pages of a map would stay resident until it is closed.
    train, val = TokenFile(directory / "train.bin", dtype), TokenFile(directory / "val.bin", dtype)
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
    warnings = health["warnings"] + ([leak["warning"]] if leak["warning"] else [])
    return health, leak, warnings


def dataset_meta(*, options: PrepareOptions, tokenizer: Tokenizer, trained_on: dict | None, dtype: np.dtype,
                 sources: list[Source], is_val_source: list[bool], source_stats: list[dict], docs: Documents,
                 roots: np.ndarray, pairs: list, dest: np.ndarray, splits: dict, per_source: list[dict],
                 health: dict, leak: dict, warnings: list[str], timings: dict, workers: int,
                 tail: dict | None = None) -> dict:
    """meta.json's content (without the fingerprint and inputs); adds bytes_per_token to `splits` and the
    invalid-UTF-8 warning to `warnings`. `tail`: how a lone document was cut into a training head and a
    validation tail (see `slmkit.data.prepare`), or None."""
    if docs.decode_problems:
        warnings.append(f"{docs.decode_problems} documents had invalid UTF-8 (policy {options.encoding_errors})")
    for split in splits.values():  # all tokens, separators included: what bits per byte divides by
        split["bytes_per_token"] = round(split["bytes"] / split["tokens"], 6) if split["tokens"] else None
    explicit_val = any(is_val_source)
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
        "max_token_id": max(split["max_token_id"] for split in splits.values()),  # checked when opened
        "dtype": dtype.name,
        "eot_id": tokenizer.eot_id,
        "document_separator": "eot appended after every document",
        "splits": splits,
        "sources": [
            {
                "spec": s.spec, "kind": s.kind, "description": s.description, "weight": s.weight,
                "role": "val" if is_val_source[i] else ("train" if explicit_val else "train+val"),
                "files": len(s.paths) if s.kind == "local" else None, "raw_bytes": source_stats[i]["raw_bytes"],
                "sha256": source_stats[i]["sha256"], "filters": dict(docs.per_source_filters[i]),
                **per_source[i],
            }
            for i, s in enumerate(sources)
        ],
        "filters": _filters(options, docs, dest),
        "near_duplicates": _near_duplicates(options, docs, roots, pairs),
        "split": {
            "method": "contiguous tail of one document" if tail else
            "explicit validation sources" if explicit_val else "by group of near-duplicate documents",
            "seed": options.seed, "val": options.val,
            "val_documents_names": docs.names(np.flatnonzero(dest == VAL)[:1000].tolist()),
            **({"tail": tail} if tail else {}),
        },
        "health": health,
        "leak_check": leak,
        "warnings": warnings,
        "timings": timings,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "workers": workers},
    }


def _filters(options: PrepareOptions, docs: Documents, dest: np.ndarray) -> dict:
    """Documents dropped by each filter and by deduplication, documents kept, and the filter settings."""
    filters = docs.filters
    return {
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
    }


def _near_duplicates(options: PrepareOptions, docs: Documents, roots: np.ndarray, pairs: list) -> dict:
    """How near-duplicates were found, how many pairs and groups, and the 20 most similar pairs."""
    group_sizes = np.bincount(roots, minlength=len(roots))
    examples = [{"a": docs.name(a), "b": docs.name(b), "similarity": round(similarity, 3)}
                for a, b, similarity in sorted(pairs, key=lambda p: -p[2])[:20]]
    return {
        "mode": options.near_dup, "threshold": options.near_dup_threshold, "method": (
            f"MinHash ({NUM_PERM} one-permutation bins) over 10-character shingles of a spelling-"
            "insensitive skeleton, LSH candidates confirmed by estimated Jaccard"),
        "pairs": len(pairs), "groups": int((group_sizes > 1).sum()),
        "documents_in_groups": int(group_sizes[group_sizes > 1].sum()), "examples": examples,
    }
