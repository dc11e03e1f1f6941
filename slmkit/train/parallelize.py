"""Memory and speed techniques applied to a model from outside, as torchtitan's parallelize step
does: the model code never mentions them. Activation checkpointing and torch.compile here; DDP and
FSDP2 in distributed.py.
"""

from __future__ import annotations

import warnings

import torch
from torch.utils.checkpoint import checkpoint

from slmkit.model.layers import AttentionInputs
from slmkit.model.transformer import Block, Transformer


class CheckpointedBlock(Block):
    """A Block that keeps no activations for the backward pass and recomputes them there instead
    (less memory, about a third more compute). Only while training; a cached forward runs plainly."""

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        if self.training and torch.is_grad_enabled() and inputs.cache is None:
            return checkpoint(super().forward, x, inputs, use_reentrant=False)
        return super().forward(x, inputs)


def apply_activation_checkpointing(model: Transformer) -> Transformer:
    """Recompute each block's activations in the backward pass (returns `model`, changed in place).

    Each block stays the same object with the same submodules, parameters and names, and only
    becomes a CheckpointedBlock (a Block subclass), as FSDP2's fully_shard changes a module's class:
    state_dict keys, named_parameters (optimizer groups), checkpoints and Hugging Face export see
    the model unchanged. Apply it before fully_shard, DDP and torch.compile.
    """
    for block in model.blocks:
        if type(block) is Block:
            block.__class__ = CheckpointedBlock
        elif not isinstance(block, CheckpointedBlock):
            raise TypeError(f"cannot checkpoint a {type(block).__name__}: apply activation checkpointing "
                            f"to the plain model, before fully_shard, DDP or torch.compile")
    return model


def compile_model(model, enabled: bool):
    """torch.compile `model` when asked; on failure warn and return the eager model."""
    if not enabled:
        return model
    try:
        return torch.compile(model)
    except Exception as error:  # compile support varies by platform; eager still trains
        warnings.warn(f"torch.compile failed ({type(error).__name__}: {error}); training in eager mode",
                      stacklevel=2)
        return model
