"""slmkit is exact against Hugging Face transformers: GPT-2, Llama (SmolLM2) and Gemma 3 (text).

Tiny randomly initialised HF models (float32, norms and biases randomised too, so a missing (1 + w)
or a dropped bias shows) are converted both ways; logits must agree within 1e-4 on sequences longer
than the sliding window, tensors must survive slmkit -> HF -> slmkit bit for bit, and parameter
counts must be equal. The sensitivity tests prove the comparison would catch the classic conversion
bugs (interleaved rotary, missing +1 on Gemma norms, K and V swapped in the fused projection).
"""

from __future__ import annotations

import json
from pathlib import Path

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
from slmkit.model import ModelConfig, Transformer, load_model, save_model  # noqa: E402

TOLERANCE = 1e-4
SEQ_LEN = 40  # longer than every sliding window below
VOCAB = 97


# -- tiny HF models -----------------------------------------------------------------------------
def _hf_config(case: str):
    t = transformers
    # A wide init makes attention sharp, so position and mask mistakes move the logits a lot.
    tokens = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "initializer_range": 0.2}
    if case == "gpt2":
        return t.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=3, n_head=4, n_inner=80,
                            layer_norm_epsilon=1e-5, **tokens)
    if case == "gpt2-untied":
        return t.GPT2Config(vocab_size=VOCAB, n_positions=48, n_embd=48, n_layer=2, n_head=3,
                            tie_word_embeddings=False, **tokens)
    if case == "llama-gqa-tied":
        return t.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                             max_position_embeddings=128, rope_parameters={"rope_type": "default", "rope_theta": 300.0},
                             tie_word_embeddings=True, **tokens)
    if case == "llama-mqa-untied-bias":
        return t.LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6,
                             max_position_embeddings=128, rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
                             attention_bias=True, mlp_bias=True, tie_word_embeddings=False, **tokens)
    if case == "gemma3-gqa":
        # 6 layers, a full layer every 3rd (layers 2 and 5), window 8, head_dim != d_model / n_heads.
        return t.Gemma3TextConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=128, rms_norm_eps=1e-6,
            query_pre_attn_scalar=24, sliding_window=8, sliding_window_pattern=3,
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}},
            **tokens)
    if case == "gemma3-mqa-untied":
        return t.Gemma3TextConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=2,
            num_key_value_heads=1, head_dim=32, max_position_embeddings=128, rms_norm_eps=1e-6,
            query_pre_attn_scalar=32, sliding_window=6, sliding_window_pattern=2, tie_word_embeddings=False,
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
            **tokens)
    raise ValueError(case)


CASES = ["gpt2", "gpt2-untied", "llama-gqa-tied", "llama-mqa-untied-bias", "gemma3-gqa", "gemma3-mqa-untied"]


def _randomise(model) -> None:
    """Move norms and biases away from their init, so that a norm or bias mistake changes the logits."""
    gemma = model.config.model_type.startswith("gemma")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.2)
            elif "norm" in name or ".ln_" in name:
                if gemma:
                    param.normal_(0.0, 0.3)  # scale is 1 + w
                else:
                    param.uniform_(0.5, 1.5)


_MODELS: dict[str, object] = {}


def hf_model(case: str):
    """A tiny HF model for `case`, built once per test session."""
    if case not in _MODELS:
        torch.manual_seed(sum(map(ord, case)))
        model = transformers.AutoModelForCausalLM.from_config(_hf_config(case), dtype=torch.float32)
        _randomise(model)
        _MODELS[case] = model.eval()
    return _MODELS[case]


def converted(hf) -> Transformer:
    config = config_from_hf(hf.config.to_dict())
    model = Transformer(config).eval()
    model.load_state_dict(state_from_hf(hf.state_dict(), config), strict=False)
    return model


def token_ids(batch: int = 2, length: int = SEQ_LEN) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)


def max_logit_diff(hf, model, ids=None) -> float:
    """Largest |logit difference| of an HF model and an slmkit (or second HF) model on the same ids."""
    ids = token_ids() if ids is None else ids
    with torch.no_grad():
        other = model(ids)
        other = other if isinstance(other, torch.Tensor) else other.logits
        return (hf(ids).logits - other).abs().max().item()


