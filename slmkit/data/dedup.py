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
import tempfile

import numpy as np

NUM_PERM = 128
SHINGLE_CHARS = 10
MIN_SHINGLES = 32
DEFAULT_THRESHOLD = 0.35
_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_PRIME = np.uint64(1099511628211)


_SEPARATOR = b"\x00"  # between documents in a batch; the table gives it a code of its own


def _skeleton_table() -> np.ndarray:
    table = np.full(256, ord(" "), dtype=np.uint8)
    table[0] = 1
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
    codes = _TABLE.take(np.frombuffer(text, dtype=np.uint8) if isinstance(text, bytes) else text)
    if len(codes) == 0:
        return codes
    # One pass: drop vowels (code 0) and a letter equal to the one before it (doubled letters).
    keep = codes != 0
    keep[1:] &= codes[1:] != codes[:-1]
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
    return _hash_shingles(codes, starts, shingle_chars)


def _hash_shingles(codes: np.ndarray, starts: np.ndarray, shingle_chars: int) -> np.ndarray:
    """Mixed 64-bit hashes of the `shingle_chars`-long shingles of `codes` at `starts`."""
    padded = np.zeros(len(codes) + 16, dtype=np.uint8)
    padded[: len(codes)] = codes
    words = np.ndarray((len(codes) + 9,), dtype="<u8", buffer=padded, strides=(1,))  # words[i] = bytes i..i+7
    h = np.take(words, starts)
    first_bytes = min(shingle_chars, 8)
    if first_bytes < 8:
        h &= np.uint64((1 << (8 * first_bytes)) - 1)
    if shingle_chars > 8:
        h = h * _MIX + (np.take(words, starts + 8) & np.uint64((1 << (8 * (shingle_chars - 8))) - 1))
    h *= _MIX
    h ^= h >> np.uint64(29)
    return h * _MIX


def minhash(text: str | bytes, num_perm: int = NUM_PERM, shingle_chars: int = SHINGLE_CHARS) -> np.ndarray | None:
    """A MinHash signature (uint32[num_perm]) of `text` by one-permutation hashing with rotation
    densification; None when the text has too few shingles to compare (under MIN_SHINGLES)."""
    signatures, valid = minhash_batch([text], num_perm, shingle_chars)
    return signatures[0] if valid[0] else None


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n), without a Python loop."""
    lengths = np.maximum(lengths, 0)
    total = int(lengths.sum())
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(total) - offsets)


def minhash_batch(texts, num_perm: int = NUM_PERM, shingle_chars: int = SHINGLE_CHARS):
    """MinHash signatures of many documents at once: (signatures uint32[n, num_perm], valid bool[n]).

    The documents' skeletons are built in one buffer (separated by a code no text produces) and hashed,
    binned and densified with whole-array operations, so a batch of short documents costs about what
    one long document of the same size does. Row i equals `minhash(texts[i])`; `valid[i]` is False
    where that is None (too few shingles).
    """
    bits = int(num_perm).bit_length() - 1
    if 1 << bits != num_perm:
        raise ValueError(f"num_perm must be a power of two, not {num_perm}")
    if not 1 <= shingle_chars <= 16:
        raise ValueError(f"shingle_chars must be 1..16, not {shingle_chars}")
    datas = [t.encode("utf-8", "replace") if isinstance(t, str) else t for t in texts]
    n = len(datas)
    signatures = np.zeros((n, num_perm), dtype=np.uint32)
    if n == 0:
        return signatures, np.zeros(0, dtype=bool)
    lengths = np.array([len(d) for d in datas], dtype=np.int64)
    raw_starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    codes = _TABLE.take(np.frombuffer(_SEPARATOR.join(datas), dtype=np.uint8))
    keep = codes != 0
    keep[1:] &= codes[1:] != codes[:-1]
    kept = np.flatnonzero(keep)
    codes = codes[kept]
    doc_start = np.searchsorted(kept, raw_starts)  # each document's span in the skeleton
    doc_end = np.searchsorted(kept, raw_starts + lengths)
    in_doc = np.zeros(len(codes), dtype=bool)
    in_doc[_ranges(doc_start, doc_end - doc_start)] = True

    # Shingles start after a space; documents with few such starts use every position instead.
    spaces = np.flatnonzero((codes == ord(" ")) & in_doc)
    starts = spaces + 1
    owner = _owner(spaces, doc_start, doc_end) if len(spaces) else spaces
    ok = starts + shingle_chars <= doc_end[owner]
    starts, owner = starts[ok], owner[ok]
    per_doc = np.bincount(owner, minlength=n)
    short = per_doc < 2 * num_perm
    if short.any():
        long_doc = ~short[owner]
        starts, owner = starts[long_doc], owner[long_doc]
        docs = np.flatnonzero(short)
        count = doc_end[docs] - doc_start[docs] - shingle_chars + 1
        starts = np.concatenate([starts, _ranges(doc_start[docs], count)])
        owner = np.concatenate([owner, np.repeat(docs, np.maximum(count, 0))])
    valid = np.bincount(owner, minlength=n) >= MIN_SHINGLES

    h = _hash_shingles(codes, starts, shingle_chars)

    flat = owner * num_perm + (h >> np.uint64(64 - bits)).astype(np.intp)
    mins = np.full(n * num_perm, _EMPTY, dtype=np.uint64)
    np.minimum.at(mins, flat, h & np.uint64((1 << (64 - bits)) - 1))
    mins = mins.reshape(n, num_perm)
    empty = mins == _EMPTY
    if empty.any():  # borrow the next filled bin's value (circularly), offset by the distance
        position = np.arange(2 * num_perm)
        filled = np.concatenate([~empty, ~empty], axis=1)
        nearest = np.minimum.accumulate(np.where(filled, position, 2 * num_perm)[:, ::-1], axis=1)[:, ::-1]
        source = nearest[:, :num_perm] % num_perm
        offsets = (np.arange(num_perm, dtype=np.uint64) + np.uint64(1)) * _MIX
        mins = np.where(empty, np.take_along_axis(mins, source, axis=1) + offsets, mins)
    signatures[:] = (mins >> np.uint64(64 - bits - 32)).astype(np.uint32)
    signatures[~valid] = 0
    return signatures, valid


def _owner(positions: np.ndarray, doc_start: np.ndarray, doc_end: np.ndarray) -> np.ndarray:
    """Index of the document whose skeleton span [start, end) holds each position."""
    return np.searchsorted(doc_start, positions, side="right") - 1


def content_hash(text: str | bytes) -> bytes:
    """16-byte hash of the exact text or its UTF-8 bytes (for exact-duplicate detection)."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(text, digest_size=16).digest()


