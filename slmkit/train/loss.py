"""The language-modelling loss.

`language_model_loss` is the one entry point the trainer and evaluation use, so the way the output
head and cross-entropy are computed can change here alone.

The output head and the cross-entropy are fused and computed in chunks of rows: each chunk's logits
(rows x vocab) are made, reduced to log-sum-exp and the target logit, turned into the chunk's
gradient with respect to the hidden states and the head weight, and freed. The full (B*T, vocab)
float32 logits, 524 MB for 16 x 256 tokens and a 32K vocab, never exist, and the backward pass is a
scale of gradients already computed. On a 2-core CPU that is the difference between the softmax
over the vocab taking a quarter of a step and a few percent of it (docs/performance.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -1
CHUNK_ROWS = 1024  # rows of logits made at once: 1024 x 32K x 4 bytes = 131 MB at most


def language_model_loss(model, input_ids: torch.Tensor, targets: torch.Tensor,
                        reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (nats) of predicting `targets` (B, T) from `input_ids` (B, T).

    Targets equal to -1 are ignored. reduction: "mean" over counted tokens (NaN when none count, as
    F.cross_entropy), or "sum". `model` is a slmkit Transformer, possibly wrapped by DDP or
    torch.compile; other models (anything returning logits) get the plain cross-entropy.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    head = _output_head(model)
    if head is None:
        logits = model(input_ids)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction=reduction)
    hidden = model(input_ids, return_hidden=True)
    return linear_cross_entropy(hidden, head.weight, targets, reduction=reduction)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         reduction: str = "mean", chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """F.cross_entropy(hidden @ weight.T, targets) without materialising the logits.

    hidden (..., d), weight (vocab, d), targets (...) with -1 ignored. Under autocast the matmuls
    run in the autocast dtype and the softmax in float32, as autocast would run the unfused
    version. Gradients flow to `hidden` and `weight`.
    """
    compute_dtype = _autocast_dtype(hidden.device.type) or weight.dtype
    hidden = hidden.reshape(-1, hidden.shape[-1])
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets.reshape(-1), reduction == "sum",
                                         chunk_rows, compute_dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    """Chunked fused output head + cross-entropy; the gradients are made in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, sum_reduction: bool, chunk_rows: int, compute_dtype):
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        counted = targets != IGNORE_INDEX
        # mean: divide by the number of counted tokens (0 gives NaN, as F.cross_entropy)
        scale = 1.0 if sum_reduction else 1.0 / counted.sum().to(torch.float32)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        hidden_grads = []
        # the weight gradient is summed over chunks in float32 whatever the compute dtype
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        weight_c = weight.to(compute_dtype)
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            h, target, keep = hidden[rows].to(compute_dtype), targets[rows], counted[rows]
            logits = (h @ weight_c.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            safe_target = target.clamp_min(0)
            target_logit = logits.gather(1, safe_target[:, None]).squeeze(1)
            total = total + torch.where(keep, lse - target_logit, 0.0).sum()
            if not (need_hidden or need_weight):
                continue
            # d loss / d logits = (softmax - onehot) * scale on counted rows, 0 on ignored rows
            grad = logits.sub_(lse[:, None]).exp_()
            grad.scatter_add_(1, safe_target[:, None], torch.full_like(lse[:, None], -1.0))
            grad.mul_(torch.where(keep, scale, 0.0)[:, None])
            grad = grad.to(compute_dtype)
            if need_hidden:
                hidden_grads.append((grad @ weight_c).to(hidden.dtype))
            if need_weight and grad.dtype == torch.float32:
                grad_weight.addmm_(grad.t(), h)
            elif need_weight:
                grad_weight += (grad.t() @ h).float()
        grad_hidden = torch.cat(hidden_grads) if need_hidden else None
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total if sum_reduction else total * scale

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight * grad_output.to(grad_weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def _output_head(model):
    """The output-head Linear of a slmkit Transformer under DDP / torch.compile wrappers, else None."""
    inner = model
    for _ in range(4):
        inner = getattr(inner, "module", None) or getattr(inner, "_orig_mod", None) or inner
    head = getattr(inner, "lm_head", None)
    if head is None or getattr(head, "bias", None) is not None or not hasattr(inner, "config"):
        return None
    return head


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    if device_type in ("cpu", "cuda", "mps", "xpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None
