"""The generation engine: cached one-token steps against the plain forward, batching, sampling filters,
penalties, stops, streaming, context overflow, special tokens and bad input."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from slmkit.errors import SlmError
from slmkit.generate import GenerationConfig, generate, stream
from slmkit.generate.sampling import apply_penalties, filter_logits, sampling_distribution, temperature_at
from slmkit.model import ModelConfig, Transformer

VOCAB = 53

CONFIGS = {
    "gpt2": dict(family="gpt2", position="learned", norm="layernorm", norm_bias=True, mlp="gelu",
                 attention_bias=True, mlp_bias=True, context_length=48),
    "llama": dict(family="llama", n_kv_heads=2, tie_embeddings=False, context_length=64),
    "gemma3": dict(family="gemma3", n_kv_heads=1, head_dim=16, mlp="geglu", norm_unit_offset=True,
                   norm_placement="sandwich", qk_norm=True, embedding_scale=True, sliding_window=5,
                   sliding_window_pattern=3, rope_theta=10000.0, rope_theta_local=100.0, query_pre_attn_scalar=16,
                   n_layers=3, tie_embeddings=False, context_length=64),
}
_MODELS: dict[str, Transformer] = {}


def tiny(family: str) -> Transformer:
    """A tiny random model whose greedy outputs vary (a wide init), built once."""
    if family not in _MODELS:
        torch.manual_seed(3)
        values = dict(vocab_size=VOCAB, n_layers=2, d_model=32, n_heads=4, d_mlp=64, init_std=0.35)
        values.update(CONFIGS[family])
        _MODELS[family] = Transformer(ModelConfig(**values)).eval()
    return _MODELS[family]


def ids(seed: int, length: int) -> list[int]:
    return torch.randint(3, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def greedy(**changes) -> GenerationConfig:
    return GenerationConfig(temperature=0.0, **changes)


def reference_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding the slow way: the whole sequence through the model each step, no cache."""
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    return tokens[len(prompt):]


# -- the engine against the plain forward --------------------------------------------------------
@pytest.mark.parametrize("family", list(CONFIGS))
def test_cached_greedy_equals_uncached_reference_past_the_window(family):
    model = tiny(family)
    prompt = ids(1, 6)
    result = generate(model, prompt, greedy(max_new_tokens=20))
    assert result.tokens == reference_greedy(model, prompt, 20)
    assert len(set(result.tokens)) > 2


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("family", list(CONFIGS))
def test_one_token_steps_over_a_cache_equal_the_full_forward_with_padding(family, static):
    model = tiny(family)
    pad = torch.tensor([0, 3])
    prompt = torch.tensor([ids(2, 7), [0, 0, 0] + ids(3, 4)])
    tokens = torch.tensor([[5 + step for step in range(12)], [40 - step for step in range(12)]])
    with torch.inference_mode():
        full = model(torch.cat([prompt, tokens], dim=1), pad_offsets=pad)[:, 7:]
        cache = model.new_cache(2, 20, static=static)
        model(prompt, cache=cache, pad_offsets=pad)
        steps = [model(tokens[:, step:step + 1], cache=cache, pad_offsets=pad) for step in range(12)]  # past the window
    assert cache.length == 19
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-5


@pytest.mark.parametrize("family", list(CONFIGS))
def test_batch_with_left_padding_equals_one_at_a_time(family):
    model = tiny(family)
    prompts = [ids(4, 2), ids(5, 9), ids(6, 5)]
    config = greedy(max_new_tokens=12, repetition_penalty=1.2, no_repeat_ngram_size=3)
    batched = generate(model, prompts, config)
    alone = [generate(model, p, config) for p in prompts]
    assert [b.tokens for b in batched] == [a.tokens for a in alone]
    assert len({tuple(a.tokens) for a in alone}) == 3