def lsh_parameters(num_perm: int, threshold: float, recall: float = 0.98) -> tuple[int, int]:
    """(bands, rows), bands * rows <= num_perm, with as many rows per band as possible (fewer chance
    candidates) while a pair of similarity threshold + 0.1 is still a candidate with probability
    >= `recall`: 1 - (1 - J^rows)^bands."""
    target = min(threshold + 0.1, 1.0)
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - target**rows) ** bands >= recall:
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

    def roots(self) -> np.ndarray:
        """The root of every element at once (vectorised pointer jumping; compresses all paths)."""
        r = self.parent
        while True:
            nxt = r[r]
            if np.array_equal(nxt, r):
                break
            r = nxt
        self.parent = r.copy()
        return r

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


PAIR_WINDOW = 8  # within a bucket, each document is compared with this many bucket-mates before it
VERIFY_CHUNK = 1 << 16  # candidate pairs compared at once (2 x 64K signatures in memory)
BLOCK_ROWS = 1 << 14  # signatures read at a time to compute the band keys (8 MB)


class ArraySignatures:
    """Signatures held in memory (n, num_perm), read the way `near_duplicate_pairs` reads a file of them."""

    def __init__(self, signatures: np.ndarray):
        self.array = signatures
        self.shape = signatures.shape

    def blocks(self, rows_per_block: int):
        for start in range(0, self.shape[0], rows_per_block):
            yield np.asarray(self.array[start : start + rows_per_block])

    def rows(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[indices])


