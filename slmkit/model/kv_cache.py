"""Key/value caches for incremental decoding.

Positions are counted in *time steps*: column t of the batch, the same for every row (rows that
are left-padded simply start later; see `Transformer.forward`'s `pad_offsets`).

Full-attention layers keep every step in a preallocated buffer of `capacity` steps. Sliding-window
layers keep only their window in a ring buffer of `sliding_window` slots, so a long generation with a
Gemma-style model holds a bounded cache on those layers. Each update returns the keys and values to
attend over together with their time steps, from which the model builds its mask.
"""

from __future__ import annotations

import torch

from slmkit.errors import SlmError


class KVCache:
    """Keys and values of `batch_size` sequences, for up to `capacity` time steps."""

    def __init__(self, config, batch_size: int, capacity: int, device=None, dtype=torch.float32):
        if capacity <= 0:
            raise SlmError(f"KV cache capacity must be positive, got {capacity}")
        if config.position == "learned" and capacity > config.context_length:
            raise SlmError(
                f"cache capacity {capacity} exceeds the model context {config.context_length}; "
                f"a model with learned positions cannot go further"
            )
        self.capacity = capacity
        self.length = 0  # time steps filled so far
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.slot_steps: list[torch.Tensor | None] = []  # ring layers: the time step in each slot (-1: empty)
        for layer in range(config.n_layers):
            window = config.sliding_window if config.layer_is_sliding(layer) else None
            slots = capacity if window is None or window >= capacity else window
            shape = (batch_size, config.n_kv_heads, slots, config.head_dim)
            self.keys.append(torch.zeros(shape, device=device, dtype=dtype))
            self.values.append(torch.zeros(shape, device=device, dtype=dtype))
            ring = window is not None and window < capacity
            self.slot_steps.append(torch.full((slots,), -1, dtype=torch.long, device=device) if ring else None)

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor):
        """Add (B, H_kv, T, D) keys/values for steps [length, length + T).

        Returns (keys, values, key_steps): what the new queries attend over, and the time step of
        each key (a 1-D long tensor), from which causal and window masks are built.
        """
        start, new = self.length, key.shape[2]
        end = start + new
        if end > self.capacity:
            raise SlmError(
                f"KV cache is full: {start} cached + {new} new tokens > capacity {self.capacity}; "
                f"allocate a larger cache"
            )
        keys, values, steps = self.keys[layer], self.values[layer], self.slot_steps[layer]
        key, value = key.to(keys.dtype), value.to(values.dtype)
        if steps is None:
            keys[:, :, start:end] = key
            values[:, :, start:end] = value
            return keys[:, :, :end], values[:, :, :end], torch.arange(end, device=keys.device)
        # Ring buffer: attend over the old window plus the new steps, then keep the newest window.
        new_steps = torch.arange(start, end, device=keys.device)
        filled = steps >= 0
        all_keys = torch.cat([keys[:, :, filled], key], dim=2)
        all_values = torch.cat([values[:, :, filled], value], dim=2)
        all_steps = torch.cat([steps[filled], new_steps])
        slots = keys.shape[2]
        kept = slice(max(0, new - slots), new)
        slot_index = new_steps[kept] % slots
        keys[:, :, slot_index] = key[:, :, kept]
        values[:, :, slot_index] = value[:, :, kept]
        steps[slot_index] = new_steps[kept]
        return all_keys, all_values, all_steps

    def advance(self, n_steps: int) -> None:
        """Mark `n_steps` more time steps as filled (the model calls this after all layers)."""
        self.length += n_steps

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` of the batch (in that order), e.g. to follow beams."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]

    def nbytes(self) -> int:
        """Bytes held by the cached keys and values."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
