"""Model configs between slmkit and Hugging Face transformers, as plain dicts (no transformers import).

Four HF architectures map onto ModelConfig switches exactly:

    GPT2LMHeadModel     ("gpt2")         learned positions, LayerNorm, GELU (tanh) MLP, fused biased QKV
    LlamaForCausalLM    ("llama")        RoPE, RMSNorm, SwiGLU, GQA (SmolLM2 is this)
    Gemma3ForCausalLM   ("gemma3_text")  RoPE with two thetas, (1 + w) RMSNorm, sandwich norms, GeGLU,
                                         QK-norm, sliding window, scaled embeddings
    GPTNeoXForCausalLM  ("gpt_neox")     RoPE over the whole head, LayerNorm, GELU (tanh) MLP, sequential
                                         residual (the rotary GPT presets: gpt-tiny-27m, gpt-small-46m)

A multimodal "gemma3" config is read through its `text_config`. Anything an HF config asks for that
the slmkit model does not compute (rope scaling, logit soft-capping, ...) is refused with SlmError
rather than imported approximately. Both the transformers v4 (`rope_theta`, `rope_scaling`) and v5
(`rope_parameters`) spellings are read; exports write both.
"""

from __future__ import annotations

from slmkit.errors import SlmError
from slmkit.model.config import ModelConfig

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "gemma3_text", "gemma3", "gpt_neox")
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "gemma3": "Gemma3ForCausalLM",
                 "gpt_neox": "GPTNeoXForCausalLM"}
MODEL_TYPES = {"gpt2": "gpt2", "llama": "llama", "gemma3": "gemma3_text", "gpt_neox": "gpt_neox"}
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # the tanh-approximate GELU the slmkit model computes
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")

# transformers' defaults (v5) for keys an HF config.json may leave out.
_DEFAULTS = {
    "gpt2": {
        "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None,
        "activation_function": "gelu_new", "resid_pdrop": 0.1, "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False, "tie_word_embeddings": True,
    },
    "llama": {
        "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": None, "head_dim": None, "hidden_act": "silu",
        "max_position_embeddings": 2048, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False, "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
    },
    "gemma3_text": {
        "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131072, "initializer_range": 0.02,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "attention_bias": False, "attention_dropout": 0.0,
        "query_pre_attn_scalar": 256, "sliding_window": 4096, "layer_types": None,
        "final_logit_softcapping": None, "attn_logit_softcapping": None, "use_bidirectional_attention": False,
    },
    "gpt_neox": {
        "vocab_size": 50432, "hidden_size": 6144, "num_hidden_layers": 44, "num_attention_heads": 64,
        "intermediate_size": 24576, "hidden_act": "gelu", "attention_dropout": 0.0, "hidden_dropout": 0.0,
        "max_position_embeddings": 2048, "initializer_range": 0.02, "layer_norm_eps": 1e-5,
        "tie_word_embeddings": False, "use_parallel_residual": True, "attention_bias": True,
        "rotary_pct": 0.25, "rotary_emb_base": 10000.0,  # the v4 spellings of partial_rotary_factor, rope_theta
    },
}
_DEFAULT_THETA = {"llama": 10000.0, "gemma3_full": 1_000_000.0, "gemma3_sliding": 10000.0, "gpt_neox": 10000.0}


# -- HF -> slmkit -------------------------------------------------------------------------------
def config_from_hf(hf_config: dict) -> ModelConfig:
    """The ModelConfig of an HF `config.json` (a dict) for gpt2, llama, gemma3_text, gemma3 or gpt_neox.

    Raises SlmError for another model_type, or for a feature the slmkit model does not compute.
    The HF special token ids (bos/eos/pad), when set, are kept in `config.extra["hf"]`. Biases that the
    HF architecture always has (GPT-2's, GPT-NeoX's LayerNorm and MLP biases) are switched on; an
    import whose weights hold them all zero switches them off again (`hf_state.without_zero_biases`).
    """
    if not isinstance(hf_config, dict):
        raise SlmError(f"a Hugging Face config must be a JSON object, got {type(hf_config).__name__}")
    model_type = hf_config.get("model_type")
    if model_type == "gemma3":
        hf_config = _gemma3_text_config(hf_config)
        model_type = "gemma3_text"
    if model_type not in _DEFAULTS:
        raise SlmError(
            f"unsupported Hugging Face model_type {model_type!r}; slmkit converts "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (GPT-2, Llama/SmolLM2, Gemma 3 text, GPT-NeoX)"
        )
    values = {**_DEFAULTS[model_type], **{k: v for k, v in hf_config.items() if v is not None}}
    for key in ("n_inner", "num_key_value_heads", "head_dim", "layer_types", "sliding_window"):  # None means something
        if key in hf_config and hf_config[key] is None:
            values[key] = None
    reader = {"gpt2": _gpt2_from_hf, "llama": _llama_from_hf, "gemma3_text": _gemma3_from_hf,
              "gpt_neox": _neox_from_hf}[model_type]
    config = reader(values)
    tokens = {key: hf_config[key] for key in TOKEN_ID_KEYS if hf_config.get(key) is not None}
    if tokens:
        config.extra["hf"] = tokens
    return config.validate()


