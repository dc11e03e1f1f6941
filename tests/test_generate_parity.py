"""Greedy decoding and beam search give token for token what transformers' `generate` gives.

Tiny random GPT-2, Llama and Gemma 3 models (the Gemma window smaller than the generated length)
are converted to slmkit with the interop mapping; both sides then generate with the same settings.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from slmkit.generate import GenerationConfig, generate  # noqa: E402
from slmkit.interop.hf_config import config_from_hf  # noqa: E402
from slmkit.interop.hf_state import state_from_hf  # noqa: E402
from slmkit.model import Transformer  # noqa: E402

VOCAB = 61
PROMPT_LEN = 5
NEW_TOKENS = 14


def _hf_config(family: str):
    t = transformers
    common = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "initializer_range": 0.3}
    if family == "gpt2":
        return t.GPT2Config(
            vocab_size=VOCAB,
            n_positions=32,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_inner=64,
            tie_word_embeddings=False,
            layer_norm_epsilon=1e-5,
            **common,
        )
    if family == "llama":
        return t.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-5,
            max_position_embeddings=64,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0},
            **common,
        )
    if family == "gemma3":
        # Window 6 < prompt + generated tokens, a full layer every 2nd.
        return t.Gemma3TextConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=64,
            rms_norm_eps=1e-6,
            query_pre_attn_scalar=16,
            sliding_window=6,
            sliding_window_pattern=2,
            tie_word_embeddings=False,
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
            },
            **common,
        )
    raise ValueError(family)


FAMILIES = ["gpt2", "llama", "gemma3"]
_PAIRS: dict[str, tuple] = {}


def pair(family: str):
    """(HF model, converted slmkit model), built once per session."""
    if family not in _PAIRS:
        torch.manual_seed(7 + FAMILIES.index(family))
        hf = transformers.AutoModelForCausalLM.from_config(_hf_config(family), dtype=torch.float32).eval()
        with torch.no_grad():  # norms away from their init, so that a norm mistake shows
            for name, param in hf.named_parameters():
                if "norm" in name or ".ln_" in name:
                    param.normal_(0.0, 0.3) if family == "gemma3" else param.uniform_(0.5, 1.5)
        config = config_from_hf(hf.config.to_dict())
        model = Transformer(config).eval()
        model.load_state_dict(state_from_hf(hf.state_dict(), config), strict=False)
        _PAIRS[family] = (hf, model)
    return _PAIRS[family]


def prompt(seed: int = 0, length: int = PROMPT_LEN) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (length,), generator=generator).tolist()


def hf_generate(hf, ids: list[int], eos: int | None, **settings):
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=0,
            max_new_tokens=NEW_TOKENS,
            return_dict_in_generate=True,
            output_scores=True,
            **settings,
        )
    return out


def ours(model, ids, eos, **settings):
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, temperature=0.0, **settings)
    return generate(model, ids, config, eot_id=eos)


def with_stop(generation) -> list[int]:
    """The generated ids as transformers reports them: the end-of-text token that ended it included."""
    return generation.tokens + ([2] if generation.finish_reason == "eot" else [])


def _eos_seen_early(model, ids) -> int:
    """An end-of-text id that greedy decoding produces after a few tokens, so that stopping is exercised."""
    return ours(model, ids, None).tokens[4]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"repetition_penalty": 1.5},
        {"no_repeat_ngram_size": 2},
        {"repetition_penalty": 0.7, "no_repeat_ngram_size": 3},
    ],
    ids=["plain", "repetition", "ngram", "both"],
)
def test_greedy_matches_transformers(family, settings):
    hf, model = pair(family)
    for seed in range(2):
        ids = prompt(seed)
        expected = hf_generate(hf, ids, None, **settings).sequences[0, len(ids) :].tolist()
        assert ours(model, ids, None, **settings).tokens == expected
    assert len(expected) == NEW_TOKENS and len(set(expected)) > 1  # a test that could have failed


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_stops_at_eot_like_transformers(family):
    hf, model = pair(family)
    ids = prompt(3)
    eos = _eos_seen_early(model, ids)
    expected = hf_generate(hf, ids, eos).sequences[0, len(ids) :].tolist()
    result = ours(model, ids, eos)
    assert result.finish_reason == "eot"
    assert result.tokens + [eos] == expected and len(expected) < NEW_TOKENS


BEAM_SETTINGS = {
    "default": {"num_beams": 3},
    "early_true": {"num_beams": 4, "early_stopping": True, "num_return_sequences": 4},
    "never_lp2": {
        "num_beams": 3,
        "early_stopping": "never",
        "length_penalty": 2.0,
        "num_return_sequences": 2,
    },
    "lp_neg": {"num_beams": 2, "length_penalty": -1.0, "num_return_sequences": 2},
    "penalties": {
        "num_beams": 3,
        "repetition_penalty": 1.3,
        "no_repeat_ngram_size": 2,
        "num_return_sequences": 3,
    },
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", list(BEAM_SETTINGS))
def test_beam_search_matches_transformers(family, name):
    hf, model = pair(family)
    settings = BEAM_SETTINGS[name]
    ids = prompt(5)
    eos = _eos_seen_early(model, ids)
    out = hf_generate(hf, ids, eos, **settings)
    n = settings.get("num_return_sequences", 1)
    results = ours(model, ids, eos, **settings)
    results = results if isinstance(results, list) else [results]
    assert len(results) == n
    finished_early = 0
    for k, result in enumerate(results):
        expected = out.sequences[k, len(ids) :].tolist()
        got = result.tokens + ([eos] if result.finish_reason == "eot" else [])
        assert got == expected[: len(got)] and all(t == eos for t in expected[len(got) :]), (k, got, expected)
        assert result.score == pytest.approx(out.sequences_scores[k].item(), abs=1e-4)
        finished_early += result.finish_reason == "eot"
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)


def test_beam_search_exercises_both_endings():
    """Across the parity cases, some returned beams end at end-of-text and some at the length limit."""
    reasons = set()
    for family in FAMILIES:
        _, model = pair(family)
        ids = prompt(5)
        eos = _eos_seen_early(model, ids)
        for settings in BEAM_SETTINGS.values():
            results = ours(model, ids, eos, **settings)
            reasons.update(r.finish_reason for r in (results if isinstance(results, list) else [results]))
    assert reasons == {"eot", "length"}


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_batched_greedy_with_left_padding_matches_transformers(family):
    hf, model = pair(family)
    prompts = [prompt(10, 3), prompt(11, 7), prompt(12, 5)]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        expected = hf.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            max_new_tokens=NEW_TOKENS,
        )[:, width:].tolist()
    results = generate(model, prompts, GenerationConfig(max_new_tokens=NEW_TOKENS, temperature=0.0))
    assert [r.tokens for r in results] == expected
