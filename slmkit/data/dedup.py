"""Exact and near-duplicate detection.

Near-duplicates are found with MinHash over character shingles of a spelling-insensitive skeleton of
the text (lower case, vowels and non-letters dropped, doubled letters collapsed), so that an edition in
old spelling ("Long liue the King") matches its modern twin ("Long live the King"). Signatures use
one-permutation hashing (one hash per shingle, the minimum kept in each of `num_perm` bins), which is
a few numpy passes over the text; candidate pairs come from locality-sensitive hashing over bands and
are confirmed by the estimated Jaccard similarity.
"""

from __future__ import annotations

import hashlib

import numpy as np

NUM_PERM = 128
SHINGLE_CHARS = 10
MIN_SHINGLES = 32
DEFAULT_THRESHOLD = 0.35
_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_PRIME = np.uint64(1099511628211)


def _skeleton_table() -> np.ndarray:
    table = np.full(256, ord(" "), dtype=np.uint8)
    for c in range(128, 256):  # bytes of non-ASCII characters: kept (non-Latin scripts still shingle)
        table[c] = c
    for c in b"0123456789bcdfghklmnpqrstwxz":
        table[c] = c
    for c in b"BCDFGHKLMNPQRSTWXZ":
        table[c] = c + 32
    for c in b"aeiouyjvAEIOUYJV":  # vowels and the letters old spelling swaps with them (u/v, i/j)
        table[c] = 0
    return table


_TABLE = _skeleton_table()


def skeleton(text: str | bytes | np.ndarray) -> np.ndarray:
    """The spelling-insensitive skeleton of `text` (str, or its UTF-8 bytes) as uint8 codes (see module doc)."""
    if isinstance(text, str):
        text = text.encode("utf-8", "replace")
    codes = _TABLE[np.frombuffer(text, dtype=np.uint8) if isinstance(text, bytes) else text]
    codes = codes[codes != 0]
    if len(codes) == 0:
        return codes
    keep = np.empty(len(codes), dtype=bool)
    keep[0] = True
    np.not_equal(codes[1:], codes[:-1], out=keep[1:])
    return codes[keep]


def shingle_hashes(text: str | bytes, shingle_chars: int = SHINGLE_CHARS, min_count: int = 2 * NUM_PERM) -> np.ndarray:
    """64-bit hashes of the skeleton shingles that start at a word boundary (at every position
    instead when that gives fewer than `min_count`, so short documents still get a signature).

    A shingle of up to 16 characters is read as two unaligned little-endian 64-bit words of the
    skeleton (a strided view, no per-character loop), masked to `shingle_chars` and mixed."""
    if not 1 <= shingle_chars <= 16:
        raise ValueError(f"shingle_chars must be 1..16, not {shingle_chars}")
    codes = skeleton(text)
    last = max(len(codes) - shingle_chars, 0)
    starts = np.flatnonzero(codes[:last] == ord(" ")) + 1
    if len(starts) < min_count:
        starts = np.arange(last + 1) if len(codes) >= shingle_chars else starts[:0]
    if len(starts) == 0:
        return np.empty(0, dtype=np.uint64)
    padded = np.zeros(len(codes) + 16, dtype=np.uint8)
    padded[: len(codes)] = codes
    words = np.ndarray((len(codes) + 9,), dtype="<u8", buffer=padded, strides=(1,))  # words[i] = bytes i..i+7
    first_bytes = min(shingle_chars, 8)
    h = words[starts]
    if first_bytes < 8:
        h &= np.uint64((1 << (8 * first_bytes)) - 1)
    if shingle_chars > 8:
        h = h * _MIX + (words[starts + 8] & np.uint64((1 << (8 * (shingle_chars - 8))) - 1))
    h *= _MIX
    h ^= h >> np.uint64(29)
    return h * _MIX


def minhash(text: str | bytes, num_perm: int = NUM_PERM, shingle_chars: int = SHINGLE_CHARS) -> np.ndarray | None:
    """A MinHash signature (uint32[num_perm]) of `text` by one-permutation hashing with rotation
    densification; None when the text has too few shingles to compare (under MIN_SHINGLES)."""
    h = shingle_hashes(text, shingle_chars, 2 * num_perm)
    if len(h) < MIN_SHINGLES:
        return None
    bits = int(num_perm).bit_length() - 1
    if 1 << bits != num_perm:
        raise ValueError(f"num_perm must be a power of two, not {num_perm}")
    bins = (h >> np.uint64(64 - bits)).astype(np.intp)
    mins = np.full(num_perm, _EMPTY, dtype=np.uint64)
    np.minimum.at(mins, bins, h & np.uint64((1 << (64 - bits)) - 1))
    empty = mins == _EMPTY
    if empty.any():  # borrow the next filled bin's value, offset by the distance (densification)
        filled = np.flatnonzero(~empty)
        nxt = filled[np.searchsorted(filled, np.arange(num_perm)) % len(filled)]
        mins = np.where(empty, mins[nxt] + (np.arange(num_perm, dtype=np.uint64) + np.uint64(1)) * _MIX, mins)
    return (mins >> np.uint64(64 - bits - 32)).astype(np.uint32)


def content_hash(text: str | bytes) -> bytes:
    """16-byte hash of the exact text or its UTF-8 bytes (for exact-duplicate detection)."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(text, digest_size=16).digest()


def lsh_parameters(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows) with bands * rows = num_perm whose S-curve midpoint (1/bands)^(1/rows) lies just
    below `threshold`, so pairs at the threshold are found with high probability."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        bands = num_perm // rows
        if (1 / bands) ** (1 / rows) <= threshold * 0.85:
            best = (bands, rows)
    return best


class UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_pairs(signatures: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Pairs (i, j, estimated Jaccard) of rows of `signatures` (n, num_perm) at or above `threshold`.

    Each band of rows is hashed to one 64-bit key per document; documents sharing a key in any band are
    candidates, confirmed by the share of equal signature entries. Memory: O(n) per band.
    """
    n, num_perm = signatures.shape
    if n < 2:
        return []
    bands, rows = lsh_parameters(num_perm, threshold)
    candidates: set[tuple[int, int]] = set()
    weights = (np.arange(rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)) * _MIX
    for band in range(bands):
        block = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64)
        keys = (block * weights).sum(axis=1, dtype=np.uint64) ^ np.uint64(band)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        same = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
        if len(same) == 0:
            continue
        # Runs of equal keys: pair every member with the run's first member and its neighbour, which
        # with union-find later links the whole run without quadratic blow-up on huge buckets.
        run_start = np.ones(n, dtype=bool)
        run_start[1:] = sorted_keys[1:] != sorted_keys[:-1]
        first = np.maximum.accumulate(np.where(run_start, np.arange(n), 0))
        for k in same + 1:
            a, b = int(order[first[k]]), int(order[k])
            candidates.add((min(a, b), max(a, b)))
            a = int(order[k - 1])
            candidates.add((min(a, b), max(a, b)))
    pairs = []
    for a, b in sorted(candidates):
        similarity = float(np.mean(signatures[a] == signatures[b]))
        if similarity >= threshold:
            pairs.append((a, b, similarity))
    return pairs