def test_batched_beam_search_equals_one_at_a_time():
    model = tiny("llama")
    prompts = [ids(7, 3), ids(8, 6)]
    config = greedy(max_new_tokens=8, num_beams=3, num_return_sequences=2)
    batched = generate(model, prompts, config)
    alone = [generate(model, p, config) for p in prompts]
    for b, a in zip(batched, alone):
        assert [x.tokens for x in b] == [x.tokens for x in a]
        assert [x.score for x in b] == pytest.approx([x.score for x in a], abs=1e-5)


def test_beam_search_returns_ranked_beams_that_beat_greedy():
    model = tiny("gemma3")
    prompt = ids(9, 4)
    beams = generate(model, prompt, greedy(max_new_tokens=10, num_beams=4, num_return_sequences=4,
                                           length_penalty=0.0))
    scores = [b.score for b in beams]
    assert scores == sorted(scores, reverse=True) and len({tuple(b.tokens) for b in beams}) == 4
    # With length_penalty 0 a beam's score is its summed log-probability; check it and compare with greedy.
    def logprob(tokens):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + tokens]))[0].log_softmax(-1)
        return sum(logits[len(prompt) - 1 + i, t].item() for i, t in enumerate(tokens))
    assert beams[0].score == pytest.approx(logprob(beams[0].tokens), abs=1e-4)
    assert beams[0].score >= logprob(generate(model, prompt, greedy(max_new_tokens=10)).tokens) - 1e-5


# -- sampling --------------------------------------------------------------------------------------
def test_temperature_zero_is_argmax_and_preset_greedy_matches():
    model = tiny("llama")
    prompt = ids(10, 5)
    assert generate(model, prompt, "greedy", max_new_tokens=10).tokens == reference_greedy(model, prompt, 10)


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    model = tiny("llama")
    prompt = ids(11, 4)
    a = generate(model, prompt, "creative", max_new_tokens=20, seed=1).tokens
    b = generate(model, prompt, "creative", max_new_tokens=20, seed=1).tokens
    c = generate(model, prompt, "creative", max_new_tokens=20, seed=2).tokens
    assert a == b and a != c


@pytest.mark.parametrize("family", list(CONFIGS))
def test_seeded_batch_row_i_samples_what_one_prompt_with_seed_plus_i_samples(family):
    model = tiny(family)
    prompts = [ids(21, 3), ids(22, 8), ids(21, 3)]
    config = GenerationConfig(temperature=1.2, top_k=40, max_new_tokens=16, seed=5)
    batched = [g.tokens for g in generate(model, prompts, config)]
    alone = [generate(model, p, config.replace(seed=5 + i)).tokens for i, p in enumerate(prompts)]
    assert batched == alone
    assert batched[0] != batched[2]  # the same prompt twice still gives two different samples


def test_top_k_keeps_k_tokens_and_ties_like_transformers():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0, 0.5, 2.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, True, False, False]]
    kept = torch.isfinite(filter_logits(logits, top_k=3))  # the third is tied with the fourth: both stay
    assert kept.tolist() == [[False, True, True, True, False, True]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.79)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=1e-9)).sum() == 1  # the top token always stays
    distribution = sampling_distribution(logits, 1.0, top_p=0.81)
    assert distribution[0].tolist() == pytest.approx([0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0])


def test_min_p_drops_tokens_below_a_fraction_of_the_top():
    probs = torch.tensor([[0.5, 0.3, 0.12, 0.08]])
    assert torch.isfinite(filter_logits(probs.log(), min_p=0.2)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(probs.log(), min_p=0.7)).tolist() == [[True, False, False, False]]


