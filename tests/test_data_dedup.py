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


def test_lsh_bands_put_the_s_curve_below_the_threshold():
    bands, rows = lsh_parameters(128, 0.35)
    assert bands * rows == 128
    assert (1 / bands) ** (1 / rows) <= 0.35
    # A pair at the threshold is a candidate with high probability.
    assert 1 - (1 - 0.35**rows) ** bands > 0.95
