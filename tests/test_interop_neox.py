"""slmkit is exact against transformers' GPTNeoXForCausalLM, the architecture of the rotary GPT presets
(gpt-tiny-27m, gpt-small-46m): rotary over the whole head, LayerNorm, GELU (tanh) MLP, sequential residual.

Tiny random NeoX models (float32, biases and norms randomised so a dropped bias shows) are converted both
ways; logits agree within 1e-5, tensors survive the round trips bit for bit, parameter counts are equal,
greedy decoding gives the same tokens. The sensitivity tests prove the comparison catches NeoX's per-head
Q/K/V interleaving read as [Q | K | V] and rotary in the interleaved layout. A bias-free slmkit model
exports zero biases and imports back as the same config.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from slmkit.errors import SlmError  # noqa: E402
from slmkit.interop.hf import (  # noqa: E402
    config_from_hf,
    config_to_hf,
    export_hf,
    import_hf,
    state_from_hf,
    state_to_hf,
)
from slmkit.interop.hf_state import without_zero_biases  # noqa: E402
from slmkit.model import ModelConfig, Transformer, load_model, save_model  # noqa: E402

TOLERANCE = 1e-5
SEQ_LEN = 40
VOCAB = 97


def _hf_config(case: str):
    common = {"vocab_size": VOCAB, "hidden_act": "gelu_pytorch_tanh", "use_parallel_residual": False,
              "max_position_embeddings": 64, "initializer_range": 0.2, "bos_token_id": 1, "eos_token_id": 2,
              "pad_token_id": 0}
    if case == "neox-untied-bias":
        return transformers.GPTNeoXConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80, attention_bias=True,
            tie_word_embeddings=False, layer_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 300.0, "partial_rotary_factor": 1.0}, **common)
    if case == "neox-tied-no-attention-bias":
        return transformers.GPTNeoXConfig(
            hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=64, attention_bias=False,
            tie_word_embeddings=True, layer_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0}, **common)
    raise ValueError(case)


CASES = ["neox-untied-bias", "neox-tied-no-attention-bias"]
_MODELS: dict[str, object] = {}


def hf_model(case: str):
    """A tiny GPTNeoXForCausalLM with every bias and norm moved away from its init, built once."""
    if case not in _MODELS:
        torch.manual_seed(sum(map(ord, case)))
        model = transformers.AutoModelForCausalLM.from_config(_hf_config(case), dtype=torch.float32)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias"):
                    param.normal_(0.0, 0.2)
                elif "norm" in name:
                    param.uniform_(0.5, 1.5)
        _MODELS[case] = model.eval()
    return _MODELS[case]


def converted(hf) -> Transformer:
    config = config_from_hf(hf.config.to_dict())
    model = Transformer(config).eval()
    model.load_state_dict(state_from_hf(hf.state_dict(), config), strict=False)
    return model


def token_ids(batch: int = 2, length: int = SEQ_LEN) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1234))


def max_logit_diff(hf, model, ids=None) -> float:
    ids = token_ids() if ids is None else ids
    with torch.no_grad():
        other = model(ids)
        other = other if isinstance(other, torch.Tensor) else other.logits
        return (hf(ids).logits - other).abs().max().item()


def tiny_gpt_tiny_27m() -> ModelConfig:
    """The gpt-tiny-27m preset's switches (rotary, bias-free LayerNorm, GELU, no biases, untied) at toy size."""
    from slmkit.config import load_model_config

    return load_model_config(preset="gpt-tiny-27m").replace(vocab_size=VOCAB, context_length=64, n_layers=2,
                                                             d_model=32, n_heads=4, n_kv_heads=4, d_mlp=64)


# -- parity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_neox_logits_match_hf_after_conversion(case):
    hf = hf_model(case)
    assert max_logit_diff(hf, converted(hf)) <= TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_neox_parameter_count_equals_hf(case):
    hf = hf_model(case)
    assert converted(hf).num_parameters() == hf.num_parameters()


@pytest.mark.parametrize("case", CASES)
def test_neox_round_trips_are_bit_identical(case):
    hf = hf_model(case)
    model = converted(hf)
    config = model.config
    assert config_from_hf(config_to_hf(config)) == config
    state = {k: v for k, v in model.state_dict().items() if not (config.tie_embeddings and k == "lm_head.weight")}
    back = state_from_hf(state_to_hf(state, config), config)
    assert back.keys() == state.keys() and all(torch.equal(back[k], v) for k, v in state.items())
    # HF -> slmkit -> HF gives the original tensors (v5 keeps the head as lm_head in memory, embed_out on disk).
    original = {k.replace("lm_head.", "embed_out."): v for k, v in hf.state_dict().items()
                if not (config.tie_embeddings and k == "lm_head.weight")}
    exported = state_to_hf(state_from_hf(hf.state_dict(), config), config)
    assert exported.keys() == original.keys() and all(torch.equal(exported[k], v) for k, v in original.items())


