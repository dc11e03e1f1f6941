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

import functools
import os
import warnings

import torch
import torch.nn.functional as F

IGNORE_INDEX = -1
CHUNK_ROWS = 1024  # rows of logits made at once (1024 x 32K bf16 logits: 66 MB)
COMPILE_MIN_ELEMENTS = 1 << 22  # chunks of fewer logits than this run eager (compiling costs seconds)


def language_model_loss(model, input_ids: torch.Tensor, targets: torch.Tensor, segment_ids: torch.Tensor | None = None,
                        reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (nats) of predicting `targets` (B, T) from `input_ids` (B, T).

    Targets equal to -1 are ignored (a fine-tune's prompt tokens, padding). segment_ids: (B, T) for
    packed rows of several examples (see Transformer.forward). reduction: "mean" over counted tokens
    (NaN when none count, as F.cross_entropy), or "sum". `model` is a slmkit Transformer, possibly
    wrapped by DDP or torch.compile; other models (anything returning logits) get the plain
    cross-entropy.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    extra = {} if segment_ids is None else {"segment_ids": segment_ids}
    head = _output_head(model)
    if head is None:
        logits = model(input_ids, **extra)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction=reduction)
    hidden = model(input_ids, return_hidden=True, **extra)
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
                                         chunk_rows, compute_dtype, torch.is_grad_enabled())


class _LinearCrossEntropy(torch.autograd.Function):
    """Chunked fused output head + cross-entropy; the gradients are made in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, sum_reduction: bool, chunk_rows: int, compute_dtype,
                grad_enabled: bool):
        # needs_input_grad is True for a parameter even under no_grad (evaluation): check both
        need_hidden, need_weight = (grad_enabled and needed for needed in ctx.needs_input_grad[:2])
        counted = targets != IGNORE_INDEX
        # mean: divide by the number of counted tokens (0 gives NaN, as F.cross_entropy)
        scale = 1.0 if sum_reduction else 1.0 / counted.sum().to(torch.float32)
        row_scale = torch.where(counted, scale, 0.0)  # d loss / d (per-row loss); 0 on ignored rows
        safe_targets = targets.clamp_min(0)
        weight_c = weight.to(compute_dtype)
        chunk_kernel = _chunk_kernel(hidden.device.type, min(chunk_rows, hidden.shape[0]) * weight.shape[0])
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        hidden_grads = []
        grad_weight = None  # summed over chunks in float32, whatever the compute dtype
        for start in range(0, hidden.shape[0], chunk_rows):
            h = hidden[start:start + chunk_rows].to(compute_dtype)
            rows = slice(start, start + chunk_rows)
            loss, grad = chunk_kernel(h @ weight_c.t(), safe_targets[rows], counted[rows], row_scale[rows],
                                      need_hidden or need_weight)
            total = total + loss
            if need_hidden:
                hidden_grads.append((grad @ weight_c).to(hidden.dtype))
            if need_weight:
                chunk_grad_weight = (grad.t() @ h).float()
                grad_weight = chunk_grad_weight if grad_weight is None else grad_weight.add_(chunk_grad_weight)
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
        return grad_hidden, grad_weight, None, None, None, None, None


def _chunk_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor,
                         row_scale: torch.Tensor, need_grad: bool):
    """Summed cross-entropy of a chunk of logits (rows, vocab) over the kept rows, and its gradient
    (softmax - one-hot) scaled per row, in the logits' dtype.

    Whole-tensor expressions, so that torch.compile fuses them into one reduction and one pointwise
    pass over the logits; eager PyTorch computes the same, in more passes.
    """
    dtype = logits.dtype
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    target_logits = logits.gather(1, targets[:, None]).squeeze(1)
    loss = torch.where(keep, lse - target_logits, 0.0).sum()
    if not need_grad:
        return loss, None
    vocab = torch.arange(logits.shape[1], device=logits.device)
    one_hot = (vocab[None, :] == targets[:, None]).float()
    grad = (torch.exp(logits - lse[:, None]) - one_hot) * row_scale[:, None]
    return loss, grad.to(dtype)


class _CompiledChunkKernel:
    """`_chunk_loss_and_grad` through torch.compile, falling back to eager (with one warning)."""

    def __init__(self):
        self.compiled = torch.compile(_chunk_loss_and_grad)
        self.failed = False

    def __call__(self, *args):
        if not self.failed:
            try:
                return self.compiled(*args)
            except Exception as error:  # no compiler, unsupported device: eager gives the same numbers
                self.failed = True
                warnings.warn(f"compiling the fused cross-entropy failed ({type(error).__name__}: "
                              f"{str(error)[:200]}); using eager PyTorch for it", stacklevel=2)
        return _chunk_loss_and_grad(*args)


@functools.cache
def _compiled_chunk_kernel() -> _CompiledChunkKernel:
    return _CompiledChunkKernel()


def _chunk_kernel(device_type: str, chunk_elements: int):
    """The compiled kernel for chunks big enough to matter on CPU and CUDA, else eager.

    Inside an outer torch.compile the eager function is traced and fused there.
    """
    if (device_type not in ("cpu", "cuda") or chunk_elements < COMPILE_MIN_ELEMENTS
            or torch.compiler.is_compiling() or os.environ.get("SLMKIT_COMPILE_LOSS") == "0"):
        return _chunk_loss_and_grad
    return _compiled_chunk_kernel()


def _output_head(model):
    """The output-head Linear of a slmkit Transformer under DDP / torch.compile wrappers, else None.

    None too under FSDP, whose parameters are only whole inside the forward pass: there the head
    is applied by the model and the cross-entropy computed on its logits.
    """
    inner = model
    for _ in range(4):
        inner = getattr(inner, "module", None) or getattr(inner, "_orig_mod", None) or inner
    head = getattr(inner, "lm_head", None)
    # a plain Linear only: an adapter-wrapped head (LoRA) must run its own forward
    if type(head) is not torch.nn.Linear or head.bias is not None or not hasattr(inner, "config"):
        return None
    if any(type(m).__name__.startswith("FSDP") for m in (inner, head)):
        return None
    return head


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    if device_type in ("cpu", "cuda", "mps", "xpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None
