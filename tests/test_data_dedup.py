import re

import numpy as np
from conftest import make_text

from slmkit.data.dedup import lsh_parameters, minhash, near_duplicate_pairs, shingle_hashes, skeleton


def old_spelling(text: str) -> str:
    """Imitate First Folio spelling: u/v and i/j swaps, a final e added, doubled consonants."""
    text = text.replace("u", "v").replace("i", "j")
    text = re.sub(r"\b(\w+[^e\W])\b", r"\1e", text)
    return text.replace("l", "ll")


def jaccard(a: str, b: str) -> float:
    x, y = set(shingle_hashes(a).tolist()), set(shingle_hashes(b).tolist())
    return len(x & y) / len(x | y)


def test_skeleton_ignores_case_vowels_and_doubled_letters():
    assert bytes(skeleton("Long liue the King")) == bytes(skeleton("long live thee  KING"))
    assert bytes(skeleton("selfe hast")) == bytes(skeleton("self haste"))


def test_minhash_estimates_jaccard_of_spelling_variants():
    text = make_text(1, 2000)
    variant = old_spelling(text)
    other = make_text(2, 2000)
    a, b, c = minhash(text), minhash(variant), minhash(other)
    assert jaccard(text, variant) > 0.5 and jaccard(text, other) < 0.1
    assert abs(np.mean(a == b) - jaccard(text, variant)) < 0.15
    assert np.mean(a == c) < 0.1


def test_minhash_is_none_for_text_too_short_to_compare():
    assert minhash("tiny") is None
    assert minhash(make_text(3, 60)) is not None  # short documents fall back to every position


def test_near_duplicate_pairs_finds_planted_pairs_only():
    texts = [make_text(i, 1500) for i in range(30)]
    texts += [old_spelling(texts[4]), texts[9][:-200] + " an added ending of several words here"]
    signatures = np.stack([minhash(t) for t in texts])
    pairs = {(a, b) for a, b, _ in near_duplicate_pairs(signatures, 0.35)}
    assert pairs == {(4, 30), (9, 31)}


def test_lsh_bands_find_pairs_just_above_the_threshold():
    for threshold in (0.35, 0.5, 0.8):
        bands, rows = lsh_parameters(128, threshold)
        assert bands * rows <= 128
        assert 1 - (1 - (threshold + 0.1) ** rows) ** bands >= 0.98
        # ... with the most rows that allows, so unrelated documents rarely share a bucket.
        assert 1 - (1 - (threshold + 0.1) ** (rows + 1)) ** (128 // (rows + 1)) < 0.98


def test_large_buckets_of_similar_documents_stay_linear_and_are_grouped():
    # 300 copies of one text with small edits: all one bucket; a window of bucket-mates links them all.
    base = make_text(7, 800)
    texts = [base.replace("ka", "ko", i % 5) + f" tail {i}" for i in range(300)]
    signatures = np.stack([minhash(t) for t in texts])
    pairs = near_duplicate_pairs(signatures, 0.35)
    assert len(pairs) <= 300 * 8
    from slmkit.data.dedup import UnionFind

    union = UnionFind(len(texts))
    for a, b, _ in pairs:
        union.union(a, b)
    assert len({union.find(i) for i in range(len(texts))}) == 1


def test_batch_minhash_equals_one_document_at_a_time():
    from slmkit.data.dedup import minhash_batch

    texts = [make_text(i, words) for i, words in enumerate([3, 20, 60, 150, 400, 2000] * 2)]
    texts += ["", "a b", "Ünïcödé façade " * 40, "x\x00y " * 100]
    signatures, valid = minhash_batch(texts)
    for text, signature, ok in zip(texts, signatures, valid):
        alone = minhash(text)
        assert (alone is not None) == ok
        if ok:
            assert np.array_equal(alone, signature)
    assert valid.sum() >= 10 and not valid[-4]