@pytest.mark.parametrize("case", CASES)
def test_neox_export_loads_in_transformers_with_same_logits(case, tmp_path):
    model = converted(hf_model(case))
    save_model(model, tmp_path / "ckpt")
    export_hf(tmp_path / "ckpt", tmp_path / "hf", card=False)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(reloaded).__name__ == "GPTNeoXForCausalLM"
    assert reloaded.num_parameters() == model.num_parameters()
    assert max_logit_diff(reloaded, model) <= TOLERANCE
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert written["use_parallel_residual"] is False and written["rotary_pct"] == 1.0
    assert written["hidden_act"] == "gelu_pytorch_tanh"


def test_neox_kv_cache_decoding_matches_hf_full_forward():
    hf = hf_model("neox-untied-bias")
    model = converted(hf)
    ids = token_ids()
    with torch.no_grad():
        reference = hf(ids).logits
        cache = model.new_cache(2, SEQ_LEN)
        steps = [model(ids[:, :5], cache=cache)]
        steps += [model(ids[:, t:t + 1], cache=cache) for t in range(5, SEQ_LEN)]
    assert (torch.cat(steps, dim=1) - reference).abs().max().item() <= 1e-4


def test_neox_hf_greedy_generation_equals_slmkit_greedy_decoding():
    hf = hf_model("neox-tied-no-attention-bias")
    model = converted(hf)
    prompt = token_ids(batch=1, length=4)
    with torch.no_grad():
        expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, min_new_tokens=20,
                               do_sample=False, pad_token_id=0)[0, 4:].tolist()
        cache, produced = model.new_cache(1, 24), []
        logits = model(prompt, cache=cache)
        for _ in range(20):
            token = logits[:, -1].argmax(-1, keepdim=True)
            produced.append(token.item())
            logits = model(token, cache=cache)
    assert produced == expected


# -- the comparison would catch the layout mistakes ----------------------------------------------
def test_parity_detects_neox_qkv_read_as_q_then_k_then_v():
    hf = hf_model("neox-untied-bias")
    model = converted(hf)
    wrong = Transformer(model.config).eval()
    state = dict(state_from_hf(hf.state_dict(), model.config))
    for i in range(model.config.n_layers):  # the fused rows taken as they are stored, not regrouped per head
        for kind in ("weight", "bias"):
            state[f"blocks.{i}.attn.qkv.{kind}"] = hf.state_dict()[f"gpt_neox.layers.{i}.attention.query_key_value.{kind}"]
    wrong.load_state_dict(state, strict=False)
    assert max_logit_diff(hf, wrong) > 100 * TOLERANCE


def test_parity_detects_interleaved_rotary_convention():
    hf = hf_model("neox-untied-bias")
    model = converted(hf)
    config = model.config
    half = config.head_dim // 2
    order = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(config.n_layers):
        for kind in ("weight", "bias"):
            tensor = state[f"blocks.{i}.attn.qkv.{kind}"]
            rows = 2 * config.q_dim  # Q and K heads; V untouched
            heads = tensor[:rows].reshape(2 * config.n_heads, config.head_dim, *tensor.shape[1:])
            tensor[:rows] = heads[:, order].reshape(rows, *tensor.shape[1:])
    wrong = Transformer(config).eval()
    wrong.load_state_dict(state)
    assert max_logit_diff(hf, wrong) > 100 * TOLERANCE


# -- gpt-tiny-27m: exported as GPT-NeoX, imported back as itself --------------------------------
def test_gpt_tiny_27m_preset_is_gpt_neox_with_zero_biases_added_to_the_count():
    from slmkit.config import load_model_config

    config = load_model_config(preset="gpt-tiny-27m")
    hf_config = config_to_hf(config)
    assert hf_config["architectures"] == ["GPTNeoXForCausalLM"]
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf_config))
        model = Transformer(config)
    # NeoX always has LayerNorm and MLP biases: per layer 2 x 512 + 2048 + 512, and the final norm's 512.
    assert hf.num_parameters() - model.num_parameters() == 6 * (2 * 512 + 2048 + 512) + 512


