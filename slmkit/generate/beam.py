"""Beam search, step for step the algorithm of transformers' `generate(num_beams=...)`.

Each step scores every (beam, token) continuation by its summed log-probability (after the same
penalties as sampling), keeps the best 2 x num_beams candidates, moves those that end (end-of-text,
a stop token, or the length limit) among the best num_beams into the finished set with a length
penalty, and continues with the best num_beams that did not end. early_stopping follows
transformers (True: stop when num_beams hypotheses are finished; False: stop when the best running
beam, at its current length, cannot beat the worst finished one; "never": the same check at the
longest possible length when length_penalty > 0).
"""

from __future__ import annotations

import torch

from slmkit.generate.engine import (
    Decoder,
    Generation,
    StopChecker,
    left_pad,
    non_finite_logits,
    prefill,
    prepare_prompts,
)
from slmkit.generate.sampling import NEG_INF, apply_penalties

LARGE = 1.0e9


@torch.inference_mode()
def beam_search(model, prompts: list[list[int]], config, *, eot_id: int | None = None,
                pad_id: int | None = None, tokenizer=None, skip_special_tokens: bool = True) -> list[list[Generation]]:
    """The config.num_return_sequences best beams of each prompt, best first, with their scores."""
    rows = prepare_prompts(prompts, config, model.config.context_length, eot_id, allow_slide=False)
    stops = StopChecker(config, eot_id, tokenizer, skip_special_tokens)
    if config.max_new_tokens == 0:
        return [[Generation([], stops.text([]) if tokenizer else None, "length", 0.0, row)] for row in rows]
    device = next(model.parameters()).device
    batch, beams, length_penalty = len(rows), config.num_beams, config.length_penalty
    early_stopping = config.early_stopping
    width = max(len(r) for r in rows)
    max_length = width + config.max_new_tokens
    prompt_tokens, pad_offsets = left_pad(rows, width)
    flat_pad = pad_offsets.repeat_interleave(beams).to(device) if pad_offsets is not None else None
    stop_ids = sorted(({stops.eot_id} - {None}) | stops.stop_ids)
    stop_tensor = torch.tensor(stop_ids, dtype=torch.long, device=device)
    keep = max(2, 1 + len(stop_ids)) * beams
    top_beam_mask = torch.arange(keep, device=device) < beams

    running = torch.full((batch, beams, max_length), stop_ids[0] if stop_ids else 0, dtype=torch.long,
                         device=device)
    running[:, :, :width] = prompt_tokens.to(device)[:, None, :]
    sequences = running.clone()
    lengths = torch.zeros((batch, beams), dtype=torch.long, device=device)  # generated length of each
    running_scores = torch.zeros((batch, beams), device=device)
    running_scores[:, 1:] = -LARGE
    beam_scores = torch.full((batch, beams), -LARGE, device=device)
    finished = torch.zeros((batch, beams), dtype=torch.bool, device=device)
    improvable = torch.ones((batch, 1), dtype=torch.bool, device=device)
    batch_offset = torch.arange(batch, device=device)[:, None] * beams

    decoder = Decoder(model)
    cache = decoder.new_cache(batch * beams, max(max_length - 1, width))
    logits = prefill(model, running[:, :, :width].reshape(batch * beams, width), cache, flat_pad)
    column = width
    while True:
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        if pad_id is not None and pad_id not in stop_ids:
            log_probs[:, pad_id] = NEG_INF  # a padding token is never emitted
        log_probs = apply_penalties(log_probs, running[:, :, :column].reshape(batch * beams, column),
                                    flat_pad, width, config)
        vocab = log_probs.shape[-1]
        log_probs = (log_probs.view(batch, beams, vocab) + running_scores[:, :, None]).view(batch, -1)

        top_scores, top_index = torch.topk(log_probs, keep)
        parent = top_index // vocab
        top_sequences = torch.take_along_dim(running, parent[:, :, None], dim=1)
        top_sequences[:, :, column] = top_index % vocab
        ends = torch.isin(top_sequences[:, :, column], stop_tensor) | (column + 1 >= max_length)

        # Continue with the best num_beams candidates that did not end.
        running_candidates = top_scores + ends.float() * -LARGE
        chosen = torch.topk(running_candidates, beams)[1]
        running = torch.take_along_dim(top_sequences, chosen[:, :, None], dim=1)
        running_scores = torch.take_along_dim(running_candidates, chosen, dim=1)
        cache_rows = (torch.take_along_dim(parent, chosen, dim=1) + batch_offset).view(-1)

        # Move candidates that ended among the top num_beams into the finished set.
        just_finished = ends & top_beam_mask[None, :]
        final_scores = top_scores / ((column + 1 - width) ** length_penalty)
        full = finished.all(dim=-1, keepdim=True) & (early_stopping is True)
        final_scores = final_scores + full.float() * -LARGE + (~improvable).float() * -LARGE
        final_scores = final_scores + (~just_finished).float() * -LARGE
        merged_scores = torch.cat([beam_scores, final_scores], dim=1)
        best = torch.topk(merged_scores, beams)[1]
        sequences = torch.take_along_dim(torch.cat([sequences, top_sequences], dim=1), best[:, :, None], dim=1)
        beam_scores = torch.take_along_dim(merged_scores, best, dim=1)
        new_lengths = torch.full_like(top_scores, column + 1 - width, dtype=torch.long)
        lengths = torch.take_along_dim(torch.cat([lengths, new_lengths], dim=1), best, dim=1)
        finished = torch.take_along_dim(torch.cat([finished, just_finished], dim=1), best, dim=1)

        column += 1
        if early_stopping == "never" and length_penalty > 0.0:
            best_length = max_length - width
        else:
            best_length = column - width
        best_running = running_scores[:, :1] / (best_length**length_penalty)
        worst_finished = torch.where(finished, beam_scores.min(dim=1, keepdim=True)[0], -LARGE)
        improvable = improvable & (best_running > worst_finished).any(dim=-1, keepdim=True)
        open_beams = not (bool(finished.all()) and early_stopping is True)
        if not (bool(improvable.any()) and open_beams and not bool(ends.all())):
            break
        cache.reorder(cache_rows)
        logits = decoder.step(running[:, :, column - 1].reshape(-1, 1), cache, flat_pad)

    # A NaN or infinite logit makes its row's log-probabilities NaN, which top-k ranks first and every
    # later sum keeps: checked once here rather than at every step.
    if bool(torch.isnan(running_scores).any() | torch.isnan(beam_scores).any()):
        raise non_finite_logits(model)
    results = []
    for b in range(batch):
        ranked = []
        for k in range(config.num_return_sequences):
            tokens = sequences[b, k, width:width + int(lengths[b, k])].tolist()
            reason = "length"
            if tokens and tokens[-1] in stop_ids:
                reason = stops.token_stop(tokens[-1])
                tokens = tokens[:-1]
            text = None
            if tokenizer is not None:
                text = stops.text(tokens)
                cut = stops.string_stop(text) if stops.stop_strings else None
                if cut is not None:
                    text, reason = text[:cut], "stop_string"
            ranked.append(Generation(tokens, text, reason, float(beam_scores[b, k]), rows[b]))
        results.append(ranked)
    return results