def band_keys(block: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band and row of `block` (n, num_perm): uint64[bands, n]; equal keys mean equal
    band values, up to 2^-64 chance (a mixing fold)."""
    keys = np.empty((bands, len(block)), dtype=np.uint64)
    for band in range(bands):
        key = np.full(len(block), band, dtype=np.uint64)
        for column in block[:, band * rows : (band + 1) * rows].T.astype(np.uint64):
            key = (key ^ column) * _MIX
            key ^= key >> np.uint64(29)
        keys[band] = key
    return keys


def near_duplicate_pairs(signatures, threshold: float, scratch_dir=None) -> list[tuple[int, int, float]]:
    """Pairs (i, j, estimated Jaccard) of rows of `signatures` at or above `threshold`.

    signatures: an (n, num_perm) array, or anything with `.shape`, `.blocks(rows)` (the rows in order, in
    blocks) and `.rows(indices)` (the rows at `indices`), such as the signature file of a prepare run.
    Each band of rows is hashed to one 64-bit key per document; documents sharing a key are candidates.
    Within a bucket each document is compared with the PAIR_WINDOW documents before it (all pairs in
    buckets up to that size), so work stays linear when a formulaic corpus makes buckets large; pairs
    already joined by an earlier band are skipped. Candidates are confirmed, vectorised, by the share of
    equal signature entries.

    Memory: the signatures are read once, in blocks, to compute every band's keys, which go to a
    temporary file (in `scratch_dir`); then one band at a time is read back: about 60 bytes per document
    (its key, the sort order, the union-find roots), never the signatures whole (VERIFY_CHUNK pairs of
    rows at a time are read to confirm candidates), plus the pairs found.
    """
    if isinstance(signatures, np.ndarray):
        signatures = ArraySignatures(signatures)
    n, num_perm = signatures.shape
    if n < 2:
        return []
    bands, rows = lsh_parameters(num_perm, threshold)
    with tempfile.TemporaryFile(dir=scratch_dir) as key_file:
        start = 0
        for block in signatures.blocks(BLOCK_ROWS):  # band-major: each band's keys are contiguous
            for band, keys in enumerate(band_keys(block, bands, rows)):
                key_file.seek((band * n + start) * 8)
                key_file.write(keys.tobytes())
            start += len(block)
        return _pairs_by_band(signatures, threshold, n, bands, key_file)


def _pairs_by_band(signatures, threshold: float, n: int, bands: int, key_file) -> list[tuple[int, int, float]]:
    """The confirmed pairs of `near_duplicate_pairs`, from the band keys in `key_file` (uint64[bands, n])."""
    union = UnionFind(n)
    found: dict[tuple[int, int], float] = {}
    index = np.arange(n)
    for band in range(bands):
        key_file.seek(band * n * 8)
        keys = np.fromfile(key_file, dtype=np.uint64, count=n)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        del keys
        run_start = np.ones(n, dtype=bool)
        run_start[1:] = sorted_keys[1:] != sorted_keys[:-1]
        del sorted_keys
        if run_start.all():
            continue
        position_in_run = index - np.maximum.accumulate(np.where(run_start, index, 0))
        roots = union.roots() if found else index
        pairs_a, pairs_b = [], []
        for back in range(1, PAIR_WINDOW + 1):
            k = np.flatnonzero(position_in_run >= back)
            if len(k) == 0:
                break
            a, b = order[k - back], order[k]
            fresh = roots[a] != roots[b]
            pairs_a.append(a[fresh])
            pairs_b.append(b[fresh])
        del order, position_in_run
        a, b = np.concatenate(pairs_a), np.concatenate(pairs_b)
        for start in range(0, len(a), VERIFY_CHUNK):
            ca, cb = a[start : start + VERIFY_CHUNK], b[start : start + VERIFY_CHUNK]
            similarity = (signatures.rows(ca) == signatures.rows(cb)).mean(axis=1)
            for i in np.flatnonzero(similarity >= threshold):
                x, y = int(min(ca[i], cb[i])), int(max(ca[i], cb[i]))
                if (x, y) not in found:
                    found[(x, y)] = float(similarity[i])
                    union.union(x, y)
    return sorted((x, y, sim) for (x, y), sim in found.items())


class SeenHashes:
    """The set of content hashes seen so far, for exact-duplicate detection, in about 8 bytes per hash:
    the first 8 bytes of each (a false match among 10 million documents has a chance of about 3 in a
    million), in sorted numpy runs merged as they grow (about log2 of the count of them), and the latest
    RECENT in a Python set."""

    RECENT = 1 << 16

    def __init__(self):
        self.runs: list[np.ndarray] = []  # sorted uint64 arrays, largest first
        self.recent: set[int] = set()

    def add(self, content_hash: bytes) -> bool:
        """Add `content_hash`; True when it was new (the first copy of its text)."""
        key = int.from_bytes(content_hash[:8], "little")
        if key in self.recent:
            return False
        probe = np.uint64(key)
        for run in self.runs:
            i = int(run.searchsorted(probe))
            if i < len(run) and run[i] == probe:
                return False
        self.recent.add(key)
        if len(self.recent) >= self.RECENT:
            self.runs.append(np.sort(np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent))))
            self.recent = set()
            while len(self.runs) > 1 and len(self.runs[-2]) <= len(self.runs[-1]):
                last = self.runs.pop()
                self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]))
        return True

    def __len__(self) -> int:
        return len(self.recent) + sum(len(run) for run in self.runs)