def perturbed(model: Transformer, config: ModelConfig | None = None, edit=None) -> Transformer:
    """A copy of `model` with a changed config and/or an edit applied to its state dict."""
    config = config or model.config
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if edit is not None:
        edit(state)
    copy = Transformer(config).eval()
    copy.load_state_dict(state)
    return copy


# -- parity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_logits_match_hf_after_conversion(case):
    hf = hf_model(case)
    assert max_logit_diff(hf, converted(hf)) <= TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_parameter_count_equals_hf(case):
    hf = hf_model(case)
    assert converted(hf).num_parameters() == hf.num_parameters()


@pytest.mark.parametrize("case", CASES)
def test_slmkit_to_hf_to_slmkit_is_identical(case):
    model = converted(hf_model(case))
    config = model.config
    state = {k: v for k, v in model.state_dict().items() if not (config.tie_embeddings and k == "lm_head.weight")}
    hf_config = config_to_hf(config)
    assert config_from_hf(hf_config) == config
    back = state_from_hf(state_to_hf(state, config), config)
    assert back.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor), name


@pytest.mark.parametrize("case", CASES)
def test_hf_to_slmkit_to_hf_reproduces_hf_tensors(case):
    hf = hf_model(case)
    config = config_from_hf(hf.config.to_dict())
    original = hf.state_dict()
    exported = state_to_hf(state_from_hf(original, config), config)
    expected = {k: v for k, v in original.items() if not (config.tie_embeddings and k == "lm_head.weight")}
    assert exported.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(exported[name], tensor), name


@pytest.mark.parametrize("case", CASES)
def test_export_hf_loads_in_transformers_with_same_logits(case, tmp_path):
    model = converted(hf_model(case))
    save_model(model, tmp_path / "ckpt")
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(reloaded) is type(hf_model(case))
    assert reloaded.num_parameters() == model.num_parameters()
    assert max_logit_diff(reloaded, model) <= TOLERANCE
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert written["torch_dtype"] == "float32" and written["architectures"] == [type(reloaded).__name__]


@pytest.mark.parametrize("case", ["gpt2", "llama-gqa-tied", "gemma3-gqa"])
def test_kv_cache_decoding_matches_hf_full_forward(case):
    hf = hf_model(case)
    model = converted(hf)
    ids = token_ids(batch=2, length=SEQ_LEN)
    with torch.no_grad():
        reference = hf(ids).logits
        cache = model.new_cache(2, SEQ_LEN)
        steps = [model(ids[:, :5], cache=cache)]
        for t in range(5, SEQ_LEN):
            steps.append(model(ids[:, t:t + 1], cache=cache))
    assert (torch.cat(steps, dim=1) - reference).abs().max().item() <= TOLERANCE


def test_hf_greedy_generation_equals_slmkit_greedy_decoding():
    hf = hf_model("gemma3-gqa")
    model = converted(hf)
    prompt = token_ids(batch=1, length=4)
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20,
                               pad_token_id=0)[0, 4:].tolist()
        cache, produced = model.new_cache(1, 24), []
        logits = model(prompt, cache=cache)
        for _ in range(20):
            token = logits[:, -1].argmax(-1, keepdim=True)
            produced.append(token.item())
            logits = model(token, cache=cache)
    assert produced == expected


# -- the parity test would catch the classic conversion bugs ------------------------------------
def _interleave_rotary_rows(config: ModelConfig):
    """Reorder each Q and K head's rows as if HF weights used the interleaved (GPT-J) rotary layout."""
    half = config.head_dim // 2
    order = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()

    def edit(state):
        for i in range(config.n_layers):
            weight = state[f"blocks.{i}.attn.qkv.weight"]
            heads = config.n_heads + config.n_kv_heads  # Q heads then K heads, V untouched
            qk = weight[: heads * config.head_dim].view(heads, config.head_dim, -1)
            weight[: heads * config.head_dim] = qk[:, order].reshape(heads * config.head_dim, -1)
    return edit


