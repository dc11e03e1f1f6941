import json

import pytest
from conftest import make_text

from slmkit.errors import SlmError
from slmkit.tokenizer import load_tokenizer, train_tokenizer
from slmkit.tokenizer.bpe import tiktoken_from_hf

HELD_OUT = "Unseen words: zebra quokka! Ünïcödé, 日本語, emoji 🙂, numbers 12345 and   spaces\n\ttabs <|endoftext|>"


@pytest.fixture(scope="module")
def corpus():
    return [make_text(i, 800) for i in range(30)]


@pytest.fixture(scope="module")
def bpe(corpus):
    return train_tokenizer(corpus, "bpe:1024", check_texts=corpus[:3])


def test_trained_bpe_has_requested_size_and_special_ids(bpe):
    assert (bpe.name, bpe.vocab_size, bpe.eot_id, bpe.pad_id) == ("bpe:1024", 1024, 0, 1)
    assert bpe.hf.id_to_token(0) == "<|endoftext|>"


def test_tiktoken_fast_path_gives_identical_ids_to_hf_tokenizers(bpe, corpus):
    assert bpe.uses_tiktoken
    for text in [*corpus[-3:], HELD_OUT, "x" * 500, "  \n\n  "]:
        assert bpe.encoding.encode_ordinary(text) == bpe.hf.encode(text, add_special_tokens=False).ids
        assert bpe.encode(text) == bpe.hf.encode(text, add_special_tokens=False).ids


def test_trained_bpe_round_trips_any_text_and_keeps_special_text_ordinary(bpe):
    ids = bpe.encode(HELD_OUT)
    assert bpe.decode(ids) == HELD_OUT
    assert bpe.eot_id not in ids
    assert list(bpe.encode_to_array(HELD_OUT)) == ids


def test_trained_bpe_save_load_identical(bpe, tmp_path):
    bpe.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.uses_tiktoken and again.name == "bpe:1024"
    assert again.encode(HELD_OUT) == bpe.encode(HELD_OUT)
    assert (again.eot_id, again.pad_id, again.vocab_size) == (0, 1, 1024)


def test_trained_bpe_export_loads_in_transformers_with_identical_ids(bpe, corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    bpe.export_hf(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = corpus[0][:2000] + HELD_OUT.replace("<|endoftext|>", "")
    assert hf(text, add_special_tokens=False)["input_ids"] == bpe.encode(text)
    assert (hf.eos_token_id, hf.pad_token_id) == (0, 1)


def test_any_hf_tokenizer_json_loads_with_its_eos_as_end_of_text(bpe, tmp_path):
    bpe.export_hf(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|pad|>"}))
    other = load_tokenizer(tmp_path / "tokenizer.json")
    assert other.kind == "hf" and other.eot_id == 1
    assert other.encode(HELD_OUT) == bpe.encode(HELD_OUT)


def test_chat_tokens_are_added_after_eot_and_pad(corpus):
    tok = train_tokenizer(corpus[:5], "bpe:400", chat_tokens=True)
    assert [tok.hf.id_to_token(i) for i in range(4)] == ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


def test_tiktoken_conversion_refuses_non_byte_level_vocabularies():
    from tokenizers import Tokenizer, models

    word_level = Tokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
    assert tiktoken_from_hf(word_level, "x") is None


def test_too_small_vocab_and_bad_spec_raise(corpus):
    with pytest.raises(SlmError, match="too small"):
        train_tokenizer(corpus[:2], "bpe:100")
    with pytest.raises(SlmError, match="bad BPE spec"):
        train_tokenizer(corpus[:2], "bpe:lots")