def test_bias_free_gpt_tiny_27m_shape_exports_zero_biases_and_imports_back_as_itself(tmp_path):
    config = tiny_gpt_tiny_27m()
    torch.manual_seed(0)
    model = Transformer(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    save_model(model, tmp_path / "ckpt")
    export_hf(tmp_path / "ckpt", tmp_path / "hf", card=False)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    layer = reloaded.gpt_neox.layers[0]
    assert layer.mlp.dense_h_to_4h.bias.abs().sum() == 0 and layer.input_layernorm.bias.abs().sum() == 0
    assert layer.attention.query_key_value.bias is None  # attention_bias = false: no tensor at all
    assert max_logit_diff(reloaded, model) <= TOLERANCE
    back = load_model(import_hf(tmp_path / "hf", tmp_path / "slm"))
    ignore = ("name", "extra")
    assert {k: v for k, v in back.config.to_dict().items() if k not in ignore} == \
        {k: v for k, v in config.to_dict().items() if k not in ignore}
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


def test_import_keeps_nonzero_neox_biases_and_drops_only_all_zero_groups():
    hf = hf_model("neox-untied-bias")
    config = config_from_hf(hf.config.to_dict())
    assert without_zero_biases(config, hf.state_dict()) == config  # randomised biases: all kept
    zeroed = {k: (torch.zeros_like(v) if k.endswith("mlp.dense_h_to_4h.bias") or k.endswith("mlp.dense_4h_to_h.bias")
                  else v) for k, v in hf.state_dict().items()}
    lighter = without_zero_biases(config, zeroed)
    assert (lighter.mlp_bias, lighter.norm_bias, lighter.attention_bias) == (False, True, True)


def test_state_from_hf_refuses_a_nonzero_neox_bias_the_config_has_no_place_for():
    hf = hf_model("neox-untied-bias")
    config = config_from_hf(hf.config.to_dict()).replace(mlp_bias=False)
    with pytest.raises(SlmError, match=r"dense_h_to_4h\.bias is not zero"):
        state_from_hf(hf.state_dict(), config)


# -- import of directories and refusals ---------------------------------------------------------
def test_import_hf_reads_a_save_pretrained_neox_directory(tmp_path):
    from safetensors.torch import load_file

    hf = hf_model("neox-untied-bias")
    hf.save_pretrained(tmp_path / "hf")
    assert "embed_out.weight" in load_file(str(tmp_path / "hf" / "model.safetensors"))  # the Hub's spelling
    model = load_model(import_hf(tmp_path / "hf", tmp_path / "slm"))
    assert max_logit_diff(hf, model) <= TOLERANCE


def test_import_hf_reads_the_transformers_v4_neox_config_spelling():
    v4 = {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "vocab_size": 100, "hidden_size": 64,
          "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256, "hidden_act": "gelu_new",
          "rotary_pct": 1.0, "rotary_emb_base": 500, "use_parallel_residual": False, "max_position_embeddings": 128,
          "layer_norm_eps": 1e-5, "tie_word_embeddings": False}
    config = config_from_hf(v4)
    assert (config.rope_theta, config.head_dim, config.mlp, config.norm, config.attention_bias) == \
        (500.0, 16, "gelu", "layernorm", True)


@pytest.mark.parametrize("change, message", [
    ({"use_parallel_residual": True}, "use_parallel_residual"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25}}, "rotary_pct"),
    ({"hidden_act": "gelu"}, "hidden_act = 'gelu'"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
])
def test_config_from_hf_refuses_neox_features_slmkit_does_not_compute(change, message):
    hf_config = {**hf_model("neox-untied-bias").config.to_dict(), **change}
    with pytest.raises(SlmError, match=message):
        config_from_hf(hf_config)


def test_pythia_style_config_is_refused_naming_the_parallel_residual():
    pythia = {"model_type": "gpt_neox", "hidden_size": 512, "num_attention_heads": 8, "num_hidden_layers": 6,
              "intermediate_size": 2048, "hidden_act": "gelu", "rotary_pct": 0.25, "use_parallel_residual": True}
    with pytest.raises(SlmError, match="unsupported|cannot be converted exactly"):
        config_from_hf(pythia)


# -- the whole export: AutoModelForCausalLM + AutoTokenizer give slmkit's greedy tokens -----------
def test_exported_model_and_tokenizer_generate_slmkit_greedy_tokens(tmp_path):
    from slmkit import api
    from slmkit.tokenizer import train_tokenizer

    text = "the king speaks to the queen of love and war. the fool sings of night and day. " * 20
    tokenizer = train_tokenizer([text, "my lord rides to the good knight"], "bpe:320")
    config = tiny_gpt_tiny_27m().replace(vocab_size=tokenizer.vocab_size)
    torch.manual_seed(3)
    model = Transformer(config).eval()
    files = tokenizer.save(tmp_path / "tok")
    save_model(model, tmp_path / "ckpt", extra_files={p.name: p for p in files.iterdir()})
    export_hf(tmp_path / "ckpt", tmp_path / "hf", audit=False)

    ours = api.generate(load_model(tmp_path / "ckpt"), "the king", "greedy", max_new_tokens=12)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    inputs = hf_tokenizer("the king", return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == tokenizer.encode("the king")
    with torch.no_grad():  # the stop ids and pad come from the export's generation_config.json
        out = hf.generate(**inputs, do_sample=False, max_new_tokens=12)
    # transformers keeps the end-of-text token that ended the text; slmkit reports it as the finish reason.
    expected = ours.tokens + ([tokenizer.eot_id] if ours.finish_reason == "eot" else [])
    assert out[0, inputs["input_ids"].shape[1]:].tolist() == expected
    assert len(expected) >= 3
