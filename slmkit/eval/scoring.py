"""Scoring a language model on windows of tokens: the one implementation behind the trainer's
evaluation (`slmkit.train.evaluator`) and `slm eval` (`slmkit.eval.perplexity`).

    for start, scored in stride_windows(n_tokens, context=256, stride=128): ...
    batches = window_batches(ids, context=256, stride=128, batch_size=8)  # y is -1 where not scored
    nll, count = score_batches(loss_of_batch, batches, device, autocast).tolist()

A window is `context` input tokens and the `context` next tokens as targets. The first window scores
all its targets; each later one starts `stride` tokens on and scores only its last `stride` targets,
which the earlier windows did not reach (with stride < context every one of them has at least
context - stride tokens of left context, as in the transformers perplexity guide). A last window
aligned to the end of the text scores what remains, with a full context. So every token but the
first is scored exactly once.

This module imports nothing from `slmkit.train`, so that the trainer can import it without a cycle
(`slmkit.eval.perplexity` imports the trainer's loss; this module is what both share).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from slmkit.errors import SlmError

IGNORE_INDEX = -1  # a target language_model_loss does not count (slmkit.train.loss.IGNORE_INDEX)


def check_window_settings(context: int, stride: int, batch_size: int = 1) -> None:
    """SlmError when the window settings cannot work: a context or batch below 1, a stride below 1 or
    above the context (tokens between windows would never be scored)."""
    if context < 1:
        raise SlmError(f"context {context} must be at least 1 token")
    if stride < 1:
        raise SlmError(f"stride {stride} must be at least 1 token")
    if stride > context:
        raise SlmError(f"stride {stride} is larger than the context {context}: the tokens between windows would "
                       f"never be scored; use a stride of at most {context}")
    if batch_size < 1:
        raise SlmError(f"batch size {batch_size} must be at least 1")


def stride_windows(n_tokens: int, context: int, stride: int) -> Iterator[tuple[int, int]]:
    """(start, scored) of each window over `n_tokens` tokens: inputs start .. start + context - 1,
    targets one token on, of which the last `scored` count."""
    if n_tokens < context + 1:
        return
    yield 0, context
    last_scored = context  # the index of the last target scored so far
    start = stride
    while start + context + 1 <= n_tokens:
        yield start, stride
        last_scored = start + context
        start += stride
    if last_scored < n_tokens - 1:
        yield n_tokens - 1 - context, n_tokens - 1 - last_scored


def count_windows(n_tokens: int, context: int, stride: int) -> int:
    """Number of windows `stride_windows` gives (tail included)."""
    if n_tokens < context + 1:
        return 0
    full = 1 + (n_tokens - context - 1) // stride
    return full + int(context + (full - 1) * stride < n_tokens - 1)


def window_batches(ids, context: int, stride: int, batch_size: int,
                   windows: Iterable[tuple[int, int]] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) int64 tensors (rows, context) of the stride windows of `ids` (a 1-D numpy array or
    memmap), up to `batch_size` rows each; targets not scored are -1. `windows` defaults to
    `stride_windows(len(ids), context, stride)`."""
    windows = stride_windows(len(ids), context, stride) if windows is None else windows
    batch: list[tuple[int, int]] = []
    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            yield _batch(ids, context, batch)
            batch = []
    if batch:
        yield _batch(ids, context, batch)


def _batch(ids, context: int, windows: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([np.asarray(ids[start:start + context + 1]) for start, _ in windows]).astype(np.int64)
    x, y = rows[:, :-1].copy(), rows[:, 1:].copy()
    for targets, (_, scored) in zip(y, windows):
        targets[:context - scored] = IGNORE_INDEX  # scored by an earlier window
    return torch.from_numpy(x), torch.from_numpy(y)


@contextlib.contextmanager
def evaluation_mode(model):
    """The model in eval mode (no dropout) inside, the mode it was in after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def score_batches(loss_of_batch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """Summed negative log-likelihood (nats) and number of scored targets over `batches`, as a (2,)
    tensor on `device` (float64; float32 on MPS, which has no float64).

    A batch is (x, y), or (x, y, segment_ids) for packed rows (a fine-tune's examples).
    loss_of_batch(x, y[, segment_ids]) returns the summed loss of the targets of y that are not -1;
    it runs under `autocast()`. on_batch(rows) is called after each batch (a progress bar)."""
    totals = torch.zeros(2, device=device, dtype=torch.float32 if device.type == "mps" else torch.float64)
    for batch in batches:
        x, y, *extra = (tensor.to(device) for tensor in batch)
        with autocast():
            loss = loss_of_batch(x, y, *extra)
        totals[0] += loss.to(totals.dtype)
        totals[1] += (y != IGNORE_INDEX).sum()
        if on_batch is not None:
            on_batch(len(x))
    return totals