def test_filters_agree_with_transformers_warpers_on_random_logits():
    transformers = pytest.importorskip("transformers")
    from transformers.generation import logits_process as lp

    logits = torch.randn(16, 200, generator=torch.Generator().manual_seed(0)) * 3
    for top_k, top_p, min_p in [(0, 0.9, 0.0), (20, 1.0, 0.0), (0, 1.0, 0.1), (30, 0.8, 0.05)]:
        expected = logits / 0.7
        for warper in ([lp.TopKLogitsWarper(top_k)] if top_k else []) + \
                      ([lp.TopPLogitsWarper(top_p)] if top_p < 1 else []) + ([lp.MinPLogitsWarper(min_p)] if min_p else []):
            expected = warper(None, expected)
        got = sampling_distribution(logits, 0.7, top_k, top_p, min_p)
        assert torch.allclose(got, expected.softmax(-1), atol=1e-6)
        assert (got > 0).sum(-1).min() >= 1 and (got == 0).any()
    assert transformers is not None


def test_samples_follow_the_filtered_distribution():
    from slmkit.generate.sampling import choose_tokens

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]]).repeat(20000, 1)
    config = GenerationConfig(temperature=0.8, top_k=4, top_p=0.95)
    draws = choose_tokens(logits, 0.8, config, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength=6).float() / draws.numel()
    expected = sampling_distribution(logits[:1], 0.8, 4, 0.95)[0]
    assert expected[4:].sum() == 0 and frequencies[4:].sum() == 0
    assert torch.allclose(frequencies, expected, atol=0.015)


def test_temperature_annealing_lowers_the_temperature_per_token():
    config = GenerationConfig(temperature=1.0, temperature_decay=0.5, min_temperature=0.2)
    assert [temperature_at(config, s) for s in range(4)] == [1.0, 0.5, 0.25, 0.2]
    model = tiny("llama")
    # Annealed to (nearly) zero at once, sampling becomes greedy.
    cold = GenerationConfig(temperature=1.0, temperature_decay=1e-9, max_new_tokens=10, seed=0)
    tokens = generate(model, ids(12, 4), cold).tokens
    assert tokens[1:] == generate(model, ids(12, 4) + tokens[:1], greedy(max_new_tokens=9)).tokens


def test_repetition_presence_and_frequency_penalties_change_the_right_logits():
    scores = torch.tensor([[2.0, -1.0, 0.5, 1.0]])
    history = torch.tensor([[0, 1, 3, 3]])  # prompt [0, 1], generated [3, 3]
    config = GenerationConfig(repetition_penalty=2.0)
    assert apply_penalties(scores, history, None, 2, config).tolist() == [[1.0, -2.0, 0.5, 0.5]]
    config = GenerationConfig(presence_penalty=0.5, frequency_penalty=0.25)
    assert apply_penalties(scores, history, None, 2, config).tolist() == [[2.0, -1.0, 0.5, 0.0]]
    # Left padding is not a token: a padded id is not penalised.
    padded = apply_penalties(scores, history, torch.tensor([1]), 2, GenerationConfig(repetition_penalty=2.0))
    assert padded.tolist() == [[2.0, -2.0, 0.5, 0.5]]


def test_no_repeat_ngram_never_repeats_an_ngram():
    model = tiny("gpt2")
    tokens = generate(model, ids(13, 5), greedy(max_new_tokens=30, no_repeat_ngram_size=2)).tokens
    plain = generate(model, ids(13, 5), greedy(max_new_tokens=30)).tokens
    full = ids(13, 5) + tokens
    bigrams = list(zip(full, full[1:]))
    assert len(bigrams) == len(set(bigrams))
    plain_full = ids(13, 5) + plain
    assert len(set(zip(plain_full, plain_full[1:]))) < len(plain_full) - 1  # unconstrained, it repeats


# -- stops, special tokens, streaming --------------------------------------------------------------
class CharTokenizer:
    """Ids 3.. are letters; 0 pads, 1 ends the text (special, skipped unless asked)."""

    letters = "abcdefghijklmnopqrstuvwxyz .,!?ABCDEFGHIJKLMNOPQRSTUVW"[: VOCAB - 3]
    eot_id, pad_id, vocab_size = 1, 0, VOCAB

    def encode(self, text):
        return [self.letters.index(c) + 3 for c in text]

    def decode(self, ids, skip_special_tokens=True):
        names = {0: "<pad>", 1: "<eot>", 2: "<unk>"}
        return "".join(self.letters[i - 3] if i >= 3 else ("" if skip_special_tokens else names[i]) for i in ids)


def test_stops_at_eot_at_stop_tokens_and_at_max_new_tokens():
    model = tiny("llama")
    prompt = ids(14, 5)
    free = generate(model, prompt, greedy(max_new_tokens=12))
    assert free.finish_reason == "length" and len(free.tokens) == 12
    at_eot = generate(model, prompt, greedy(max_new_tokens=12), eot_id=free.tokens[3])
    assert at_eot.finish_reason == "eot" and at_eot.tokens == free.tokens[:3]
    at_stop = generate(model, prompt, greedy(max_new_tokens=12, stop_token_ids=[free.tokens[5]]))
    assert at_stop.finish_reason == "stop_token" and at_stop.tokens == free.tokens[:free.tokens.index(free.tokens[5])]
    ignored = generate(model, prompt, greedy(max_new_tokens=12, ignore_eot=True), eot_id=free.tokens[3])
    assert ignored.tokens == free.tokens


def test_stop_string_cuts_the_text_and_is_never_streamed():
    model, tokenizer = tiny("llama"), CharTokenizer()
    free = generate(model, "hello", greedy(max_new_tokens=16), tokenizer=tokenizer)
    stop = free.text[6:8]
    pieces = []
    result = generate(model, "hello", greedy(max_new_tokens=16, stop_strings=[stop]), tokenizer=tokenizer,
                      on_text=lambda row, text: pieces.append(text))
    assert result.finish_reason == "stop_string"
    assert result.text == free.text[:free.text.index(stop)]
    assert "".join(pieces) == result.text and len(pieces) > 1


def test_stream_yields_the_same_text_piece_by_piece():
    model, tokenizer = tiny("gemma3"), CharTokenizer()
    config = GenerationConfig(max_new_tokens=15, seed=4, temperature=0.9, top_k=20)
    pieces = list(stream(model, "the cat", config, tokenizer=tokenizer))
    assert len(pieces) > 3
    assert "".join(pieces) == generate(model, "the cat", config, tokenizer=tokenizer).text


def test_padding_token_is_never_emitted():
    model = tiny("llama")
    prompt = ids(15, 4)
    free = generate(model, prompt, greedy(max_new_tokens=12))
    favourite = max(set(free.tokens), key=free.tokens.count)

    class PadsFavourite(CharTokenizer):
        pad_id = favourite

    result = generate(model, prompt, greedy(max_new_tokens=12, ignore_eot=True), tokenizer=PadsFavourite())
    assert favourite in free.tokens and favourite not in result.tokens and len(result.tokens) == 12


def test_special_tokens_are_skipped_in_text_unless_asked():
    model = tiny("llama")
    prompt = ids(15, 4)
    free = generate(model, prompt, greedy(max_new_tokens=12))
    special = free.tokens[2]

    class Special(CharTokenizer):
        def decode(self, ids, skip_special_tokens=True):
            plain = CharTokenizer()
            return "".join(("" if skip_special_tokens else "<s>") if i == special else plain.decode([i])
                           for i in ids)

    config = greedy(max_new_tokens=12, ignore_eot=True)
    skipped = generate(model, prompt, config, tokenizer=Special())
    shown = generate(model, prompt, config, tokenizer=Special(), skip_special_tokens=False)
    assert skipped.tokens == shown.tokens == free.tokens
    assert "<s>" not in skipped.text and shown.text.count("<s>") == free.tokens.count(special) >= 1
    assert shown.text.replace("<s>", "") == skipped.text


def test_empty_prompt_starts_from_eot():
    model = tiny("llama")
    from_empty = generate(model, [], greedy(max_new_tokens=6), eot_id=1)
    assert from_empty.prompt_tokens == [1]
    assert from_empty.tokens == generate(model, [1], greedy(max_new_tokens=6), eot_id=1).tokens
    with pytest.raises(SlmError, match="empty prompt"):
        generate(model, [], greedy(max_new_tokens=6))


def test_text_prompt_needs_a_tokenizer():
    with pytest.raises(SlmError, match="tokenizer"):
        generate(tiny("llama"), "hello", greedy(max_new_tokens=2))


# -- the model's context -------------------------------------------------------------------------
def test_refuse_policy_raises_before_generating_past_the_context():
    model = tiny("gpt2")  # context 48, learned positions
    with pytest.raises(SlmError, match=r"40 tokens \+ max_new_tokens 20 = 60 exceeds the model context of 48"):
        generate(model, ids(16, 40), greedy(max_new_tokens=20, overflow="refuse"))
    with pytest.raises(SlmError, match="beam search cannot slide"):
        generate(model, ids(16, 40), greedy(max_new_tokens=20, num_beams=2))


def test_slide_policy_continues_past_the_context_of_a_learned_position_model():
    model = tiny("gpt2")
    context = model.config.context_length
    prompt = ids(17, 40)
    result = generate(model, prompt, greedy(max_new_tokens=30, overflow="slide"))
    assert len(result.tokens) == 30
    # Up to the full context the slide changes nothing; the next token is read from the newest 3/4.
    inside = context - len(prompt)
    assert result.tokens[:inside + 1] == reference_greedy(model, prompt, inside + 1)
    sequence = prompt + result.tokens
    kept = sequence[len(prompt) + inside + 1 - (3 * context) // 4: len(prompt) + inside + 1]
    assert result.tokens[inside + 1] == reference_greedy(model, kept, 1)[0]


def test_prompt_longer_than_the_context_keeps_its_end_with_a_warning():
    model = tiny("gpt2")
    prompt = ids(18, 70)
    with pytest.warns(UserWarning, match="longer than the model context of 48; keeping its last 48"):
        result = generate(model, prompt, greedy(max_new_tokens=4))
    assert result.prompt_tokens == prompt[-48:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert result.tokens[0] == reference_greedy(model, prompt[-48:], 1)[0]


def test_sliding_window_cache_stays_bounded():
    config = ModelConfig(vocab_size=1000, n_layers=6, d_model=64, n_heads=4, n_kv_heads=1, head_dim=16,
                         sliding_window=128, sliding_window_pattern=6, context_length=32768)
    model = Transformer(config)
    long, short = model.new_cache(1, 32768), model.new_cache(1, 1024)
    per_step = 2 * 16 * 4  # keys and values of one KV head, float32
    assert long.nbytes() == per_step * (5 * 128 + 32768)
    assert short.nbytes() == per_step * (5 * 128 + 1024)


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, message", [
    ({"top_p": 0.0}, "top_p = 0.0"), ({"top_p": 1.5}, "top_p = 1.5"), ({"temperature": -0.1}, "temperature = -0.1"),
    ({"top_k": -1}, "top_k = -1"), ({"min_p": 2.0}, "min_p = 2.0"), ({"max_new_tokens": -3}, "max_new_tokens = -3"),
    ({"num_beams": 3, "temperature": 0.8}, "num_beams = 3 with temperature = 0.8"),
    ({"num_beams": 2, "temperature": 0.0, "top_k": 5}, "cannot be combined with top_k"),
    ({"num_beams": 2, "temperature": 0.0, "num_return_sequences": 3}, "num_return_sequences = 3 exceeds"),
    ({"early_stopping": "sometimes"}, "early_stopping = 'sometimes'"), ({"overflow": "wrap"}, "overflow = 'wrap'"),
    ({"repetition_penalty": 0.0}, "repetition_penalty = 0.0"),
])
def test_bad_settings_are_refused_naming_the_value(changes, message):
    with pytest.raises(SlmError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GenerationConfig(**changes).validate()


def test_presets_and_unknown_preset():
    assert GenerationConfig.from_preset("creative").temperature == 0.9
    assert GenerationConfig.from_preset("coherent").top_k == 40
    assert GenerationConfig.from_preset("deterministic", max_new_tokens=5).max_new_tokens == 5
    assert GenerationConfig.from_preset("greedy").greedy
    with pytest.raises(SlmError, match="unknown generation preset 'wild'"):
        GenerationConfig.from_preset("wild")


def test_out_of_vocabulary_ids_are_refused():
    with pytest.raises(SlmError, match=f"token id {VOCAB} is outside"):
        generate(tiny("llama"), [3, VOCAB], greedy(max_new_tokens=2))


@pytest.mark.slow
def test_compiled_decode_step_gives_the_same_tokens():
    for family in CONFIGS:
        model = tiny(family)
        prompts = [ids(20, 3), ids(21, 6)]
        config = greedy(max_new_tokens=10)
        assert [g.tokens for g in generate(model, prompts, config, compile=True)] == \
               [g.tokens for g in generate(model, prompts, config)]


def test_a_compiled_decode_step_is_not_compiled_again_for_another_length():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = Transformer(ModelConfig(vocab_size=VOCAB, n_layers=1, d_model=32, n_heads=4, d_mlp=64,
                                    context_length=48)).eval()
    graphs = []
    for length in (4, 7, 11):  # each length slices its step's input from another size of output buffer
        generate(model, ids(30, 3), greedy(max_new_tokens=length), compile=True)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] >= 1 and graphs[1:] == [graphs[0], graphs[0]]


