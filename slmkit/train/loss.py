"""The language-modelling loss.

`language_model_loss` is the one entry point the trainer and evaluation use, so the way the output
head and cross-entropy are computed (full, chunked, fused) can change here alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def language_model_loss(model, input_ids: torch.Tensor, targets: torch.Tensor,
                        reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (nats) of predicting `targets` (B, T) from `input_ids` (B, T).

    Targets equal to -1 are ignored. reduction: "mean" over counted tokens, or "sum".
    """
    logits = model(input_ids)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-1, reduction=reduction)