def _swap_k_and_v(config: ModelConfig):
    def edit(state):
        for i in range(config.n_layers):
            for kind in ("weight", "bias"):
                tensor = state.get(f"blocks.{i}.attn.qkv.{kind}")
                if tensor is None:
                    continue
                k = tensor[config.q_dim:config.q_dim + config.kv_dim].clone()
                tensor[config.q_dim:config.q_dim + config.kv_dim] = tensor[config.q_dim + config.kv_dim:]
                tensor[config.q_dim + config.kv_dim:] = k
    return edit


@pytest.mark.parametrize("case", ["llama-gqa-tied", "gemma3-gqa"])
def test_parity_detects_interleaved_rotary_convention(case):
    hf = hf_model(case)
    model = converted(hf)
    assert max_logit_diff(hf, perturbed(model, edit=_interleave_rotary_rows(model.config))) > 100 * TOLERANCE


@pytest.mark.parametrize("case", ["gpt2", "llama-gqa-tied", "gemma3-gqa"])
def test_parity_detects_k_and_v_swapped_in_fused_qkv(case):
    hf = hf_model(case)
    model = converted(hf)
    assert max_logit_diff(hf, perturbed(model, edit=_swap_k_and_v(model.config))) > 100 * TOLERANCE


def test_parity_detects_missing_unit_offset_on_gemma_norms():
    hf = hf_model("gemma3-gqa")
    model = converted(hf)
    wrong = perturbed(model, config=model.config.replace(norm_unit_offset=False))
    assert max_logit_diff(hf, wrong) > 100 * TOLERANCE


def test_parity_detects_swapped_rope_thetas_on_gemma():
    hf = hf_model("gemma3-gqa")
    model = converted(hf)
    config = model.config
    wrong = perturbed(model, config=config.replace(rope_theta=config.rope_theta_local,
                                                   rope_theta_local=config.rope_theta))
    assert max_logit_diff(hf, wrong) > 100 * TOLERANCE


def test_parity_detects_a_missing_sliding_window():
    hf = hf_model("gemma3-gqa")
    model = converted(hf)
    wrong = perturbed(model, config=model.config.replace(sliding_window=None, sliding_window_pattern=0))
    assert max_logit_diff(hf, wrong) > 100 * TOLERANCE