def _gemma3_text_config(hf_config: dict) -> dict:
    """The text model's config inside a multimodal Gemma 3 config (its language model is a Gemma3 text model)."""
    text = hf_config.get("text_config")
    if not isinstance(text, dict):
        raise SlmError("Hugging Face config has model_type 'gemma3' but no text_config object; "
                       "slmkit imports the text model of a multimodal Gemma 3 from its text_config")
    text = {**text, "model_type": "gemma3_text"}
    if "tie_word_embeddings" in hf_config:  # the multimodal model ties its head from the top-level flag
        text["tie_word_embeddings"] = hf_config["tie_word_embeddings"]
    return text


def _unsupported(model_type: str, what: str) -> SlmError:
    return SlmError(f"Hugging Face {model_type} config: {what}; the slmkit model does not compute this, "
                    f"so the model cannot be converted exactly")


def _check_rope(model_type: str, params, label: str = "rope_scaling") -> None:
    """Refuse any RoPE variant other than plain rotary (rope_type "default" with no scaling)."""
    if params is None:
        return
    if not isinstance(params, dict):
        raise _unsupported(model_type, f"{label} = {params!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    scaled = params.get("factor") not in (None, 1, 1.0)
    partial = params.get("partial_rotary_factor") not in (None, 1, 1.0)
    if rope_type != "default" or scaled or partial:
        shown = {k: v for k, v in params.items() if k != "rope_theta"}
        raise _unsupported(model_type, f"{label} = {shown} (slmkit implements plain RoPE only)")


def _rope_theta(values: dict, model_type: str, layer_type: str | None, fallback: float) -> float:
    """rope_theta from v5 `rope_parameters` (per layer type for Gemma 3) or v4 top-level keys."""
    params = values.get("rope_parameters")
    if isinstance(params, dict) and layer_type is not None and layer_type in params:
        params = params[layer_type]
    elif isinstance(params, dict) and layer_type is not None and "rope_type" not in params:
        params = None  # per-layer-type dict without this type: use the v4 keys or the default
    if isinstance(params, dict) and params:
        _check_rope(model_type, params, "rope_parameters" + (f"[{layer_type!r}]" if layer_type else ""))
        if params.get("rope_theta") is not None:
            return float(params["rope_theta"])
    v4_key = "rope_local_base_freq" if layer_type == "sliding_attention" else "rope_theta"
    return float(values.get(v4_key, fallback))


def _gpt2_from_hf(values: dict) -> ModelConfig:
    if values["activation_function"] not in TANH_GELUS:
        raise _unsupported("gpt2", f"activation_function = {values['activation_function']!r} "
                                   f"(slmkit's GELU MLP is the tanh form: {', '.join(TANH_GELUS)})")
    if values["scale_attn_by_inverse_layer_idx"]:
        raise _unsupported("gpt2", "scale_attn_by_inverse_layer_idx = true")
    if values["add_cross_attention"]:
        raise _unsupported("gpt2", "add_cross_attention = true")
    d_model, n_heads = int(values["n_embd"]), int(values["n_head"])
    head_dim = d_model // n_heads
    return ModelConfig(
        family="gpt2", vocab_size=int(values["vocab_size"]), context_length=int(values["n_positions"]),
        n_layers=int(values["n_layer"]), d_model=d_model, n_heads=n_heads, n_kv_heads=n_heads, head_dim=head_dim,
        mlp="gelu", d_mlp=int(values["n_inner"] or 4 * d_model),
        norm="layernorm", norm_eps=float(values["layer_norm_epsilon"]), norm_bias=True,
        position="learned", attention_bias=True, mlp_bias=True,
        tie_embeddings=bool(values["tie_word_embeddings"]),
        # GPT-2 without scale_attn_weights uses raw dot products: a scale of 1 ** -0.5.
        query_pre_attn_scalar=None if values["scale_attn_weights"] else 1.0,
        dropout=float(values["resid_pdrop"]), init_std=float(values["initializer_range"]),
    )


def _llama_from_hf(values: dict) -> ModelConfig:
    if values["hidden_act"] != "silu":
        raise _unsupported("llama", f"hidden_act = {values['hidden_act']!r} (slmkit's SwiGLU uses silu)")
    _check_rope("llama", values.get("rope_scaling"))
    if values.get("partial_rotary_factor") not in (None, 1, 1.0):
        raise _unsupported("llama", f"partial_rotary_factor = {values['partial_rotary_factor']}")
    d_model, n_heads = int(values["hidden_size"]), int(values["num_attention_heads"])
    return ModelConfig(
        family="llama", vocab_size=int(values["vocab_size"]),
        context_length=int(values["max_position_embeddings"]), n_layers=int(values["num_hidden_layers"]),
        d_model=d_model, n_heads=n_heads, n_kv_heads=int(values["num_key_value_heads"] or n_heads),
        head_dim=int(values["head_dim"] or d_model // n_heads), mlp="swiglu",
        d_mlp=int(values["intermediate_size"]), norm="rmsnorm", norm_eps=float(values["rms_norm_eps"]),
        position="rope", rope_theta=_rope_theta(values, "llama", None, _DEFAULT_THETA["llama"]),
        attention_bias=bool(values["attention_bias"]), mlp_bias=bool(values["mlp_bias"]),
        tie_embeddings=bool(values["tie_word_embeddings"]), dropout=float(values["attention_dropout"]),
        init_std=float(values["initializer_range"]),
    )


def _gemma3_from_hf(values: dict) -> ModelConfig:
    activation = values.get("hidden_activation") or values.get("hidden_act")
    if activation not in TANH_GELUS:
        raise _unsupported("gemma3_text", f"hidden_activation = {activation!r} "
                                          f"(slmkit's GeGLU is the tanh form: {', '.join(TANH_GELUS)})")
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if values[key] is not None:
            raise _unsupported("gemma3_text", f"{key} = {values[key]} (only None is supported)")
    if values["use_bidirectional_attention"]:
        raise _unsupported("gemma3_text", "use_bidirectional_attention = true")
    _check_rope("gemma3_text", values.get("rope_scaling"))
    n_layers = int(values["num_hidden_layers"])
    window, pattern = _gemma3_window(values, n_layers)
    return ModelConfig(
        family="gemma3", vocab_size=int(values["vocab_size"]),
        context_length=int(values["max_position_embeddings"]), n_layers=n_layers,
        d_model=int(values["hidden_size"]), n_heads=int(values["num_attention_heads"]),
        n_kv_heads=int(values["num_key_value_heads"]), head_dim=int(values["head_dim"]), mlp="geglu",
        d_mlp=int(values["intermediate_size"]), norm="rmsnorm", norm_eps=float(values["rms_norm_eps"]),
        norm_unit_offset=True, norm_placement="sandwich", position="rope",
        rope_theta=_rope_theta(values, "gemma3_text", "full_attention", _DEFAULT_THETA["gemma3_full"]),
        rope_theta_local=_rope_theta(values, "gemma3_text", "sliding_attention", _DEFAULT_THETA["gemma3_sliding"]),
        sliding_window=window, sliding_window_pattern=pattern, qk_norm=True,
        attention_bias=bool(values["attention_bias"]), mlp_bias=False,
        tie_embeddings=bool(values["tie_word_embeddings"]), embedding_scale=True,
        query_pre_attn_scalar=float(values["query_pre_attn_scalar"]),
        dropout=float(values["attention_dropout"]), init_std=float(values["initializer_range"]),
    )


def _neox_from_hf(values: dict) -> ModelConfig:
    if values["hidden_act"] not in TANH_GELUS:
        raise _unsupported("gpt_neox", f"hidden_act = {values['hidden_act']!r} "
                                       f"(slmkit's GELU MLP is the tanh form: {', '.join(TANH_GELUS)})")
    if values["use_parallel_residual"]:
        raise _unsupported("gpt_neox", "use_parallel_residual = true (slmkit adds attention, then the MLP, "
                                       "to the residual in sequence)")
    params = values.get("rope_parameters")
    partial = values["rotary_pct"]
    if isinstance(params, dict) and params.get("partial_rotary_factor") is not None:
        partial = params["partial_rotary_factor"]
    if partial not in (1, 1.0):
        raise _unsupported("gpt_neox", f"rotary_pct (partial_rotary_factor) = {partial} (slmkit rotates the "
                                       f"whole head: 1.0)")
    _check_rope("gpt_neox", values.get("rope_scaling"))
    d_model, n_heads = int(values["hidden_size"]), int(values["num_attention_heads"])
    if d_model % n_heads:
        raise _unsupported("gpt_neox", f"hidden_size = {d_model} not divisible by num_attention_heads = {n_heads}")
    return ModelConfig(
        family="gpt", vocab_size=int(values["vocab_size"]), context_length=int(values["max_position_embeddings"]),
        n_layers=int(values["num_hidden_layers"]), d_model=d_model, n_heads=n_heads, n_kv_heads=n_heads,
        head_dim=d_model // n_heads, mlp="gelu", d_mlp=int(values["intermediate_size"]),
        norm="layernorm", norm_eps=float(values["layer_norm_eps"]), norm_bias=True, position="rope",
        rope_theta=_rope_theta({**values, "rope_theta": values["rotary_emb_base"]}, "gpt_neox", None,
                               _DEFAULT_THETA["gpt_neox"]),
        attention_bias=bool(values["attention_bias"]), mlp_bias=True,
        tie_embeddings=bool(values["tie_word_embeddings"]), dropout=float(values["hidden_dropout"]),
        init_std=float(values["initializer_range"]),
    )


def _gemma3_window(values: dict, n_layers: int) -> tuple[int | None, int]:
    """(sliding_window, sliding_window_pattern) expressing the HF `layer_types` list exactly."""
    pattern = values.get("sliding_window_pattern", values.get("_sliding_window_pattern", 6))
    layer_types = values.get("layer_types")
    if layer_types is None:
        layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)]
    layer_types = list(layer_types)
    if len(layer_types) != n_layers or set(layer_types) - {"full_attention", "sliding_attention"}:
        raise _unsupported("gemma3_text", f"layer_types = {layer_types} (expected {n_layers} entries of "
                                          f"'full_attention' / 'sliding_attention')")
    if "sliding_attention" not in layer_types:
        return None, 0
    window = values.get("sliding_window")
    if not isinstance(window, int) or window <= 0:
        raise _unsupported("gemma3_text", f"sliding_window = {window!r} with sliding layers")
    full = [i for i, kind in enumerate(layer_types) if kind == "full_attention"]
    candidates = [int(pattern)] if isinstance(pattern, int) and pattern > 0 else []
    candidates += [full[0] + 1] if full else [0]
    for candidate in candidates:
        expected = ["full_attention" if candidate and (i + 1) % candidate == 0 else "sliding_attention"
                    for i in range(n_layers)]
        if expected == layer_types:
            return window, candidate
    raise _unsupported("gemma3_text", f"layer_types with full attention at layers {full}: slmkit places a "
                                      f"full layer every k-th layer (k = 1, 2, ...), which this is not")


