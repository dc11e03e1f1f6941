"""prepare in bounded memory, and token files beyond 4 GiB: the split computed with whole-array operations
equals the per-group algorithm it replaced; near-duplicates found from signatures read in blocks equal those
found in one piece; the exact-duplicate set in sorted runs finds repeats across its runs; a prepare run's
Python-heap peak stays small; windows past the 4 GiB offset of a sparse train.bin read right without reading
the whole file."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from conftest import make_text

from slmkit.data import dedup
from slmkit.data.dedup import SeenHashes, minhash_batch, near_duplicate_pairs
from slmkit.data.loader import open_dataset
from slmkit.data.split import DROPPED, TRAIN, VAL, assign_split

GIB = 1 << 30


def reference_split(roots, tokens, is_val_doc, hashes, val, seed, drop):
    """The split as it was computed before, one Python object per group (the behaviour to keep)."""
    n = len(roots)
    dest = np.full(n, TRAIN, dtype=np.int8)
    order = np.argsort(roots, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(roots[order])) + 1)
    if drop:
        for members in groups:
            dest[members[1:]] = DROPPED
        groups = [members[:1] for members in groups]
    if is_val_doc.any():
        dest[is_val_doc & (dest != DROPPED)] = VAL
        for members in groups:
            inside = is_val_doc[members]
            if inside.any() and not inside.all():
                dest[members[~inside]] = DROPPED
        return dest

    def key(members):
        return hashlib.blake2b(str(seed).encode() + min(hashes[i] for i in members), digest_size=8).digest()

    keyed = sorted(groups, key=key)
    fraction = val < 1
    total = int(tokens[dest != DROPPED].sum())
    goal = val * total if fraction else int(val)
    low, high = (goal * 0.9, goal * 1.1) if fraction else (goal, goal)
    taken = 0
    for members in keyed:
        if taken >= low:
            break
        size = int(tokens[members].sum()) if fraction else len(members)
        if taken + size <= high:
            dest[members] = VAL
            taken += size
    return dest


@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("explicit_val", [False, True])
def test_vectorised_split_equals_the_per_group_algorithm(drop, explicit_val):
    rng = np.random.default_rng(7)
    for trial in range(12):
        n = int(rng.integers(20, 400))
        roots = np.arange(n)
        for _ in range(n // 4):  # near-duplicate groups: a document joins an earlier one's group
            a, b = sorted(rng.integers(0, n, 2))
            roots[roots == roots[b]] = roots[a]
        tokens = rng.integers(1, 500, n)
        hashes = [bytes(rng.integers(0, 256, 16, dtype=np.uint8)) for _ in range(n)]
        is_val = rng.random(n) < 0.1 if explicit_val else np.zeros(n, bool)
        if explicit_val and not is_val.any():
            is_val[0] = True
        val = [0.05, 0.2, 3, 10][trial % 4]
        expected = reference_split(roots, tokens, is_val, hashes, val, trial, drop)
        dest, _ = assign_split(roots, tokens, is_val, hashes, val, seed=trial, drop_near_duplicates=drop)
        assert np.array_equal(dest, expected), (trial, n, val)
        as_array = np.frombuffer(b"".join(hashes), np.uint8).reshape(n, 16)
        dest2, _ = assign_split(roots, tokens, is_val, as_array, val, seed=trial, drop_near_duplicates=drop)
        assert np.array_equal(dest2, expected)


class BlockSignatures:
    """Signatures served the way a prepare run's signature file serves them, counting what is read."""

    def __init__(self, array):
        self.array, self.shape, self.rows_read = array, array.shape, 0

    def blocks(self, rows_per_block):
        for start in range(0, len(self.array), rows_per_block):
            yield self.array[start : start + rows_per_block].copy()

    def rows(self, indices):
        self.rows_read += len(indices)
        return self.array[indices].copy()


def test_near_duplicates_from_signatures_read_in_small_blocks_equal_those_read_at_once(monkeypatch, tmp_path):
    texts = [make_text(i, 300) for i in range(60)]
    texts += [t.replace("the", "teh").replace("ka", "ca") for t in texts[:15]]  # 15 near-duplicates
    signatures, valid = minhash_batch(texts)
    assert valid.all()
    whole = near_duplicate_pairs(signatures, 0.35)
    monkeypatch.setattr(dedup, "BLOCK_ROWS", 7)  # blocks that end inside the planted pairs' rows
    source = BlockSignatures(signatures)
    blocked = near_duplicate_pairs(source, 0.35, tmp_path)
    assert blocked == whole
    assert {(a, b) for a, b, _ in whole} >= {(i, 60 + i) for i in range(15)}
    assert 0 < source.rows_read < 2 * 64 * len(texts)  # candidate rows only, never all pairs
    assert list(tmp_path.iterdir()) == []  # the band keys' file is gone


def test_seen_hashes_find_repeats_across_their_sorted_runs(monkeypatch):
    monkeypatch.setattr(SeenHashes, "RECENT", 8)
    seen = SeenHashes()
    keys = [hashlib.blake2b(str(i).encode(), digest_size=16).digest() for i in range(300)]
    assert all(seen.add(k) for k in keys)
    assert 1 < len(seen.runs) <= 9  # merged as they grow: about log2(300 / 8) runs
    assert [len(run) for run in seen.runs] == sorted((len(run) for run in seen.runs), reverse=True)
    assert not any(seen.add(k) for k in keys[::7])  # in the runs and in the recent set alike
    assert len(seen) == 300
    assert seen.add(b"x" * 16) and not seen.add(b"x" * 16)


