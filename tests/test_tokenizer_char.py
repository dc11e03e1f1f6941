import numpy as np
import pytest

from slmkit.errors import SlmError
from slmkit.tokenizer import CharTokenizer, load_tokenizer, train_tokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\tSpeak, speak. Ünï 🙂"


def test_char_vocab_is_sorted_characters_then_eot():
    tok = train_tokenizer([TEXT], "char")
    chars = sorted(set(TEXT))
    assert tok.vocab_size == len(chars) + 1 and tok.eot_id == len(chars)
    assert tok.encode("\n") == [chars.index("\n")]
    assert tok.encode(TEXT) == [chars.index(c) for c in TEXT]


def test_char_round_trip_and_special_handling():
    tok = train_tokenizer([TEXT], "char")
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert tok.decode([*ids[:3], tok.eot_id]) == TEXT[:3]
    assert tok.decode([tok.eot_id], skip_special_tokens=False) == "<|endoftext|>"
    assert tok.token_byte_lengths()[tok.encode("🙂")[0]] == 4


def test_char_unknown_character_is_an_error_naming_it():
    tok = CharTokenizer("abc ")
    with pytest.raises(SlmError, match="'z'"):
        tok.encode("abz")


def test_char_save_load_and_hf_export_agree(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = train_tokenizer([TEXT], "char")
    tok.save(tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").encode(TEXT) == tok.encode(TEXT)
    tok.export_hf(tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf(TEXT, add_special_tokens=False)["input_ids"] == tok.encode(TEXT)
    assert hf.decode(tok.encode(TEXT)) == TEXT


def test_char_encode_to_array_matches_list():
    tok = train_tokenizer([TEXT], "char")
    assert np.array_equal(tok.encode_to_array(TEXT, np.uint16), np.array(tok.encode(TEXT), dtype=np.uint16))
