"""Grouping and the train/validation split: by group of near-duplicate documents, never by position
inside one.

Near-duplicates (MinHash pairs, see `slmkit.data.dedup`) and the pieces of one large file form groups;
a document alone is a group of one. Groups are ordered by a hash of the seed and their content (so the
split does not depend on file order or worker count) and taken into validation until it holds the asked
share of tokens or number of documents. Training weights repeat documents after the split.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from slmkit.data.dedup import NUM_PERM, UnionFind, near_duplicate_pairs
from slmkit.data.documents import Documents, Scratch
from slmkit.errors import SlmError

TRAIN, VAL, DROPPED = 0, 1, -1
FRACTION_TOLERANCE = 0.1  # a validation share may end up this much (relative) above or below the target


class ScratchSignatures:
    """The signature file of a prepare run, read as `near_duplicate_pairs` reads signatures: in blocks, and
    the rows of candidate pairs."""

    def __init__(self, scratch: Scratch, n_signatures: int):
        self.scratch = scratch
        self.shape = (n_signatures, NUM_PERM)

    def blocks(self, rows_per_block: int):
        return self.scratch.signature_blocks(rows_per_block)

    def rows(self, indices: np.ndarray) -> np.ndarray:
        return self.scratch.signature_rows(indices)


def group_documents(docs: Documents, scratch: Scratch, near_dup: str,
                    threshold: float) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """Union-find roots of the documents (near-duplicates, and pieces of one large file, share a root)
    and the near-duplicate pairs (document a, document b, estimated Jaccard); no pairs when `near_dup`
    is "off"."""
    union = UnionFind(len(docs))
    pairs = []
    if near_dup != "off" and docs.n_signatures > 1:
        signatures = ScratchSignatures(scratch, docs.n_signatures)
        owner = np.flatnonzero(docs.column("has_signature"))
        for a, b, similarity in near_duplicate_pairs(signatures, threshold, scratch.signatures.parent):
            da, db = int(owner[a]), int(owner[b])
            union.union(da, db)
            pairs.append((da, db, similarity))
        del owner
    first_of_group: dict[str, int] = {}
    for doc, key in docs.group.items():
        union.union(first_of_group.setdefault(key, doc), doc)
    return union.roots().astype(np.int64), pairs


def _hash_matrix(hashes) -> np.ndarray:
    """Content hashes (a list of bytes, or an (n, 16) uint8 array) as an (n, 16) uint8 array."""
    if isinstance(hashes, np.ndarray):
        return hashes
    return np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(len(hashes), -1)


def _group_keys(seed: int, roots: np.ndarray, hashes: np.ndarray,
                first_only: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group of each document (0..groups-1, in order of their roots), the first document of each group,
    and each group's split key: a hash of the seed and the smallest content hash among its members (of
    its first document alone with `first_only`), as big-endian uint64, so that sorting the keys sorts
    their bytes."""
    roots_sorted, first, group = np.unique(roots, return_index=True, return_inverse=True)
    smallest = first
    if not first_only:  # the smallest hash of each group: sort by (group, hash bytes), take each group's first
        columns = [hashes[:, k] for k in range(hashes.shape[1] - 1, -1, -1)]
        order = np.lexsort([*columns, group])
        smallest = order[np.searchsorted(group[order], np.arange(len(roots_sorted)))]
    prefix = str(seed).encode()
    keys = np.fromiter(
        (int.from_bytes(hashlib.blake2b(prefix + row.tobytes(), digest_size=8).digest(), "big")
         for row in hashes[smallest]), dtype=np.uint64, count=len(smallest))
    return group, first, keys


