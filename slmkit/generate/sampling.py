"""Turning logits into the next token: penalties, filters, temperature, and the draw.

One path for every decoding mode: penalties are applied to the logits (beam search applies the
same penalties to log-probabilities, as transformers does), then temperature 0 takes the argmax
and any other temperature samples from the filtered distribution. The rules follow transformers'
logits processors exactly (order, tie handling, prompt tokens counted by the repetition penalty).
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def apply_penalties(scores: torch.Tensor, history: torch.Tensor, pad_offsets: torch.Tensor | None,
                    prompt_columns: int, config) -> torch.Tensor:
    """Penalise `scores` (B, V) float32 in place for the tokens in `history` (B, T).

    history: every column so far (left padding, prompt, generated); pad_offsets (B,) the padding
    columns per row (ignored), prompt_columns where the generated part starts.
    """
    if config.repetition_penalty != 1.0:
        seen = _token_mask(history, pad_offsets, scores.shape[-1])
        penalised = torch.where(scores < 0, scores * config.repetition_penalty, scores / config.repetition_penalty)
        scores = torch.where(seen, penalised, scores)
    if config.presence_penalty or config.frequency_penalty:
        generated = history[:, prompt_columns:]
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        scores = scores - config.frequency_penalty * counts - config.presence_penalty * (counts > 0).to(scores.dtype)
    if config.no_repeat_ngram_size > 0:
        scores = ban_repeated_ngrams(scores, history, pad_offsets, config.no_repeat_ngram_size)
    return scores


def _token_mask(history: torch.Tensor, pad_offsets: torch.Tensor | None, vocab_size: int) -> torch.Tensor:
    """(B, V) bool: which ids occur in each row's real (non-padding) tokens."""
    if pad_offsets is not None:
        columns = torch.arange(history.shape[1], device=history.device)
        history = history.masked_fill(columns[None, :] < pad_offsets[:, None], vocab_size)
    mask = torch.zeros(history.shape[0], vocab_size + 1, dtype=torch.bool, device=history.device)
    mask.scatter_(1, history, True)
    return mask[:, :vocab_size]


def ban_repeated_ngrams(scores: torch.Tensor, history: torch.Tensor, pad_offsets: torch.Tensor | None,
                        size: int) -> torch.Tensor:
    """Set to -inf every token that would complete an n-gram of `size` already in the row."""
    rows = history.tolist()
    offsets = pad_offsets.tolist() if pad_offsets is not None else [0] * len(rows)
    banned_rows, banned_ids = [], []
    for row, (tokens, offset) in enumerate(zip(rows, offsets)):
        tokens = tokens[offset:]
        if len(tokens) < size:
            continue
        prefix = tuple(tokens[len(tokens) - size + 1:]) if size > 1 else ()
        for start in range(len(tokens) - size + 1):
            if tuple(tokens[start:start + size - 1]) == prefix:
                banned_rows.append(row)
                banned_ids.append(tokens[start + size - 1])
    if banned_rows:
        scores = scores.clone()
        scores[banned_rows, banned_ids] = NEG_INF
    return scores


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Logits (B, V) with the tokens that top-k, then top-p, then min-p remove set to -inf.

    top_k keeps every token tied with the k-th; top_p keeps the smallest set of most likely tokens
    whose probability reaches top_p (the top token always); min_p keeps tokens with probability of
    at least min_p times the top token's.
    """
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if top_p < 1.0:
        sorted_logits, sorted_index = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[..., -1:] = False
        logits = logits.masked_fill(remove.scatter(1, sorted_index, remove), NEG_INF)
    if min_p > 0.0:
        probs = logits.softmax(dim=-1)
        remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
        remove.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
        logits = logits.masked_fill(remove, NEG_INF)
    return logits


def sampling_distribution(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
                          min_p: float = 0.0) -> torch.Tensor:
    """Probabilities (B, V) the next token is drawn from at `temperature` > 0 with the filters."""
    return filter_logits(logits.float() / temperature, top_k, top_p, min_p).softmax(dim=-1)


def choose_tokens(scores: torch.Tensor, temperature: float, config,
                  generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """The next token of each row (B,): argmax at temperature 0, else a draw from the filtered distribution.

    generator: None (torch's global stream), one generator for all rows, or one per row.
    """
    if temperature == 0.0:
        return scores.argmax(dim=-1)
    probs = sampling_distribution(scores, temperature, config.top_k, config.top_p, config.min_p)
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.multinomial(row[None], 1, generator=g)[0] for row, g in zip(probs, generator,
                                                                                          strict=True)])
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def temperature_at(config, step: int) -> float:
    """The temperature for the `step`-th generated token (0-based), after annealing."""
    if config.temperature == 0.0 or config.temperature_decay == 1.0:
        return config.temperature
    return max(config.min_temperature, config.temperature * config.temperature_decay**step, 1e-6)