def test_prepare_python_heap_peak_stays_small_for_4_mb_json_lines_blocks(tmp_path):
    """MinHash works on 1 MB pieces of a batch: the traced peak of a prepare run over 6 MB of JSON lines
    (4 MB blocks) stays under 64 MB (48 MB measured), where one MinHash pass over a whole block took it to
    122 MB."""
    import tracemalloc

    from slmkit.data import prepare

    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as f:
        for i in range(1200):
            f.write(json.dumps({"text": make_text(i, 800)}) + "\n")
    assert corpus.stat().st_size > 5_000_000
    tracemalloc.start()
    try:
        ds = prepare([str(corpus)], tmp_path / "ds", "gpt2", workers=1, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ds.meta["splits"]["train"]["documents"] > 1000
    assert peak < 64e6, f"traced peak {peak / 1e6:.0f} MB"


def sparse_dataset(directory, dtype: str, tokens: int, vocab_size: int):
    """A dataset whose train.bin is a sparse file of `tokens` tokens (zeros), meta.json claiming them."""
    directory.mkdir()
    with open(directory / "train.bin", "wb") as f:
        f.truncate(tokens * np.dtype(dtype).itemsize)
    if os.stat(directory / "train.bin").st_blocks * 512 > GIB:
        pytest.skip("the filesystem does not support sparse files")
    np.arange(5000, dtype=dtype).tofile(directory / "val.bin")
    meta = {"format": "slmkit-dataset", "version": 1, "vocab_size": vocab_size, "dtype": dtype,
            "max_token_id": vocab_size - 1, "tokenizer": {"name": "test", "eot_id": 0},
            "splits": {"train": {"tokens": tokens, "bytes": tokens * 4, "documents": 1},
                       "val": {"tokens": 5000, "bytes": 20000, "documents": 1}}}
    (directory / "meta.json").write_text(json.dumps(meta))


def write_tokens(path, dtype: str, start: int, values: np.ndarray) -> None:
    with open(path, "r+b") as f:
        f.seek(start * np.dtype(dtype).itemsize)
        f.write(values.astype(dtype).tobytes())


def process_io() -> tuple[int, int]:
    """(bytes read by read() calls, resident bytes) of this process."""
    import psutil

    with open("/proc/self/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["rchar"]), psutil.Process().memory_info().rss


@pytest.mark.parametrize("dtype,vocab_size", [("uint16", 50257), ("uint32", 100_000)])
def test_windows_beyond_4_gib_of_a_sparse_train_bin_read_right_without_reading_it_whole(tmp_path, dtype, vocab_size):
    if not os.path.exists("/proc/self/io"):
        pytest.skip("needs /proc/self/io to count the bytes read")
    pytest.importorskip("psutil")
    itemsize = np.dtype(dtype).itemsize
    tokens = (4 * GIB + 512 * (1 << 20)) // itemsize  # 4.5 GiB of tokens
    sparse_dataset(tmp_path / "ds", dtype, tokens, vocab_size)
    train = tmp_path / "ds" / "train.bin"
    seq_len, batch_size, seed = 64, 8, 11
    beyond = 4 * GIB // itemsize  # the first token past the 4 GiB offset

    # random_batch: find a step whose windows include ones past 4 GiB, and write known tokens there
    step = next(s for s in range(100) if (np.random.default_rng([seed, s, 0, 0x5E9]).integers(
        0, tokens - seq_len, size=batch_size) > beyond).sum() >= 2)
    starts = np.random.default_rng([seed, step, 0, 0x5E9]).integers(0, tokens - seq_len, size=batch_size)
    for start in starts:
        write_tokens(train, dtype, int(start), (np.arange(seq_len + 1) + int(start)) % vocab_size)
    # eval_batches: two windows from the first one past 4 GiB
    first_window = beyond // seq_len + 3
    eval_values = (np.arange(2 * seq_len + 1) * 7919 + 3) % vocab_size
    write_tokens(train, dtype, first_window * seq_len, eval_values)

    read_before, rss_before = process_io()
    ds = open_dataset(tmp_path / "ds", seq_len=seq_len)
    x, y = ds.random_batch("train", batch_size, seq_len, seed=seed, step=step)
    (ex, ey), = ds.eval_batches("train", 2, seq_len, max_batches=1, first_window=first_window)
    read_after, rss_after = process_io()

    assert len(ds.train) == tokens and ds.dtype == np.dtype(dtype)
    for row, start in enumerate(starts):
        expected = (np.arange(seq_len + 1) + int(start)) % vocab_size
        assert x[row].tolist() == expected[:-1].tolist() and y[row].tolist() == expected[1:].tolist()
    assert (starts * itemsize > 4 * GIB).sum() >= 2
    assert ex.flatten().tolist() == eval_values[: 2 * seq_len].tolist()
    assert ey[1].tolist() == eval_values[seq_len + 1 : 2 * seq_len + 1].tolist()
    # Neither a pass over the file (read() calls) nor a map of all of it made resident.
    assert read_after - read_before < 64 << 20
    assert rss_after - rss_before < 256 << 20
