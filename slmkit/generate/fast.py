"""A lean one-token decode step over the model's own modules and KVCache.

Decoding one token costs little arithmetic for a small model; on a CPU the time goes to dispatching
a few hundred small operations per step. This step does what `Transformer.forward` does for one new
token with fewer of them: the attention mask is built once per step for all layers, rotary cos/sin
once per base frequency, keys and values are written straight into the cache's preallocated buffers
(full layers) or ring slots (sliding layers), and no shape depends on the step, so the same step can
be handed to torch.compile. It reads the same weights and the same KVCache as the model: prefill
with the model, decode with this, and tests check both give the same logits for every family.
"""

from __future__ import annotations

import math

import torch

from slmkit.model.layers import apply_rotary, attend


class LeanDecoder:
    """`step(tokens (B, 1), cache, pad_offsets)` -> logits (B, 1, V), equal to `model(tokens, cache=cache,
    pad_offsets=pad_offsets)` for one new token. static=True attends over the whole preallocated cache
    (fixed shapes, for torch.compile); otherwise over the filled part only.
    """

    def __init__(self, model, static: bool = False, compile: bool = False):
        self.model = model
        self.config = model.config
        self.static = static or compile
        config = self.config
        self.thetas = sorted({config.layer_rope_theta(i) for i in range(config.n_layers)})
        self.embed_scale = math.sqrt(config.d_model) if config.embedding_scale else None
        self._core = self._forward
        if compile:
            # One graph per batch size and model (cache shapes are fixed): more than dynamo's default 8.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            self._core = torch.compile(self._forward, fullgraph=True, dynamic=False)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, cache, pad_offsets: torch.Tensor | None = None) -> torch.Tensor:
        t = cache.length
        if t >= cache.capacity:
            from slmkit.errors import SlmError

            raise SlmError(f"KV cache is full: {t} cached + 1 new token > capacity {cache.capacity}")
        device = tokens.device
        if pad_offsets is None:
            pad_offsets = torch.zeros(tokens.shape[0], dtype=torch.long, device=device)
        # The step as a tensor: a compiled step is traced once, not once per position.
        step = torch.tensor(t, dtype=torch.long, device=device)
        visible = None if self.static else t + 1
        logits = self._core(tokens, step, pad_offsets, cache.keys, cache.values, cache.slot_steps, visible)
        cache.advance(1)
        return logits

    def _forward(self, tokens, step, pad_offsets, keys, values, slot_steps, visible: int | None):
        model, config = self.model, self.config
        positions = (step - pad_offsets)[:, None]  # (B, 1)
        x = model.embed(tokens)
        if self.embed_scale is not None:
            x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        if model.pos_embed is not None:
            x = x + model.pos_embed(positions)
        rotary = {}
        if config.position == "rope":
            for theta in self.thetas:
                layer = next(i for i in range(config.n_layers) if config.layer_rope_theta(i) == theta)
                cos, sin = model.blocks[layer].attn.rotary.cos_sin(positions, x.dtype)
                rotary[theta] = (cos[:, None], sin[:, None])  # (B, 1, 1, D)
        # Masks (B, 1, 1, S), built once per step: full layers by column, ring layers by slot step.
        full_mask = ring_mask = None
        capacity = next((keys[i].shape[2] for i in range(len(keys)) if slot_steps[i] is None), None)
        if capacity is not None:
            columns = torch.arange(capacity if visible is None else visible, device=tokens.device)
            full_mask = ((columns[None, :] <= step) & (columns[None, :] >= pad_offsets[:, None]))[:, None, None]
        ring_slot = None
        for layer, block in enumerate(model.blocks):
            attn = block.attn
            h = block.attn_norm(x)
            batch = h.shape[0]
            q, k, v = attn.qkv(h).split(
                [attn.n_heads * attn.head_dim, attn.n_kv_heads * attn.head_dim, attn.n_kv_heads * attn.head_dim],
                dim=-1)
            q = q.view(batch, 1, attn.n_heads, attn.head_dim).transpose(1, 2)
            k = k.view(batch, 1, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
            v = v.view(batch, 1, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
            if attn.q_norm is not None:
                q, k = attn.q_norm(q), attn.k_norm(k)
            if attn.rotary is not None:
                cos, sin = rotary[attn.rotary.theta]
                q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            layer_keys, layer_values = keys[layer], values[layer]
            if slot_steps[layer] is not None:
                steps = slot_steps[layer]
                if ring_slot is None:
                    ring_slot = (step % steps.shape[0]).view(1)
                layer_keys.index_copy_(2, ring_slot, k.to(layer_keys.dtype))
                layer_values.index_copy_(2, ring_slot, v.to(layer_values.dtype))
                steps.index_copy_(0, ring_slot, step.view(1))
                if ring_mask is None:
                    # The ring holds the newest `window` steps: a filled slot is visible unless padding.
                    ring_mask = ((steps[None, :] >= 0) & (steps[None, :] >= pad_offsets[:, None]))[:, None, None]
                mask, attend_keys, attend_values = ring_mask, layer_keys, layer_values
            else:
                index = step.view(1)
                layer_keys.index_copy_(2, index, k.to(layer_keys.dtype))
                layer_values.index_copy_(2, index, v.to(layer_values.dtype))
                mask = full_mask
                if visible is not None:
                    attend_keys, attend_values = layer_keys[:, :, :visible], layer_values[:, :, :visible]
                else:
                    attend_keys, attend_values = layer_keys, layer_values
            y = attend(q, attend_keys.to(q.dtype), attend_values.to(q.dtype), mask, attn.scale)
            h = attn.out(y.transpose(1, 2).reshape(batch, 1, -1))
            if block.attn_post_norm is not None:
                h = block.attn_post_norm(h)
            x = x + h
            h = block.mlp(block.mlp_norm(x))
            if block.mlp_post_norm is not None:
                h = block.mlp_post_norm(h)
            x = x + h
        return model.lm_head(model.final_norm(x))