# -- import / export of directories -------------------------------------------------------------
@pytest.mark.parametrize("case", ["gpt2", "llama-mqa-untied-bias", "gemma3-gqa"])
def test_import_hf_from_save_pretrained_directory(case, tmp_path):
    hf = hf_model(case)
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text('{"version": "1.0"}')
    (tmp_path / "hf" / "merges.txt").write_text("#version: 0.2\n")
    out = import_hf(tmp_path / "hf", tmp_path / "slm")
    model = load_model(out)
    assert max_logit_diff(hf, model) <= TOLERANCE
    assert (out / "tokenizer.json").read_text() == '{"version": "1.0"}'
    assert (out / "merges.txt").is_file()
    assert json.loads((out / "config.json").read_text())["model"]["extra"]["hf"] == {
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def test_import_hf_reads_pytorch_model_bin(tmp_path):
    hf = hf_model("llama-gqa-tied")
    (tmp_path / "hf").mkdir()
    hf.config.save_pretrained(tmp_path / "hf")
    torch.save(hf.state_dict(), tmp_path / "hf" / "pytorch_model.bin")  # what save_pretrained wrote in v4
    model = load_model(import_hf(tmp_path / "hf", tmp_path / "slm"))
    assert max_logit_diff(hf, model) <= TOLERANCE


def test_import_hf_reads_sharded_safetensors(tmp_path):
    hf = hf_model("gemma3-mqa-untied")
    hf.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    model = load_model(import_hf(tmp_path / "hf", tmp_path / "slm"))
    assert max_logit_diff(hf, model) <= TOLERANCE


def test_import_hf_refuses_a_missing_shard(tmp_path):
    hf_model("gemma3-mqa-untied").save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    shards = sorted((tmp_path / "hf").glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(SlmError, match=f"lists shard {shards[-1].name}, which is missing"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    assert _no_leftovers(tmp_path, "out")


def test_import_hf_takes_the_language_model_of_a_multimodal_gemma3(tmp_path):
    from safetensors.torch import save_file

    hf = hf_model("gemma3-gqa")
    text = hf.config.to_dict()
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(
        {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "text_config": text,
         "vision_config": {"model_type": "siglip_vision_model"}, "tie_word_embeddings": True}))
    state = {k.replace("model.", "model.language_model.", 1): v.contiguous()
             for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    state["model.vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(4, 3)
    state["model.multi_modal_projector.mm_input_projection_weight"] = torch.zeros(4, 4)
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    model = load_model(import_hf(tmp_path / "hf", tmp_path / "slm"))
    assert max_logit_diff(hf, model) <= TOLERANCE


def test_export_hf_of_bias_free_gpt2_shape_writes_zero_biases_with_same_logits(tmp_path):
    config = ModelConfig(family="gpt2", vocab_size=VOCAB, context_length=64, n_layers=2, d_model=32, n_heads=4,
                         mlp="gelu", d_mlp=64, norm="layernorm", norm_bias=True, position="learned",
                         attention_bias=False, mlp_bias=False, tie_embeddings=True)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    save_model(model, tmp_path / "ckpt")
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert reloaded.transformer.h[0].attn.c_attn.bias.abs().sum() == 0
    assert max_logit_diff(reloaded, model) <= TOLERANCE
    # The zero biases import back into the bias-free config exactly.
    back = state_from_hf(reloaded.state_dict(), config)
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items() if k != "lm_head.weight")


def test_export_hf_resolves_a_run_directory_and_copies_tokenizer_files(tmp_path):
    model = converted(hf_model("llama-gqa-tied"))
    save_model(model, tmp_path / "run" / "checkpoints" / "best",
               extra_files={"vocab.json": _write(tmp_path / "vocab.json", "{}")})
    export_hf(tmp_path / "run", tmp_path / "hf")
    assert (tmp_path / "hf" / "vocab.json").read_text() == "{}"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- bad input ----------------------------------------------------------------------------------
def _no_leftovers(parent: Path, name: str) -> bool:
    return not (parent / name).exists() and not any(p.name.startswith(f".{name}.") for p in parent.iterdir())


def test_import_hf_refuses_unsupported_architecture_naming_it(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(SlmError, match=r"unsupported Hugging Face model_type 'bert'.*gpt2, llama, gemma3_text"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    assert _no_leftovers(tmp_path, "out")


@pytest.mark.parametrize("case, change, message", [
    ("llama-gqa-tied", {"rope_scaling": {"rope_type": "linear", "factor": 8.0}}, "rope_scaling"),
    ("llama-gqa-tied", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "yarn"),
    ("llama-gqa-tied", {"hidden_act": "gelu"}, "hidden_act"),
    ("gemma3-gqa", {"final_logit_softcapping": 30.0}, "final_logit_softcapping"),
    ("gemma3-gqa", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    ("gemma3-gqa", {"use_bidirectional_attention": True}, "bidirectional"),
    ("gemma3-gqa", {"layer_types": ["full_attention"] + ["sliding_attention"] * 5}, "layer_types"),
    ("gpt2", {"activation_function": "gelu"}, "activation_function"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
])
def test_config_from_hf_refuses_features_slmkit_does_not_compute(case, change, message):
    hf_config = {**hf_model(case).config.to_dict(), **change}
    with pytest.raises(SlmError, match=message):
        config_from_hf(hf_config)


@pytest.mark.parametrize("change, message", [
    ({"mlp": "swiglu", "norm": "layernorm"}, r"LlamaForCausalLM.*norm = 'layernorm' \(needs 'rmsnorm'\)"),
    ({"mlp": "gelu", "norm": "rmsnorm"}, r"GPTNeoXForCausalLM.*norm = 'rmsnorm' \(needs 'layernorm'\)"),
    ({"mlp": "gelu", "norm": "layernorm", "n_kv_heads": 2}, r"GPTNeoXForCausalLM.*n_kv_heads = 2 \(needs 4\)"),
])
def test_config_to_hf_refuses_a_config_no_hf_architecture_expresses(change, message):
    config = ModelConfig(vocab_size=100, n_layers=2, d_model=32, n_heads=4, d_mlp=64, position="rope", **change)
    with pytest.raises(SlmError, match=message):
        config_to_hf(config)


def test_import_hf_refuses_missing_directory_config_and_weights(tmp_path):
    with pytest.raises(SlmError, match="not found"):
        import_hf(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "hf").mkdir()
    with pytest.raises(SlmError, match="no config.json"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    hf_model("gpt2").config.save_pretrained(tmp_path / "hf")
    with pytest.raises(SlmError, match="has no weights"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    assert _no_leftovers(tmp_path, "out")


def test_import_hf_refuses_truncated_safetensors_and_writes_nothing(tmp_path):
    hf_model("gpt2").save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(SlmError, match="truncated or damaged"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    assert _no_leftovers(tmp_path, "out")


def test_import_hf_refuses_truncated_bin(tmp_path):
    hf = hf_model("gpt2")
    hf.config.save_pretrained(tmp_path / "hf")
    torch.save(hf.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    weights = tmp_path / "hf" / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(SlmError, match="truncated or damaged"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    assert _no_leftovers(tmp_path, "out")


class _RunsCodeWhenUnpickled:
    marker: Path

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_import_hf_reads_bin_with_weights_only_so_no_code_runs(tmp_path):
    hf = hf_model("gpt2")
    hf.config.save_pretrained(tmp_path / "hf")
    payload = _RunsCodeWhenUnpickled()
    payload.marker = tmp_path / "code-ran"
    torch.save({**hf.state_dict(), "evil": payload}, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(SlmError, match="could run code"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    assert not payload.marker.exists()
    assert _no_leftovers(tmp_path, "out")


def test_import_hf_refuses_missing_and_misshaped_tensors(tmp_path):
    from safetensors.torch import save_file

    hf = hf_model("llama-gqa-tied")
    hf.config.save_pretrained(tmp_path / "hf")
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    del state["model.layers.1.self_attn.k_proj.weight"]
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(SlmError, match=r"lack 1 tensor.*layers\.1\.self_attn\.k_proj\.weight"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    state["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(3, 32)
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(SlmError, match=r"k_proj\.weight has shape \(3, 32\).*\(16, 32\)"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    assert _no_leftovers(tmp_path, "out")


def test_import_hf_replaces_its_own_output_only_with_force_and_never_a_users_folder(tmp_path):
    hf_model("gpt2").save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "out")
    with pytest.raises(SlmError, match="already exists.*pass --force"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    import_hf(tmp_path / "hf", tmp_path / "out", overwrite=True)  # its own earlier output: replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(SlmError, match=r"will not replace .*mine: it holds 1 entry \(notes.txt\)"):
            import_hf(tmp_path / "hf", tmp_path / "mine", overwrite=overwrite)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_cli_import_and_export_round_trip_and_errors_in_one_line(tmp_path, capsys):
    from slmkit.cli import main

    hf = hf_model("gemma3-gqa")
    hf.save_pretrained(tmp_path / "hf")
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "slm")]) == 0
    assert main(["export-hf", str(tmp_path / "slm"), str(tmp_path / "back")]) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert max_logit_diff(hf, reloaded) <= TOLERANCE
    capsys.readouterr()
    assert main(["import-hf", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Hugging Face model directory not found") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


# -- presets against transformers' own parameter count -------------------------------------------
@pytest.mark.parametrize("preset, expected", [
    ("smollm2-135m", None), ("gemma3-270m", 268_098_176), ("gpt2-124m", 124_439_808)])
def test_preset_parameter_count_equals_transformers_count(preset, expected):
    from slmkit.config import load_model_config

    config = load_model_config(preset=preset)
    hf_config = transformers.AutoConfig.for_model(**config_to_hf(config))
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(hf_config)
        model = Transformer(config)
    assert model.num_parameters() == hf.num_parameters()
    if expected is not None:
        assert hf.num_parameters() == expected


# -- real Hub configs (transformers v4 spelling) import as the presets ---------------------------
SMOLLM2_135M_CONFIG = {  # HuggingFaceTB/SmolLM2-135M config.json
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 0,
    "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.041666666666666664,
    "intermediate_size": 1536, "is_llama_config": True, "max_position_embeddings": 8192, "model_type": "llama",
    "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_interleaved": False, "rope_scaling": None, "rope_theta": 100000,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": True,
    "vocab_size": 49152,
}
GEMMA3_270M_CONFIG = {  # google/gemma-3-270m config.json
    "_sliding_window_pattern": 6, "architectures": ["Gemma3ForCausalLM"], "attention_bias": False,
    "attention_dropout": 0.0, "attn_logit_softcapping": None, "bos_token_id": 2, "eos_token_id": 1,
    "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 640,
    "initializer_range": 0.02, "intermediate_size": 2048,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3, "max_position_embeddings": 32768,
    "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 18, "num_key_value_heads": 1,
    "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0,
    "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": 512, "torch_dtype": "bfloat16",
    "use_bidirectional_attention": False, "use_cache": True, "vocab_size": 262144,
}
GPT2_CONFIG = {  # openai-community/gpt2 config.json (model fields)
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12,
    "n_positions": 1024, "resid_pdrop": 0.1, "vocab_size": 50257,
}


@pytest.mark.parametrize("hub_config, preset", [
    (SMOLLM2_135M_CONFIG, "smollm2-135m"), (GEMMA3_270M_CONFIG, "gemma3-270m"), (GPT2_CONFIG, "gpt2-124m")])
def test_hub_config_imports_as_the_preset(hub_config, preset):
    from slmkit.config import load_model_config

    ignore = ("name", "extra", "dropout", "init_std")
    imported = {k: v for k, v in config_from_hf(hub_config).to_dict().items() if k not in ignore}
    expected = {k: v for k, v in load_model_config(preset=preset).to_dict().items() if k not in ignore}
    assert imported == expected


def test_import_hf_accepts_original_gpt2_key_spelling_and_mask_buffers(tmp_path):
    from safetensors.torch import save_file

    hf = hf_model("gpt2")
    hf.config.save_pretrained(tmp_path / "hf")
    # The OpenAI upload has no "transformer." prefix and stores each layer's causal-mask buffer.
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items()
             if k != "lm_head.weight"}
    for i in range(hf.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    assert max_logit_diff(hf, load_model(import_hf(tmp_path / "hf", tmp_path / "slm"))) <= TOLERANCE


def test_export_hf_exports_the_checkpoint_tokenizer_for_autotokenizer(tmp_path):
    from slmkit.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["the quick brown fox jumps over the lazy dog. " * 10, "a second document"],
                                "bpe:300")
    config = ModelConfig(vocab_size=tokenizer.vocab_size, n_layers=1, d_model=32, n_heads=4, d_mlp=64)
    save_model(Transformer(config), tmp_path / "ckpt")
    tokenizer.save(tmp_path / "ckpt")
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tokenizer("the lazy fox")["input_ids"] == tokenizer.encode("the lazy fox")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == tokenizer.eot_id


def test_import_and_export_run_without_transformers_installed(tmp_path):
    import subprocess
    import sys

    hf = hf_model("llama-gqa-tied")
    hf.save_pretrained(tmp_path / "hf")
    script = (
        "import sys; sys.modules['transformers'] = None\n"  # any import of transformers now fails
        "from slmkit.interop.hf import import_hf, export_hf\n"
        f"import_hf({str(tmp_path / 'hf')!r}, {str(tmp_path / 'slm')!r})\n"
        f"export_hf({str(tmp_path / 'slm')!r}, {str(tmp_path / 'back')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).resolve().parents[1])
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert max_logit_diff(hf, reloaded) <= TOLERANCE
