import numpy as np
import pytest
from conftest import make_text

from slmkit.tokenizer import load_tokenizer, tokenizer_health, train_tokenizer
from slmkit.tokenizer.health import single_byte_share, word_fragmentation

ENGLISH = ("Once upon a time there was a little girl who lived in a village near the forest. Whenever she went "
           "out, the little girl wore a red riding cloak, so everyone in the village called her Little Red Riding "
           "Hood. ") * 20


def test_single_byte_share_counts_tokens_of_one_byte_and_ignores_specials():
    lengths = np.array([1, 1, 3, 0])  # id 3 is a special token
    tokens = np.array([0, 1, 2, 2, 3, 3, 3], dtype=np.uint16)
    assert single_byte_share(tokens, lengths) == pytest.approx(2 / 4)


def test_gpt2_on_english_is_healthy():
    gpt2 = load_tokenizer("gpt2")
    tokens = np.array(gpt2.encode(ENGLISH) + [gpt2.eot_id], dtype=np.uint16)
    report = tokenizer_health(gpt2, {"train": {"tokens": tokens, "bytes": len(ENGLISH), "documents": 1}}, ENGLISH)
    assert report["warnings"] == []
    assert report["splits"]["train"]["bytes_per_token"] == pytest.approx(len(ENGLISH) / (len(tokens) - 1), abs=1e-3)
    assert report["words"]["fragmented_share"] == 0.0


def test_bpe_trained_on_other_text_warns_that_words_fall_into_characters():
    # Trained on pseudo-words with a tiny vocabulary, it has never seen English words: "O n ce u p on".
    bad = train_tokenizer([make_text(i, 300) for i in range(5)], "bpe:300")
    fragments = word_fragmentation(bad, ENGLISH)
    assert fragments["fragmented_share"] > 0.5
    tokens = np.array(bad.encode(ENGLISH), dtype=np.uint16)
    report = tokenizer_health(bad, {"train": {"tokens": tokens, "bytes": len(ENGLISH)}}, ENGLISH)
    assert any("common words into near-single characters" in w for w in report["warnings"])