# -- a model whose logits are not finite ----------------------------------------------------------
DECODING = {
    "greedy": GenerationConfig(temperature=0.0),
    "sampling": GenerationConfig(temperature=1.0, seed=0),
    "sampling, top-k": GenerationConfig(temperature=0.8, top_k=5, seed=0),
    "beam search": GenerationConfig(temperature=0.0, num_beams=3),
}


def damaged(family: str, **weights) -> Transformer:
    """A copy of tiny(family) with `weights` (name -> (index, value)) written into its parameters."""
    model = copy.deepcopy(tiny(family))
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, (index, value) in weights.items():
            parameters[name][index] = value
    return model


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("mode", list(DECODING))
def test_a_model_with_non_finite_logits_is_refused_before_any_token(mode, value):
    model = damaged("llama", **{"lm_head.weight": (7, value)})  # the logit of token 7 is NaN or infinite
    made = []
    with pytest.raises(SlmError, match=r"^the model gives non-finite logits \(NaN or infinity\).*lower learning rate"):
        generate(model, ids(30, 6), DECODING[mode].replace(max_new_tokens=5), on_token=lambda row, t: made.append(t))
    assert made == []
    assert len(generate(tiny("llama"), ids(30, 6), DECODING[mode].replace(max_new_tokens=5)).tokens) > 0


@pytest.mark.parametrize("mode", list(DECODING))
def test_logits_that_turn_non_finite_mid_generation_are_refused_at_that_step(mode):
    # A learned position embedding that is NaN at position 12: the prefill of a 6-token prompt and the
    # steps reading positions 6..11 are sound, the step reading position 12 is not.
    model = damaged("gpt2", **{"pos_embed.weight": (12, float("nan"))})
    config = DECODING[mode].replace(max_new_tokens=20, ignore_eot=True)
    made = []
    with pytest.raises(SlmError, match="non-finite logits"):
        generate(model, ids(31, 6), config, on_token=lambda row, t: made.append(t))
    if config.num_beams == 1:
        assert made == generate(model, ids(31, 6), config.replace(max_new_tokens=12 - 6 + 1)).tokens
