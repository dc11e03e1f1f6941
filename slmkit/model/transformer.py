"""The one decoder-only transformer: blocks and the model.

Token ids (B, T) in, logits (B, T, vocab) out; an optional KVCache turns the same forward into
prefill and incremental decoding. Training, prefill and one-token decode steps run the same modules:
the model computes what every layer shares once per forward (rotary cos/sin per base frequency, one
mask per attention span) and hands it down in an AttentionInputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slmkit.errors import SlmError
from slmkit.model.config import ModelConfig
from slmkit.model.kv_cache import KVCache
from slmkit.model.layers import (
    MLP,
    Attention,
    AttentionInputs,
    RotaryEmbedding,
    attention_mask,
    init_std_for_residual,
    make_norm,
    visible_keys,
)


class Block(nn.Module):
    """Attention then MLP, each wrapped in a residual; pre-norm, or sandwich (pre and post) norm."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        sandwich = config.norm_placement == "sandwich"
        self.attn_norm = make_norm(config)
        self.attn = Attention(config, layer)
        self.attn_post_norm = make_norm(config) if sandwich else None
        self.mlp_norm = make_norm(config)
        self.mlp = MLP(config)
        self.mlp_post_norm = make_norm(config) if sandwich else None
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        h = self.attn(self.attn_norm(x), inputs)
        if self.attn_post_norm is not None:
            h = self.attn_post_norm(h)
        x = x + self.dropout(h)
        h = self.mlp(self.mlp_norm(x))
        if self.mlp_post_norm is not None:
            h = self.mlp_post_norm(h)
        return x + self.dropout(h)


class Transformer(nn.Module):
    """A decoder-only language model built from a ModelConfig."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config.validate()
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = (
            nn.Embedding(config.context_length, config.d_model) if config.position == "learned" else None
        )
        self.embed_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        thetas = sorted({config.layer_rope_theta(i) for i in range(config.n_layers)}) if config.position == "rope" else []
        self.rotary = nn.ModuleList(RotaryEmbedding(config.head_dim, theta) for theta in thetas)
        self.windows = sorted({block.attn.window for block in self.blocks}, key=lambda w: w or 0)
        self.final_norm = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.reset_parameters()

    # -- initialisation -----------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """GPT-2 style init: normal(0, init_std), residual projections scaled by 1/sqrt(2 n_layers)."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual = name.endswith("attn.out") or name.endswith("mlp.down")
                nn.init.normal_(module.weight, 0.0, init_std_for_residual(self.config) if is_residual else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif hasattr(module, "unit_offset"):  # RMSNorm
                nn.init.constant_(module.weight, 0.0 if module.unit_offset else 1.0)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                pad_offsets: torch.Tensor | None = None, return_hidden: bool = False,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids (B, T).

        cache: a KVCache; the new tokens follow the cached ones (time steps cache.length onwards) and
            their keys and values are added to it. With a static cache no shape depends on the step, so
            a one-token step can be compiled once for a whole generation.
        pad_offsets: (B,) count of left-padding steps per row; padded keys are masked and positions
            start at 0 on each row's first real token.
        return_hidden: return the final-norm hidden states (B, T, d_model) instead of logits, for
            losses that apply the output head in chunks.
        segment_ids: (B, T) for packed rows: which example of the row each token belongs to (examples
            are contiguous runs of one id). A token attends only within its example, and positions
            restart at 0 on each example's first token, so a packed row gives each example the
            logits it would get alone. Not with a cache or pad_offsets.
        Raises SlmError when the tokens do not fit the context (learned positions) or the cache.
        """
        batch, length = input_ids.shape
        if cache is None:
            if pad_offsets is None and length > self.config.context_length and self.pos_embed is not None:
                raise SlmError(
                    f"sequence of {length} tokens exceeds the model context {self.config.context_length}"
                )
            steps = torch.arange(length, device=input_ids.device)
        else:
            steps = cache.reserve(length, input_ids.device)
        if segment_ids is not None:
            if cache is not None or pad_offsets is not None:
                raise ValueError("segment_ids are for training and scoring packed rows, not with a cache or pad_offsets")
            positions = segment_positions(segment_ids)
        else:
            positions = steps if pad_offsets is None else (steps[None, :] - pad_offsets[:, None]).clamp_min(0)
        x = self.embed(input_ids)
        if self.config.embedding_scale:
            x = x * torch.tensor(math.sqrt(self.config.d_model), dtype=x.dtype)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        x = self.embed_dropout(x)
        if segment_ids is not None:
            masks = {window: segment_mask(segment_ids, window) for window in self.windows}
        elif cache is None:
            masks = {window: attention_mask(steps, steps, window, pad_offsets) for window in self.windows}
        else:
            masks = cache.prepare(steps, pad_offsets)
        inputs = AttentionInputs(self.rotary_cos_sin(positions, compute_dtype(x)), masks, cache)
        for block in self.blocks:
            x = block(x, inputs)
        x = self.final_norm(x)
        return x if return_hidden else self.lm_head(x)

    def rotary_cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> dict:
        """(cos, sin) per rotary base frequency for `positions` (T,) or (B, T); see AttentionInputs."""
        tables = {}
        for rotary in self.rotary:
            cos, sin = rotary.cos_sin(positions, dtype)
            tables[rotary.theta] = (cos[:, None], sin[:, None]) if cos.dim() == 3 else (cos, sin)
        return tables

    # -- bookkeeping --------------------------------------------------------------------------
    def num_parameters(self) -> int:
        """Unique parameters (a tied head counts once, as Hugging Face counts)."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, capacity: int | None = None, dtype=None, static: bool = False) -> KVCache:
        """An empty KVCache for `batch_size` rows and `capacity` time steps (default: the context), on the
        model's device and in its dtype; static: see KVCache."""
        param = next(self.parameters())
        return KVCache(self.config, batch_size, capacity or self.config.context_length,
                       device=param.device, dtype=dtype or param.dtype, static=static)


def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) positions that restart at 0 where the segment id changes along each row."""
    steps = torch.arange(segment_ids.shape[1], device=segment_ids.device)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = torch.where(starts, steps, torch.zeros_like(steps)).cummax(dim=1).values  # each token's example start
    return steps - first


def segment_mask(segment_ids: torch.Tensor, window: int | None) -> torch.Tensor:
    """Bool (B, 1, T, T) mask for SDPA: causal, within the window, and within the token's own segment."""
    steps = torch.arange(segment_ids.shape[1], device=segment_ids.device)
    visible = visible_keys(steps, steps, window, None)  # (1, 1, T, T)
    return visible & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the linear layers produce from `x`: autocast's where it is on, else x's own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype
