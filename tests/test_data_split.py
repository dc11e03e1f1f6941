import numpy as np
import pytest

from slmkit.data.split import DROPPED, TRAIN, VAL, assign_split, repeat_counts
from slmkit.errors import SlmError


def hashes_for(n):
    return [i.to_bytes(16, "little") for i in range(n)]


def test_val_share_is_met_within_tolerance_and_depends_on_seed_not_order():
    n = 100
    tokens = np.full(n, 50)
    roots = np.arange(n)
    hashes = hashes_for(n)
    dest, _ = assign_split(roots, tokens, np.zeros(n, bool), hashes, 0.1, seed=3)
    assert 9 <= (dest == VAL).sum() <= 11
    chosen = {hashes[i] for i in np.flatnonzero(dest == VAL)}
    perm = np.random.default_rng(0).permutation(n)
    dest2, _ = assign_split(roots, tokens[perm], np.zeros(n, bool), [hashes[i] for i in perm], 0.1, seed=3)
    assert {hashes[perm[i]] for i in np.flatnonzero(dest2 == VAL)} == chosen
    dest3, _ = assign_split(roots, tokens, np.zeros(n, bool), hashes, 0.1, seed=4)
    assert {hashes[i] for i in np.flatnonzero(dest3 == VAL)} != chosen


def test_groups_are_never_split_and_drop_mode_keeps_the_first():
    roots = np.array([0, 0, 2, 3, 3, 3, 6, 7, 8, 9])
    tokens = np.full(10, 10)
    for seed in range(20):
        dest, _ = assign_split(roots, tokens, np.zeros(10, bool), hashes_for(10), 3, seed=seed)
        for group in ([0, 1], [3, 4, 5]):
            assert len(set(dest[group])) == 1
    dest, counts = assign_split(roots, tokens, np.zeros(10, bool), hashes_for(10), 1, seed=0, drop_near_duplicates=True)
    assert counts["near_duplicate_dropped"] == 3 and list(dest[[1, 4, 5]]) == [DROPPED] * 3


def test_explicit_validation_documents_drop_their_training_twins():
    roots = np.array([0, 0, 2, 3])
    is_val = np.array([False, True, False, False])
    dest, counts = assign_split(roots, np.ones(4), is_val, hashes_for(4), 0.5, seed=0)
    assert list(dest) == [DROPPED, VAL, TRAIN, TRAIN] and counts["near_duplicate_of_val"] == 1


def test_empty_splits_are_errors():
    with pytest.raises(SlmError, match="validation split is empty"):
        assign_split(np.zeros(3, int), np.ones(3), np.zeros(3, bool), hashes_for(3), 0.1, seed=0)
    with pytest.raises(SlmError, match="training split is empty"):
        assign_split(np.arange(2), np.ones(2), np.ones(2, bool), hashes_for(2), 0.1, seed=0)


def test_repeat_counts_follow_weights_deterministically():
    n = 1000
    dest = np.zeros(n, np.int8)
    dest[:10] = VAL
    repeats = repeat_counts(dest, np.full(n, 1.5), hashes_for(n))
    assert set(repeats[:10]) == {1} and set(repeats[10:]) == {1, 2}
    assert 0.4 < (repeats[10:] == 2).mean() < 0.6
    assert np.array_equal(repeats, repeat_counts(dest, np.full(n, 1.5), hashes_for(n)))
    assert (repeat_counts(dest, np.zeros(n), hashes_for(n))[10:] == 0).all()
