"""What a ModelConfig costs: parameters by part, memory, FLOPs per token and KV-cache bytes.

All figures come from the config alone (nothing is allocated). Conventions:
- parameters count a tied output head once, as Hugging Face does;
- forward FLOPs per token = 2 x (matrix parameters, the output head included, embeddings excluded)
  + attention scores and weighted sum, 4 x n_heads x head_dim x context per layer, where a sliding
  layer's context is its window (the PaLM convention: the causal half is not discounted);
- training FLOPs per token = 3 x forward (that is 6N plus attention, N the matrix parameters);
- AdamW training memory = fp32 weights + fp32 gradients + two fp32 moments = 16 bytes per parameter,
  activations excluded (they depend on batch size and sequence length).
"""

from __future__ import annotations

from dataclasses import dataclass

from slmkit.model.config import ModelConfig


@dataclass(frozen=True)
class ModelStats:
    embeddings: int  # token embeddings (+ learned positions)
    attention: int  # Q, K, V, output projections (+ biases, + QK-norm weights)
    mlp: int
    norms: int
    output_head: int  # 0 when tied to the embeddings
    total: int
    forward_flops_per_token: int
    training_flops_per_token: int
    kv_cache_bytes_per_token_full: int  # bf16, summed over full-attention layers
    kv_cache_bytes_per_token_sliding: int  # bf16, summed over sliding layers (until the window fills)
    kv_cache_sliding_cap_bytes: int  # bf16, the most the sliding layers ever hold (window tokens)

    def weight_bytes(self, bytes_per_param: int) -> int:
        return self.total * bytes_per_param

    @property
    def adamw_training_bytes(self) -> int:
        return self.total * 16

    def kv_cache_bytes(self, tokens: int) -> int:
        """bf16 KV-cache bytes for one sequence of `tokens` tokens (sliding layers capped)."""
        per_token_sliding = self.kv_cache_bytes_per_token_sliding
        sliding = min(tokens * per_token_sliding, self.kv_cache_sliding_cap_bytes) if per_token_sliding else 0
        return tokens * self.kv_cache_bytes_per_token_full + sliding


def model_stats(config: ModelConfig, context: int | None = None) -> ModelStats:
    """Parameter breakdown and costs of `config`; FLOPs use `context` tokens (default: the model's)."""
    c = config
    context = context or c.context_length
    d = c.d_model

    def norm_params(dim: int) -> int:
        return dim * (2 if c.norm == "layernorm" and c.norm_bias else 1)

    embeddings = c.vocab_size * d + (c.context_length * d if c.position == "learned" else 0)
    qkv = d * (c.q_dim + 2 * c.kv_dim) + (c.q_dim + 2 * c.kv_dim if c.attention_bias else 0)
    attn_out = c.q_dim * d + (d if c.attention_bias else 0)
    qk_norm = 2 * norm_params(c.head_dim) if c.qk_norm else 0
    attention_per_layer = qkv + attn_out + qk_norm
    n_mlp_matrices = 3 if c.mlp in ("swiglu", "geglu") else 2
    mlp_per_layer = n_mlp_matrices * d * c.d_mlp
    if c.mlp_bias:
        mlp_per_layer += (n_mlp_matrices - 1) * c.d_mlp + d
    norms_per_layer = (4 if c.norm_placement == "sandwich" else 2) * norm_params(d)
    output_head = 0 if c.tie_embeddings else c.vocab_size * d
    attention = attention_per_layer * c.n_layers
    mlp = mlp_per_layer * c.n_layers
    norms = norms_per_layer * c.n_layers + norm_params(d)
    total = embeddings + attention + mlp + norms + output_head

    matrix_params = c.n_layers * (d * (c.q_dim + 2 * c.kv_dim) + c.q_dim * d + n_mlp_matrices * d * c.d_mlp)
    matrix_params += c.vocab_size * d  # the output head is a matmul even when tied
    attention_flops = 0
    sliding_layers = 0
    for layer in range(c.n_layers):
        span = min(context, c.sliding_window) if c.layer_is_sliding(layer) else context
        attention_flops += 4 * c.n_heads * c.head_dim * span
        sliding_layers += c.layer_is_sliding(layer)
    forward = 2 * matrix_params + attention_flops
    kv_per_layer = 2 * c.kv_dim * 2  # keys and values, bf16
    return ModelStats(
        embeddings=embeddings,
        attention=attention,
        mlp=mlp,
        norms=norms,
        output_head=output_head,
        total=total,
        forward_flops_per_token=forward,
        training_flops_per_token=3 * forward,
        kv_cache_bytes_per_token_full=kv_per_layer * (c.n_layers - sliding_layers),
        kv_cache_bytes_per_token_sliding=kv_per_layer * sliding_layers,
        kv_cache_sliding_cap_bytes=kv_per_layer * sliding_layers * (c.sliding_window or 0),
    )


def _size(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n_bytes < 1000 or unit == "TB":
            return f"{n_bytes:,.0f} {unit}" if unit == "B" else f"{n_bytes:,.2f} {unit}"
        n_bytes /= 1000
    return ""


def _flops(n: float) -> str:
    for unit, scale in (("GFLOP", 1e9), ("MFLOP", 1e6), ("KFLOP", 1e3)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} FLOP"


def describe(config: ModelConfig) -> str:
    """A human-readable account of `config`: shape, parameters by part, memory, FLOPs, KV cache."""
    c, s = config, model_stats(config)
    kv_note = "MHA" if c.n_kv_heads == c.n_heads else ("MQA" if c.n_kv_heads == 1 else "GQA")
    span = "full causal" if c.sliding_window is None else (
        f"sliding window {c.sliding_window}, full at layers "
        f"{[i for i in range(c.n_layers) if not c.layer_is_sliding(i)]}")
    lines = [
        f"model: {c.name or '(unnamed)'}  family: {c.family}",
        f"  layers {c.n_layers}, d_model {c.d_model}, heads {c.n_heads} / kv heads {c.n_kv_heads} ({kv_note}), "
        f"head dim {c.head_dim}",
        f"  MLP {c.mlp} {c.d_mlp}, norm {c.norm}{' (1 + weight)' if c.norm_unit_offset else ''} "
        f"{c.norm_placement}, positions {c.position}"
        + (f" (theta {c.rope_theta:g}" + (f", local {c.rope_theta_local:g}" if c.rope_theta_local else "") + ")"
           if c.position == "rope" else ""),
        f"  attention {span}{', QK-norm' if c.qk_norm else ''}; vocab {c.vocab_size:,}, context {c.context_length:,}, "
        f"{'tied' if c.tie_embeddings else 'untied'} head",
        "",
        "parameters:",
    ]
    for label, count in (("embeddings", s.embeddings), ("attention", s.attention), ("MLP", s.mlp),
                         ("norms", s.norms), ("output head", s.output_head)):
        share = 100 * count / s.total
        note = " (tied to the embeddings)" if label == "output head" and c.tie_embeddings else ""
        lines.append(f"  {label:<12} {count:>14,}  {share:5.1f}%{note}")
    lines += [
        f"  {'total':<12} {s.total:>14,}",
        f"  {'non-embedding':<12} {s.total - s.embeddings:>14,}",
        "",
        "memory:",
        f"  weights fp32 {_size(s.weight_bytes(4))}, bf16 {_size(s.weight_bytes(2))}",
        f"  AdamW training state (fp32 weights, gradients, 2 moments; activations excluded): "
        f"{_size(s.adamw_training_bytes)}",
        "",
        f"compute per token (context {c.context_length:,}):",
        f"  forward  {_flops(s.forward_flops_per_token)}",
        f"  training {_flops(s.training_flops_per_token)} (6N + attention)",
        "",
        "KV cache (bf16):",
        f"  {s.kv_cache_bytes_per_token_full + s.kv_cache_bytes_per_token_sliding:,} bytes per token",
    ]
    if s.kv_cache_sliding_cap_bytes:
        lines.append(
            f"  sliding layers hold at most {c.sliding_window} tokens ({_size(s.kv_cache_sliding_cap_bytes)}); "
            f"past that, {s.kv_cache_bytes_per_token_full:,} bytes per token"
        )
    lines.append(f"  a full context of {c.context_length:,} tokens: {_size(s.kv_cache_bytes(c.context_length))}")
    return "\n".join(lines)