# -- slmkit -> HF -------------------------------------------------------------------------------
def hf_family(config: ModelConfig) -> str:
    """"gpt2", "llama", "gemma3" or "gpt_neox": the HF architecture that expresses `config` exactly.

    Chosen from the switches (learned positions: GPT-2; Gemma's norms, QK-norm, scaled embeddings or a
    window: Gemma 3; a plain GELU MLP: GPT-NeoX; else Llama), then checked. Raises SlmError listing
    every switch that the chosen (closest) architecture cannot express.
    """
    if config.position == "learned":
        family = "gpt2"
    elif (config.norm_placement == "sandwich" or config.norm_unit_offset or config.qk_norm
          or config.embedding_scale or config.sliding_window is not None):
        family = "gemma3"
    elif config.mlp == "gelu":
        family = "gpt_neox"
    else:
        family = "llama"
    problems = _MISFITS[family](config)
    if problems:
        raise SlmError(
            f"model config cannot be exported exactly as a Hugging Face {ARCHITECTURES[family]} "
            f"(the closest architecture): {'; '.join(problems)}"
        )
    return family


def _misfit(config: ModelConfig, needs: dict) -> list[str]:
    return [f"{name} = {getattr(config, name)!r} (needs {want!r})"
            for name, want in needs.items() if getattr(config, name) != want]


