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

from slmkit.data.dedup import UnionFind, near_duplicate_pairs
from slmkit.data.documents import Documents, Scratch
from slmkit.errors import SlmError

TRAIN, VAL, DROPPED = 0, 1, -1
FRACTION_TOLERANCE = 0.1  # a validation share may end up this much (relative) above or below the target


def group_documents(docs: Documents, scratch: Scratch, near_dup: str,
                    threshold: float) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """Union-find roots of the documents (near-duplicates, and pieces of one large file, share a root)
    and the near-duplicate pairs (document a, document b, estimated Jaccard); no pairs when `near_dup`
    is "off"."""
    union = UnionFind(len(docs.names))
    pairs = []
    if near_dup != "off" and docs.n_signatures > 1:
        signatures = scratch.signature_matrix(docs.n_signatures)
        owner = np.flatnonzero(docs.column("signature_row") >= 0)
        for a, b, similarity in near_duplicate_pairs(signatures, threshold):
            da, db = int(owner[a]), int(owner[b])
            union.union(da, db)
            pairs.append((da, db, similarity))
        del signatures
    first_of_group: dict[str, int] = {}
    for doc, key in docs.group.items():
        union.union(first_of_group.setdefault(key, doc), doc)
    return union.roots().astype(np.int64), pairs


def groups_of(roots: np.ndarray) -> list[np.ndarray]:
    """Document indices grouped by their union-find root, each group in document order."""
    order = np.argsort(roots, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(roots[order])) + 1)


def _group_key(seed: int, hashes: list[bytes], members) -> bytes:
    return hashlib.blake2b(str(seed).encode() + min(hashes[i] for i in members), digest_size=8).digest()


def assign_split(roots: np.ndarray, tokens: np.ndarray, is_val_doc: np.ndarray, hashes: list[bytes],
                 val: float, seed: int, drop_near_duplicates: bool = False) -> tuple[np.ndarray, dict]:
    """Where each document goes: an int8 array of TRAIN (0), VAL (1) or DROPPED (-1), and counts of
    the drops {"near_duplicate_dropped", "near_duplicate_of_val"}.

    roots: group of each document (documents with equal roots are near-duplicates); tokens: size of each
    document, in tokens (in UTF-8 bytes when the tokenizer is trained after the split); is_val_doc: documents from explicit validation sources (then `val` is unused, and
    training documents grouped with one are dropped); val: share of tokens (0 < val < 1) or number of
    documents (>= 1). drop_near_duplicates keeps only the first document of each group.
    Raises SlmError when either split would be empty.
    """
    n = len(roots)
    dest = np.full(n, TRAIN, dtype=np.int8)
    counts = {"near_duplicate_dropped": 0, "near_duplicate_of_val": 0}
    groups = groups_of(roots)
    if drop_near_duplicates:
        for members in groups:
            dest[members[1:]] = DROPPED
            counts["near_duplicate_dropped"] += len(members) - 1
        groups = [members[:1] for members in groups]
    if is_val_doc.any():
        dest[is_val_doc & (dest != DROPPED)] = VAL
        for members in groups:
            inside = is_val_doc[members]
            if inside.any() and not inside.all():
                dest[members[~inside]] = DROPPED
                counts["near_duplicate_of_val"] += int((~inside).sum())
        if not (dest == VAL).any():
            raise SlmError("the validation sources gave no documents after filtering; check --val")
    else:
        _take_validation(dest, groups, tokens, hashes, val, seed)
    if not (dest == TRAIN).any():
        raise SlmError("the training split is empty: every document went to validation; lower --val")
    return dest, counts


def _take_validation(dest, groups, tokens, hashes, val: float, seed: int) -> None:
    keyed = sorted(groups, key=lambda members: _group_key(seed, hashes, members))
    fraction = val < 1
    total = int(tokens[dest != DROPPED].sum())
    goal = val * total if fraction else int(val)
    low, high = (goal * (1 - FRACTION_TOLERANCE), goal * (1 + FRACTION_TOLERANCE)) if fraction else (goal, goal)

    def size(members) -> int:
        return int(tokens[members].sum()) if fraction else len(members)

    taken = 0
    for members in keyed:
        if taken >= low:
            break
        s = size(members)
        if taken + s <= high:
            dest[members] = VAL
            taken += s
    if taken == 0:
        smallest = min(keyed, key=size)
        if len(keyed) > 1 and (not fraction or size(smallest) <= total / 2):
            dest[smallest] = VAL
        else:
            raise SlmError(
                f"the validation split is empty: the {len(dest)} documents form {len(keyed)} group(s) too large "
                f"for val={val}; add documents, raise --val, give a validation source (--val SOURCE), or cut "
                "files into documents with --doc-separator"
            )


def repeat_counts(dest: np.ndarray, weights: np.ndarray, hashes: list[bytes]) -> np.ndarray:
    """How many times each document is written: its source weight for training documents (the
    fractional part decided by a hash of the document, so it is deterministic), 1 for validation, 0 for
    dropped ones."""
    whole = np.floor(weights)
    repeats = np.where(dest == TRAIN, whole, 1).astype(np.int64)
    for i in np.flatnonzero((dest == TRAIN) & (weights != whole)):
        u = int.from_bytes(hashlib.blake2b(hashes[i], digest_size=8).digest(), "little") / 2**64
        repeats[i] += u < weights[i] - math.floor(weights[i])
    repeats[dest == DROPPED] = 0
    return repeats
