"""Key/value caches for prefill and incremental decoding.

Positions are counted in *time steps*: column t of the batch, the same for every row (rows that
are left-padded simply start later; see `Transformer.forward`'s `pad_offsets`).

Full-attention layers keep every step in a preallocated buffer of `capacity` steps. Sliding-window
layers keep only their window in a ring buffer of `sliding_window` slots, so a long generation with a
Gemma-style model holds a bounded cache on those layers. New keys and values are written straight
into the buffers (index_copy_ at their columns, or their ring slots).

Once per forward the model calls `reserve` (the new time steps) and `prepare` (one mask per attention
span, shared by all layers of that span); each layer then calls `update`, which writes its keys and
values and returns what its queries attend over. A static cache attends over its whole buffers under
the mask, so no shape depends on the step and a one-token step compiles once for a whole generation.
"""

from __future__ import annotations

import torch

from slmkit.errors import SlmError
from slmkit.model.layers import attention_mask, visible_keys


class KVCache:
    """Keys and values of `batch_size` sequences, for up to `capacity` time steps.

    static: a one-token step attends over every column of the buffers (unfilled ones masked) instead
    of the filled part, so that it has the same shapes at every step (for torch.compile); longer
    inputs (a prefill) attend over the filled part, as with a dynamic cache.
    """

    def __init__(self, config, batch_size: int, capacity: int, device=None, dtype=torch.float32,
                 static: bool = False):
        if capacity <= 0:
            raise SlmError(f"KV cache capacity must be positive, got {capacity}")
        if config.position == "learned" and capacity > config.context_length:
            raise SlmError(
                f"cache capacity {capacity} exceeds the model context {config.context_length}; "
                f"a model with learned positions cannot go further"
            )
        self.capacity = capacity
        self.static = static
        self.length = 0  # time steps filled so far
        self.sliding_window = config.sliding_window if "sliding" in config.layer_types() else None
        window = self.sliding_window
        self.window = window if window is not None and window < capacity else None  # ring layers' window
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.ring: list[bool] = []  # per layer: a ring buffer of `window` slots, else a full buffer
        for layer in range(config.n_layers):
            ring = self.window is not None and config.layer_is_sliding(layer)
            shape = (batch_size, config.n_kv_heads, self.window if ring else capacity, config.head_dim)
            self.keys.append(torch.zeros(shape, device=device, dtype=dtype))
            self.values.append(torch.zeros(shape, device=device, dtype=dtype))
            self.ring.append(ring)
        # The time step held in each ring slot (-1: empty); the same for every ring layer.
        self.ring_steps = torch.full((self.window,), -1, dtype=torch.long, device=device) if any(self.ring) else None
        self._steps: torch.Tensor | None = None  # this forward's new time steps (full-buffer columns)
        self._columns: int | None = None  # full-buffer columns its queries attend over (None: all)
        self._ring_slots: torch.Tensor | None = None  # the ring slots its newest steps go to
        self._ring_prior = False  # whether its queries also attend over the ring's earlier steps

    @torch.compiler.disable  # Python bookkeeping: a compiled step neither traces nor guards on the count
    def reserve(self, n_steps: int, device=None) -> torch.Tensor:
        """Claim the next `n_steps` time steps, returned as a (n_steps,) long tensor.

        Raises SlmError when they do not fit the capacity.
        """
        start, end = self.length, self.length + n_steps
        if end > self.capacity:
            raise SlmError(
                f"KV cache is full: {start} cached + {n_steps} new tokens > capacity {self.capacity}; "
                f"allocate a larger cache"
            )
        self.length = end
        return torch.arange(start, end, device=device)

    def prepare(self, steps: torch.Tensor, pad_offsets: torch.Tensor | None) -> dict:
        """The masks for queries at `steps` (just reserved): {None: full layers, window: sliding layers}.

        Also records where `update` writes this forward's keys and values, and the new ring slots' steps.
        """
        n_new = steps.shape[0]
        self._steps = steps
        masks = {}
        self._columns = None if self.static and n_new == 1 else self.length
        if not all(self.ring):  # full buffers: every column (a static step), else the filled ones
            columns = torch.arange(self.capacity if self._columns is None else self._columns, device=steps.device)
            span = visible_keys if self._columns is None else attention_mask
            masks[None] = span(steps, columns, None, pad_offsets)
        if self.window is None:
            if self.sliding_window is not None:  # a window as long as the cache: the full mask is exact
                masks[self.sliding_window] = masks[None]
            return masks
        if n_new == 1:
            # The new step takes the oldest slot first; the ring then holds exactly the visible window.
            self._ring_slots, self._ring_prior = steps % self.window, False
            self.ring_steps.index_copy_(0, self._ring_slots, steps)
            masks[self.window] = visible_keys(steps, self.ring_steps, self.window, pad_offsets)
            return masks
        # Several new steps: attend over the ring's earlier steps and the new ones, then keep the newest.
        self._ring_prior = self.length > n_new
        key_steps = torch.cat([self.ring_steps, steps]) if self._ring_prior else steps
        masks[self.window] = (visible_keys if self._ring_prior else attention_mask)(
            steps, key_steps, self.window, pad_offsets)
        kept = steps[-self.window:]
        self._ring_slots = kept % self.window
        self.ring_steps.index_copy_(0, self._ring_slots, kept)
        return masks

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor):
        """Write (B, H_kv, T, D) keys/values of this forward's steps into layer `layer`.

        Returns (keys, values) that the new queries attend over, in the layout of `prepare`'s mask.
        """
        keys, values = self.keys[layer], self.values[layer]
        key, value = key.to(keys.dtype), value.to(values.dtype)
        if not self.ring[layer]:
            keys.index_copy_(2, self._steps, key)
            values.index_copy_(2, self._steps, value)
            if self._columns is None:
                return keys, values
            return keys[:, :, :self._columns], values[:, :, :self._columns]
        n_new = key.shape[2]
        if n_new == 1:
            keys.index_copy_(2, self._ring_slots, key)
            values.index_copy_(2, self._ring_slots, value)
            return keys, values
        attended = (torch.cat([keys, key], dim=2), torch.cat([values, value], dim=2)) if self._ring_prior \
            else (key, value)
        kept = self._ring_slots.shape[0]
        keys.index_copy_(2, self._ring_slots, key[:, :, n_new - kept:])
        values.index_copy_(2, self._ring_slots, value[:, :, n_new - kept:])
        return attended

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` of the batch (in that order), e.g. to follow beams."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]

    def nbytes(self) -> int:
        """Bytes held by the cached keys and values."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
