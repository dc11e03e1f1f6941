"""Leak check: how much validation text also occurs, word for word, in the training text.

Measured on token n-grams long enough (about LEAK_NGRAM_BYTES of text) that chance matches are rare;
n-grams that cross a document boundary are ignored. Large training sets are sampled consistently (an
n-gram is kept on both sides when its hash falls in the same residue class), which keeps the estimate
unbiased and the memory bounded.
"""

from __future__ import annotations

import math

import numpy as np

LEAK_NGRAM_BYTES = 50
LEAK_WARN_SHARE = 0.05
MAX_TRAIN_NGRAMS = 100_000  # beyond this the train n-grams are sampled (rate > 1)
_PRIME = np.uint64(1099511628211)
_MIX = np.uint64(0x9E3779B97F4A7C15)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting (np.unique on uint64 is many times slower in numpy 2.x)."""
    values = np.sort(values)
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def ngram_hashes(tokens: np.ndarray, n: int, eot_id: int, rate: int, chunk: int = 1 << 20) -> np.ndarray:
    """Sorted unique 64-bit hashes of the n-grams of `tokens` that contain no `eot_id`, keeping about one
    in `rate`. Reads `tokens` (a memmap is fine) in chunks.

    The sample is consistent: whether an n-gram is kept depends only on its first two tokens, so the same
    n-gram is kept (or not) in both splits, and only the kept positions are hashed (n gathers of
    len/rate values), which keeps the check cheap next to tokenization. Memory: about 60 bytes per token
    of a chunk, and the kept hashes.
    """
    kept = []
    total = len(tokens)
    threshold = np.uint32(((1 << 32) - 1) // max(rate, 1))
    for start in range(0, max(total - n + 1, 0), chunk):
        window = np.asarray(tokens[start : min(start + chunk + n - 1, total)])
        count = len(window) - n + 1
        if count <= 0:
            break
        if rate > 1:  # a 32-bit mix of the first two tokens decides (cheap; only the choice, not the hash)
            key = window[:count].astype(np.uint32) * np.uint32(0x9E3779B1) + window[1 : count + 1]
            key ^= key >> np.uint32(15)
            key *= np.uint32(0x2C1B3C6D)
            key ^= key >> np.uint32(12)
            starts = np.flatnonzero(key <= threshold)
        else:
            starts = np.arange(count)
        eots = np.zeros(len(window) + 1, dtype=np.int32)
        np.cumsum(window == eot_id, out=eots[1:])
        starts = starts[eots[starts + n] == eots[starts]]
        h = np.zeros(len(starts), dtype=np.uint64)
        for j in range(n):
            h = h * _PRIME + window[starts + j] + np.uint64(1)
        kept.append(sorted_unique(h * _MIX))
    if len(kept) <= 1:
        return kept[0] if kept else np.empty(0, dtype=np.uint64)
    return sorted_unique(np.concatenate(kept))


def leak_check(train: np.ndarray, val: np.ndarray, eot_id: int, bytes_per_token: float) -> dict:
    """Share of validation n-grams (distinct, about LEAK_NGRAM_BYTES bytes long) found in training.

    Returns {"ngram_tokens", "ngram_bytes", "sample_rate", "val_ngrams", "overlap_share", "warning"}."""
    n = max(4, math.ceil(LEAK_NGRAM_BYTES / max(bytes_per_token, 1e-9)))
    rate = max(1, math.ceil(len(train) / MAX_TRAIN_NGRAMS))
    train_hashes = ngram_hashes(train, n, eot_id, rate)
    val_hashes = ngram_hashes(val, n, eot_id, rate)
    found = int(np.isin(val_hashes, train_hashes, assume_unique=True).sum()) if len(val_hashes) else 0
    share = found / len(val_hashes) if len(val_hashes) else 0.0
    warning = None
    if share > LEAK_WARN_SHARE:
        warning = (
            f"{share:.1%} of validation {n}-token sequences also occur in training (warn above "
            f"{LEAK_WARN_SHARE:.0%}): validation scores will look better than they are; deduplicate the "
            "sources or pick the validation set with --val"
        )
    return {
        "method": "distinct token n-grams within documents, sampled consistently by their first two tokens",
        "ngram_tokens": n,
        "ngram_bytes": round(n * bytes_per_token, 1),
        "sample_rate": rate,
        "val_ngrams": int(len(val_hashes)),
        "overlap_share": round(share, 6),
        "warn_above": LEAK_WARN_SHARE,
        "warning": warning,
    }