def _gpt2_misfits(config: ModelConfig) -> list[str]:
    problems = _misfit(config, {"norm": "layernorm", "norm_placement": "pre", "mlp": "gelu", "qk_norm": False,
                                "embedding_scale": False, "n_kv_heads": config.n_heads,
                                "head_dim": config.d_model // config.n_heads})
    if config.d_model % config.n_heads:
        problems.append(f"d_model = {config.d_model} not divisible by n_heads = {config.n_heads}")
    if config.query_pre_attn_scalar not in (None, float(config.head_dim), 1.0):
        problems.append(f"query_pre_attn_scalar = {config.query_pre_attn_scalar} "
                        f"(needs None, head_dim or 1)")
    return problems


def _llama_misfits(config: ModelConfig) -> list[str]:
    problems = _misfit(config, {"norm": "rmsnorm", "norm_unit_offset": False, "norm_placement": "pre",
                                "mlp": "swiglu", "position": "rope", "qk_norm": False,
                                "embedding_scale": False, "sliding_window": None})
    if config.d_model % config.n_heads:
        problems.append(f"d_model = {config.d_model} not divisible by n_heads = {config.n_heads} "
                        f"(LlamaConfig refuses it)")
    if config.query_pre_attn_scalar not in (None, float(config.head_dim)):
        problems.append(f"query_pre_attn_scalar = {config.query_pre_attn_scalar} (needs None or head_dim)")
    if config.rope_theta_local not in (None, config.rope_theta):
        problems.append(f"rope_theta_local = {config.rope_theta_local} (Llama has one rope_theta)")
    return problems


def _gemma3_misfits(config: ModelConfig) -> list[str]:
    problems = _misfit(config, {"norm": "rmsnorm", "norm_unit_offset": True, "norm_placement": "sandwich",
                                "mlp": "geglu", "position": "rope", "qk_norm": True, "embedding_scale": True,
                                "mlp_bias": False})
    if config.d_model % config.n_heads:
        problems.append(f"d_model = {config.d_model} not divisible by n_heads = {config.n_heads} "
                        f"(Gemma3TextConfig refuses it)")
    scalar = config.query_pre_attn_scalar
    if scalar is not None and not float(scalar).is_integer():
        problems.append(f"query_pre_attn_scalar = {scalar} (Gemma3TextConfig needs a whole number)")
    return problems


def _neox_misfits(config: ModelConfig) -> list[str]:
    problems = _misfit(config, {"norm": "layernorm", "norm_placement": "pre", "mlp": "gelu", "position": "rope",
                                "qk_norm": False, "embedding_scale": False, "sliding_window": None,
                                "n_kv_heads": config.n_heads, "head_dim": config.d_model // config.n_heads})
    if config.d_model % config.n_heads:
        problems.append(f"d_model = {config.d_model} not divisible by n_heads = {config.n_heads} "
                        f"(GPTNeoXConfig refuses it)")
    if config.query_pre_attn_scalar not in (None, float(config.head_dim)):
        problems.append(f"query_pre_attn_scalar = {config.query_pre_attn_scalar} (needs None or head_dim)")
    if config.rope_theta_local not in (None, config.rope_theta):
        problems.append(f"rope_theta_local = {config.rope_theta_local} (GPT-NeoX has one rotary base)")
    return problems


_MISFITS = {"gpt2": _gpt2_misfits, "llama": _llama_misfits, "gemma3": _gemma3_misfits, "gpt_neox": _neox_misfits}


def config_to_hf(config: ModelConfig, dtype: str = "float32") -> dict:
    """The HF `config.json` dict (architectures, model_type, dtype and the model's fields) for `config`.

    dtype: the name of the weights' torch dtype ("float32", "bfloat16", ...), recorded as
    `torch_dtype` (transformers v4) and `dtype` (v5). Raises SlmError when no supported HF
    architecture expresses `config` exactly (see `hf_family`).
    """
    config.validate()
    family = hf_family(config)
    hf = {"architectures": [ARCHITECTURES[family]], "model_type": MODEL_TYPES[family]}
    hf.update({"gpt2": _gpt2_to_hf, "llama": _llama_to_hf, "gemma3": _gemma3_to_hf,
               "gpt_neox": _neox_to_hf}[family](config))
    tokens = config.extra.get("hf", {}) if isinstance(config.extra, dict) else {}
    for key in TOKEN_ID_KEYS:
        hf[key] = tokens.get(key)
    hf.update({"tie_word_embeddings": config.tie_embeddings, "initializer_range": config.init_std,
               "torch_dtype": dtype, "dtype": dtype})
    return hf


def _gpt2_to_hf(config: ModelConfig) -> dict:
    return {
        "vocab_size": config.vocab_size, "n_positions": config.context_length, "n_embd": config.d_model,
        "n_layer": config.n_layers, "n_head": config.n_heads, "n_inner": config.d_mlp,
        "activation_function": "gelu_new", "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "scale_attn_weights": config.query_pre_attn_scalar != 1.0 or config.head_dim == 1,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
    }


def _rope_fields(theta: float) -> dict:
    return {"rope_type": "default", "rope_theta": theta}


def _llama_to_hf(config: ModelConfig) -> dict:
    return {
        "vocab_size": config.vocab_size, "hidden_size": config.d_model, "intermediate_size": config.d_mlp,
        "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads, "head_dim": config.head_dim, "hidden_act": "silu",
        "max_position_embeddings": config.context_length, "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta, "rope_scaling": None, "rope_parameters": _rope_fields(config.rope_theta),
        "attention_bias": config.attention_bias, "attention_dropout": config.dropout,
        "mlp_bias": config.mlp_bias,
    }


def _gemma3_to_hf(config: ModelConfig) -> dict:
    local = config.rope_theta_local if config.rope_theta_local is not None else config.rope_theta
    layer_types = [f"{kind}_attention" for kind in config.layer_types()]
    scalar = config.query_pre_attn_scalar if config.query_pre_attn_scalar is not None else config.head_dim
    # With no sliding layer the window is unused; HF still wants a number.
    window = config.sliding_window if config.sliding_window is not None else config.context_length
    return {
        "vocab_size": config.vocab_size, "hidden_size": config.d_model, "intermediate_size": config.d_mlp,
        "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads, "head_dim": config.head_dim,
        "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": config.context_length,
        "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta, "rope_local_base_freq": local,
        "rope_scaling": None,
        "rope_parameters": {"full_attention": _rope_fields(config.rope_theta),
                            "sliding_attention": _rope_fields(local)},
        "sliding_window": window, "layer_types": layer_types,
        "sliding_window_pattern": config.sliding_window_pattern,
        "query_pre_attn_scalar": int(scalar), "attention_bias": config.attention_bias,
        "attention_dropout": config.dropout, "final_logit_softcapping": None, "attn_logit_softcapping": None,
        "use_bidirectional_attention": False,
    }


def _neox_to_hf(config: ModelConfig) -> dict:
    # Sequential residual and rotary over the whole head; v4 spellings (rotary_pct, rotary_emb_base) and v5.
    return {
        "vocab_size": config.vocab_size, "hidden_size": config.d_model, "intermediate_size": config.d_mlp,
        "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "hidden_act": "gelu_pytorch_tanh", "max_position_embeddings": config.context_length,
        "layer_norm_eps": config.norm_eps, "use_parallel_residual": False, "rotary_pct": 1.0,
        "rotary_emb_base": config.rope_theta, "rope_scaling": None,
        "rope_parameters": {**_rope_fields(config.rope_theta), "partial_rotary_factor": 1.0},
        "attention_bias": config.attention_bias, "attention_dropout": config.dropout,
        "hidden_dropout": config.dropout,
    }