def assign_split(roots: np.ndarray, tokens: np.ndarray, is_val_doc: np.ndarray, hashes,
                 val: float, seed: int, drop_near_duplicates: bool = False) -> tuple[np.ndarray, dict]:
    """Where each document goes: an int8 array of TRAIN (0), VAL (1) or DROPPED (-1), and counts of
    the drops {"near_duplicate_dropped", "near_duplicate_of_val"}.

    roots: group of each document (documents with equal roots are near-duplicates); tokens: size of each
    document, in tokens (in UTF-8 bytes when the tokenizer is trained after the split); is_val_doc:
    documents from explicit validation sources (then `val` is unused, and training documents grouped with
    one are dropped); hashes: each document's content hash (a list of bytes or an (n, 16) uint8 array);
    val: share of tokens (0 < val < 1) or number of documents (>= 1). drop_near_duplicates keeps only the
    first document of each group. Raises SlmError when either split would be empty.

    Memory: a few numpy arrays of one entry per document or group; no per-group Python objects.
    """
    n = len(roots)
    dest = np.full(n, TRAIN, dtype=np.int8)
    counts = {"near_duplicate_dropped": 0, "near_duplicate_of_val": 0}
    group, first, keys = _group_keys(seed, np.asarray(roots), _hash_matrix(hashes), drop_near_duplicates)
    if drop_near_duplicates:
        keep = np.zeros(n, dtype=bool)
        keep[first] = True
        dest[~keep] = DROPPED
        counts["near_duplicate_dropped"] = int(n - len(first))
    if is_val_doc.any():
        dest[is_val_doc & (dest != DROPPED)] = VAL
        if not drop_near_duplicates:  # (with drop, a group is its first document alone)
            with_val = np.bincount(group, weights=is_val_doc, minlength=len(first)) > 0
            twins = with_val[group] & ~is_val_doc
            dest[twins] = DROPPED
            counts["near_duplicate_of_val"] = int(twins.sum())
        if not (dest == VAL).any():
            raise SlmError("the validation sources gave no documents after filtering; check --val")
    else:
        _take_validation(dest, group, keys, np.asarray(tokens), val)
    if not (dest == TRAIN).any():
        raise SlmError("the training split is empty: every document went to validation; lower --val")
    return dest, counts


def _take_validation(dest: np.ndarray, group: np.ndarray, keys: np.ndarray, tokens: np.ndarray, val: float) -> None:
    """Take groups into validation in the order of their keys until it holds `val` (a share of the tokens
    of the documents not dropped, or a number of documents)."""
    fraction = val < 1
    kept = dest != DROPPED
    if fraction:
        sizes = np.bincount(group[kept], weights=tokens[kept], minlength=len(keys)).astype(np.int64)
    else:
        sizes = np.bincount(group[kept], minlength=len(keys))
    total = int(tokens[kept].sum())
    goal = val * total if fraction else int(val)
    low, high = (goal * (1 - FRACTION_TOLERANCE), goal * (1 + FRACTION_TOLERANCE)) if fraction else (goal, goal)
    keyed = np.argsort(keys, kind="stable")
    taken, chosen = 0, []
    for g, size in zip(keyed.tolist(), sizes[keyed].tolist()):
        if taken >= low:
            break
        if taken + size <= high:
            chosen.append(g)
            taken += size
    if taken == 0:
        smallest = int(keyed[np.argmin(sizes[keyed])])
        if len(keys) > 1 and (not fraction or sizes[smallest] <= total / 2):
            chosen = [smallest]
        else:
            raise SlmError(
                f"the validation split is empty: the {len(dest)} documents form {len(keys)} group(s) too large "
                f"for val={val}; add documents, raise --val, give a validation source (--val SOURCE), or cut "
                "files into documents with --doc-separator"
            )
    in_val = np.zeros(len(keys), dtype=bool)
    in_val[chosen] = True
    dest[in_val[group] & kept] = VAL


def repeat_counts(dest: np.ndarray, weights: np.ndarray, hashes) -> np.ndarray:
    """How many times each document is written: its source weight for training documents (the
    fractional part decided by a hash of the document, so it is deterministic), 1 for validation, 0 for
    dropped ones."""
    whole = np.floor(weights)
    repeats = np.where(dest == TRAIN, whole, 1).astype(np.int64)
    for i in np.flatnonzero((dest == TRAIN) & (weights != whole)):
        u = int.from_bytes(hashlib.blake2b(bytes(hashes[i]), digest_size=8).digest(), "little") / 2**64
        repeats[i] += u < weights[i] - math.floor(weights[i])
    repeats[dest == DROPPED] = 0
    return repeats
