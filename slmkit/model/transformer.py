"""The one decoder-only transformer: blocks and the model.

Token ids (B, T) in, logits (B, T, vocab) out; an optional KVCache turns the same forward into
incremental decoding.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from slmkit.errors import SlmError
from slmkit.model.config import ModelConfig
from slmkit.model.layers import MLP, Attention, init_std_for_residual, make_norm


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

    def forward(self, x, steps, positions, pad_offsets=None, cache=None):
        h = self.attn(self.attn_norm(x), steps, positions, pad_offsets, cache, self.layer)
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
        self.final_norm = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.activation_checkpointing = False
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

    def set_activation_checkpointing(self, enabled: bool = True) -> Transformer:
        """Recompute each block's activations in the backward pass (less memory, ~30% more compute)."""
        self.activation_checkpointing = enabled
        return self

    # -- forward ------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, cache=None, pad_offsets: torch.Tensor | None = None,
                return_hidden: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids (B, T).

        cache: a KVCache; the new tokens follow the cached ones (time steps cache.length onwards).
        pad_offsets: (B,) count of left-padding steps per row; padded keys are masked and positions
            start at 0 on each row's first real token.
        return_hidden: return the final-norm hidden states (B, T, d_model) instead of logits, for
            losses that apply the output head in chunks.
        """
        batch, length = input_ids.shape
        start = cache.length if cache is not None else 0
        if pad_offsets is None and start + length > self.config.context_length and self.pos_embed is not None:
            raise SlmError(
                f"sequence of {start + length} tokens exceeds the model context {self.config.context_length}"
            )
        steps = torch.arange(start, start + length, device=input_ids.device)
        positions = steps if pad_offsets is None else (steps[None, :] - pad_offsets[:, None]).clamp_min(0)
        x = self.embed(input_ids)
        if self.config.embedding_scale:
            x = x * torch.tensor(math.sqrt(self.config.d_model), dtype=x.dtype)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        x = self.embed_dropout(x)
        for block in self.blocks:
            if self.activation_checkpointing and self.training and cache is None:
                x = checkpoint(block, x, steps, positions, pad_offsets, None, use_reentrant=False)
            else:
                x = block(x, steps, positions, pad_offsets, cache)
        if cache is not None:
            cache.advance(length)
        x = self.final_norm(x)
        return x if return_hidden else self.lm_head(x)

    def generate(self, prompt, config=None, **options):
        """Continue a prompt (text or token ids); see `slmkit.generate.generate` for the options."""
        from slmkit.generate import generate  # imported lazily: the model depends on nothing above it

        return generate(self, prompt, config, **options)

    # -- bookkeeping --------------------------------------------------------------------------
    def num_parameters(self) -> int:
        """Unique parameters (a tied head counts once, as Hugging Face counts)."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, capacity: int | None = None, dtype=None):
        from slmkit.model.kv_cache import KVCache

        param = next(self.parameters())
        return KVCache(self.config, batch_size, capacity or self.config.context_length,
                       device=param.device, dtype=dtype or param.dtype)
