"""The pieces of a block: norms, rotary embeddings, attention and MLPs.

Each is switched by ModelConfig; none knows about devices, precision policy, DDP or logging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slmkit.model.config import ModelConfig


class RMSNorm(nn.Module):
    """RMSNorm computed in float32; `unit_offset` scales by (1 + weight) as Gemma does."""

    def __init__(self, dim: int, eps: float, unit_offset: bool = False):
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = x.float()
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.eps)
        scale = self.weight.float() + 1.0 if self.unit_offset else self.weight.float()
        return (hidden * scale).type_as(x)


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.d_model
    if config.norm == "layernorm":
        return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.norm_bias)
    return RMSNorm(dim, config.norm_eps, unit_offset=config.norm_unit_offset)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding in the "rotate half" convention (GPT-NeoX, HF Llama and Gemma)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", self.frequencies(), persistent=False)

    def frequencies(self) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
        return 1.0 / (self.theta**exponents)

    def reset_parameters(self) -> None:
        """Recompute the (unsaved) frequencies, e.g. after `to_empty`."""
        self.inv_freq = self.frequencies().to(self.inv_freq.device)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos and sin for integer positions (..., T), shaped (..., T, head_dim), in `dtype`."""
        freqs = positions.float()[..., None] * self.inv_freq
        angles = torch.cat([freqs, freqs], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) by cos/sin of shape (T, D) or (B, 1, T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


@dataclass
class AttentionInputs:
    """What every layer's attention reads in one forward, computed once by the model, not per layer.

    rotary: (cos, sin) per rotary base frequency, shaped (T, D) or, with per-row positions, (B, 1, T, D).
    masks: an `attention_mask` mask per attention span: None for full layers, the window for sliding ones.
    cache: the KVCache the new keys and values go into (prepared for this forward), or None.
    """

    rotary: dict[float, tuple[torch.Tensor, torch.Tensor]]
    masks: dict[int | None, Any]
    cache: Any = None


class Attention(nn.Module):
    """Causal self-attention: MHA, GQA or MQA; full or sliding window; optional QK-norm.

    Q, K and V come from one fused projection laid out as [Q | K | V]. Grouped K/V heads are never
    repeated in memory: SDPA's `enable_gqa` shares them across query heads. With a cache, the new keys
    and values are written into it and the queries attend over what it returns.
    """

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.window = config.sliding_window if config.layer_is_sliding(layer) else None
        self.qkv = nn.Linear(config.d_model, config.q_dim + 2 * config.kv_dim, bias=config.attention_bias)
        self.out = nn.Linear(config.q_dim, config.d_model, bias=config.attention_bias)
        self.q_norm = make_norm(config, config.head_dim) if config.qk_norm else None
        self.k_norm = make_norm(config, config.head_dim) if config.qk_norm else None
        scalar = config.query_pre_attn_scalar or config.head_dim
        self.scale = scalar**-0.5
        self.dropout = config.dropout
        self.rope_theta = config.layer_rope_theta(layer) if config.position == "rope" else None

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim],
            dim=-1,
        )
        q = q.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope_theta is not None:
            cos, sin = inputs.rotary[self.rope_theta]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if inputs.cache is not None:
            k, v = inputs.cache.update(self.layer, k, v)
        y = attend(q, k.to(q.dtype), v.to(q.dtype), inputs.masks[self.window], self.scale,
                   self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, length, -1))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, scale: float,
           dropout_p: float = 0.0) -> torch.Tensor:
    """Attention of q (B, H, T, D) over k, v (B, H_kv, S, D) under an `attention_mask` mask.

    SDPA (flash / memory-efficient kernels) everywhere but CPU half precision up to 1,024 keys,
    where PyTorch's fused CPU kernel is several times slower than `plain_attention`
    (docs/performance.md). Both compute the same function.
    """
    if plain_attention_is_faster(q, k):
        return plain_attention(q, k, v, mask, scale, dropout_p)
    return F.scaled_dot_product_attention(
        q, k, v,
        attn_mask=mask if isinstance(mask, torch.Tensor) else None,
        is_causal=isinstance(mask, str),
        dropout_p=dropout_p,
        scale=scale,
        enable_gqa=k.shape[1] != q.shape[1],
    )


def plain_attention_is_faster(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether `plain_attention` beats SDPA here: on CPU in half precision up to 1,024 keys."""
    return q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and k.shape[-2] <= 1024


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, scale: float,
                    dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v as two batched matmuls and a softmax.

    Grouped K/V heads are shared without being repeated: the query heads of a group are stacked
    as rows, (B*H_kv, G*T, D) against (B*H_kv, S, D). The mask enters as an additive bias of the
    first matmul (baddbmm), which needs no masking pass in the backward.
    """
    batch, n_heads, length, head_dim = q.shape
    n_kv_heads, n_keys = k.shape[1], k.shape[2]
    group = n_heads // n_kv_heads
    rows = q.reshape(batch * n_kv_heads, group * length, head_dim)
    keys = k.reshape(batch * n_kv_heads, n_keys, head_dim).transpose(1, 2)
    if mask is None:
        scores = torch.bmm(rows, keys) * scale
    else:
        scores = torch.baddbmm(_mask_bias(mask, q, n_kv_heads, group, n_keys), rows, keys, alpha=scale)
    weights = F.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, dropout_p)
    values = v.reshape(batch * n_kv_heads, n_keys, head_dim)
    return torch.bmm(weights, values).view(batch, n_heads, length, head_dim)


def _mask_bias(mask, q: torch.Tensor, n_kv_heads: int, group: int, n_keys: int) -> torch.Tensor:
    """An `attention_mask` mask as 0 / -inf in q's dtype, broadcastable to (B*H_kv, G*T, S)."""
    batch, length = q.shape[0], q.shape[2]
    if isinstance(mask, str):  # "causal": query i sees keys 0..i
        mask = torch.ones(length, n_keys, dtype=torch.bool, device=q.device).tril()[None, None]
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    if bias.shape[0] == 1:  # the same for every batch row: (G*T, S), broadcast over B*H_kv
        return bias[0, 0].repeat(group, 1)
    bias = bias[:, :, None].expand(batch, n_kv_heads, group, length, n_keys)  # per row: all heads
    return bias.reshape(batch * n_kv_heads, group * length, n_keys)


def attention_mask(query_steps: torch.Tensor, key_steps: torch.Tensor, window: int | None,
                   pad_offsets: torch.Tensor | None):
    """The mask for SDPA: "causal" or None where a fast path is exact, else `visible_keys`.

    The fast paths assume the keys are the steps 0 .. last query (no cache slot ahead or empty).
    """
    n_queries, n_keys = query_steps.shape[0], key_steps.shape[0]
    if pad_offsets is None and (window is None or n_keys <= window):
        if n_queries == 1:
            return None  # one new token sees every cached key
        if n_queries == n_keys:
            return "causal"
    return visible_keys(query_steps, key_steps, window, pad_offsets)


def visible_keys(query_steps: torch.Tensor, key_steps: torch.Tensor, window: int | None,
                 pad_offsets: torch.Tensor | None) -> torch.Tensor:
    """Which keys each query sees, as a bool (B|1, 1, T, S) tensor, for queries and keys at time steps.

    A key is visible when it is not in the future, lies within the window (query step - key step <
    window), is not padding and holds a step at all (a negative step marks an empty cache slot). A
    padded query sees itself, so that no row is empty (its output is never used).
    """
    q, k = query_steps[:, None], key_steps[None, :]
    visible = (k <= q) & (k >= 0)
    if window is not None:
        visible = visible & (q - k < window)
    if pad_offsets is None:
        return visible[None, None]
    not_padding = key_steps[None, :] >= pad_offsets[:, None]  # (B, S)
    visible = visible[None] & not_padding[:, None, :]
    visible = visible | (k == q)[None]
    return visible[:, None]


class MLP(nn.Module):
    """GELU MLP (two matrices) or a gated one, SwiGLU or GeGLU (three); GELU uses the tanh form."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gated = config.mlp in ("swiglu", "geglu")
        self.activation = F.silu if config.mlp == "swiglu" else _gelu_tanh
        self.up = nn.Linear(config.d_model, config.d_mlp, bias=config.mlp_bias)
        self.gate = nn.Linear(config.d_model, config.d_mlp, bias=config.mlp_bias) if self.gated else None
        self.down = nn.Linear(config.d_mlp, config.d_model, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down(self.activation(self.gate(x)) * self.up(x))
        return self.down(self.activation(self.up(x)))


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def init_std_for_residual(config: ModelConfig) -> float:
    """GPT-2's scaled init for projections that write into the residual stream."""
    return config.init_std / math.sqrt(2 * config.n_layers)
