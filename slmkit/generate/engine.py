"""The decoding engine: prefill the prompts into a preallocated KV cache, then one token per step.

Prompts of different lengths share a batch through left padding: the model masks the padded keys
and restarts positions at each row's first real token, so every row decodes exactly as it would
alone. Temperature 0 (greedy) and sampling are the same loop; beam search (beam.py) reuses the
prefill, the penalties and the stop rules.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from slmkit.errors import SlmError
from slmkit.generate.sampling import NEG_INF, apply_penalties, choose_tokens, temperature_at


@dataclass
class Generation:
    """One generated continuation.

    tokens: the generated ids (the end-of-text or stop token that ended it is not included; the
    tokens that spelled a stop string are). text: their decoded text, cut before a stop string
    (None without a tokenizer). finish_reason: "eot", "stop_token", "stop_string", "length" (max
    new tokens) or "context" (the model's context is full and overflow is "refuse"). score: beam
    search's length-penalised sum of log-probabilities (None when sampling).
    """

    tokens: list[int]
    text: str | None = None
    finish_reason: str = "length"
    score: float | None = None
    prompt_tokens: list[int] = field(default_factory=list)


def prepare_prompts(prompts: list[list[int]], config, context_length: int, eot_id: int | None,
                    allow_slide: bool = True) -> list[list[int]]:
    """Check and fit the prompts: an empty prompt starts from end-of-text; a prompt that leaves no room
    in the context is refused, or (overflow "slide") keeps its last tokens, with a warning."""
    fitted = []
    for prompt in prompts:
        prompt = list(prompt)
        if not prompt:
            if eot_id is None:
                raise SlmError("empty prompt and no end-of-text id to start from; give a prompt or a tokenizer")
            prompt = [eot_id]
        needed = len(prompt) + config.max_new_tokens
        if needed > context_length:
            if config.overflow == "refuse" or not allow_slide:
                fixes = ("shorten the prompt or lower max_new_tokens (beam search cannot slide)" if not allow_slide
                         else "shorten the prompt, lower max_new_tokens, or use overflow='slide' (--overflow slide)")
                raise SlmError(f"prompt of {len(prompt)} tokens + max_new_tokens {config.max_new_tokens} = {needed} "
                               f"exceeds the model context of {context_length} tokens; {fixes}")
            if len(prompt) > context_length:
                warnings.warn(
                    f"prompt of {len(prompt)} tokens is longer than the model context of {context_length}; "
                    f"keeping its last {context_length} tokens",
                    stacklevel=3,
                )
                prompt = prompt[-context_length:]
        fitted.append(prompt)
    return fitted


def left_pad(rows: list[list[int]], width: int | None = None, fill: int = 0):
    """(tokens (B, width) long, pad_offsets (B,) long or None when no row is padded)."""
    width = width or max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), fill, dtype=torch.long)
    offsets = []
    for i, row in enumerate(rows):
        row = row[-width:]
        tokens[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        offsets.append(width - len(row))
    pad_offsets = torch.tensor(offsets, dtype=torch.long) if any(offsets) else None
    return tokens, pad_offsets


def prefill(model, tokens: torch.Tensor, cache, pad_offsets: torch.Tensor | None) -> torch.Tensor:
    """Read prompts (B, T) into `cache`; the logits (B, V) of the last position only (the output head
    over every position would cost as much as the rest of a short prefill). Raises SlmError when
    they are not all finite (a damaged or diverged model)."""
    hidden = model(tokens, cache=cache, pad_offsets=pad_offsets, return_hidden=True)
    logits = model.lm_head(hidden[:, -1])
    if not bool(torch.isfinite(logits).all()):
        raise non_finite_logits(model)
    return logits


def non_finite_logits(model) -> SlmError:
    """The error for a model whose logits hold NaN or infinity, naming its checkpoint when known."""
    directory = getattr(model, "checkpoint_dir", None)
    directory = Path(directory) if directory is not None else None
    where = f"the model in {directory}" if directory is not None else "the model"
    if directory is not None and directory.parent.name == "checkpoints":
        earlier = f"an earlier checkpoint of its run (e.g. {directory.parent / 'step-N'})"
    else:
        earlier = "an earlier checkpoint of its run (checkpoints/step-N)"
    dtype = next(model.parameters()).dtype
    half = " or load it in float32," if dtype in (torch.float16, torch.bfloat16) else ""
    return SlmError(f"{where} gives non-finite logits (NaN or infinity), so it cannot generate: its weights are "
                    f"damaged or its training diverged; use {earlier},{half} or retrain with a lower "
                    f"learning rate (--set train.lr=...)")


def chosen_tokens(scores: torch.Tensor, tokens: torch.Tensor, model) -> list[int]:
    """`tokens` (B,) as a list, refusing a greedy choice whose score is NaN or +inf: argmax picks a NaN
    or an infinity when there is one, so checking the chosen score checks the whole row; it rides on
    the one read of the tokens that every step makes."""
    chosen = scores.gather(1, tokens[:, None])[:, 0]
    listed = torch.where(chosen < float("inf"), tokens, -1).tolist()  # NaN < inf is False too
    if -1 in listed:
        raise non_finite_logits(model)
    return listed


class Decoder:
    """The one-token decode steps of a generation: the model's own forward over a KV cache.

    compile=True runs the steps through torch.compile over static caches of the full context, so no
    shape depends on the step or the prompt. The compiled callable lives here, held by the caller
    (not on the model, not in a module global); dynamo keeps its graphs with the model's code, so
    the next Decoder for the same model reuses them.
    """

    def __init__(self, model, compile: bool = False):
        self.model = model
        self.static = compile
        self.forward = None if compile else model  # compiled at the first step, after the first token

    def new_cache(self, batch_size: int, capacity: int):
        """A cache for `capacity` steps (static: the whole context, whatever `capacity`)."""
        if not self.static:
            return self.model.new_cache(batch_size, capacity)
        cache = self.model.new_cache(batch_size, self.model.config.context_length, static=True)
        for tensor in cache.keys + cache.values:
            _batch_is_dynamic(tensor)
        return cache

    def step(self, tokens: torch.Tensor, cache, pad_offsets: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, V) of the next token after `tokens` (B, 1), which are added to `cache`."""
        if self.static:
            if self.forward is None:
                # Batch marked dynamic (below), all else static: one graph for batch 1, one for any larger.
                self.forward = torch.compile(self.model, dynamic=False)
            if pad_offsets is None:  # one compiled graph for padded and unpadded batches
                pad_offsets = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
            # a fresh (B, 1) tensor: a column sliced from the output buffer has a stride that depends on
            # max_new_tokens, and dynamo would recompile the step for every new length
            tokens = tokens.clone(memory_format=torch.contiguous_format)
            _batch_is_dynamic(tokens)
            _batch_is_dynamic(pad_offsets)
        return self.forward(tokens, cache=cache, pad_offsets=pad_offsets)[:, -1]


def _batch_is_dynamic(tensor: torch.Tensor) -> None:
    if tensor.shape[0] > 1:  # batch 1 gets its own graph (dynamo specializes sizes 0 and 1)
        torch._dynamo.maybe_mark_dynamic(tensor, 0)


class StopChecker:
    """Per-row stop rules on accepted tokens, and the streaming text that is safe to show so far."""

    def __init__(self, config, eot_id: int | None, tokenizer=None, skip_special_tokens: bool = True):
        self.stop_ids = set(config.stop_token_ids)
        self.eot_id = None if config.ignore_eot else eot_id
        self.stop_strings = list(config.stop_strings)
        if self.stop_strings and tokenizer is None:
            raise SlmError(f"stop_strings {self.stop_strings!r} need a tokenizer to read the text; "
                           f"pass tokenizer= or use stop_token_ids")
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens

    def token_stop(self, token: int) -> str | None:
        if token == self.eot_id:
            return "eot"
        if token in self.stop_ids:
            return "stop_token"
        return None

    def text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=self.skip_special_tokens)

    def string_stop(self, text: str) -> int | None:
        """Index in `text` where the earliest stop string starts, or None."""
        hits = [i for i in (text.find(s) for s in self.stop_strings) if i >= 0]
        return min(hits) if hits else None

    def safe_length(self, text: str) -> int:
        """How much of `text` can be shown now: not an unfinished UTF-8 character, nor a possible
        beginning of a stop string."""
        end = len(text)
        while end > 0 and text[end - 1] == "\ufffd":
            end -= 1
        for stop in self.stop_strings:
            for keep in range(min(len(stop) - 1, end), 0, -1):
                if text[end - keep:end] == stop[:keep]:
                    end -= keep
                    break
        return end


class RowState:
    """What one row has produced, and what of it has been streamed."""

    def __init__(self, prompt: list[int]):
        self.prompt = prompt
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.text: str | None = None
        self.shown = 0  # characters of text already streamed

    def to_generation(self, score: float | None = None) -> Generation:
        return Generation(self.tokens, self.text, self.finish_reason or "length", score, self.prompt)


def accept_token(state: RowState, token: int, stops: StopChecker,
                 on_text: Callable[[str], None] | None) -> None:
    """Record `token` for a running row, apply the stop rules, stream any text now safe to show."""
    reason = stops.token_stop(token)
    if reason:
        state.finish_reason = reason
    else:
        state.tokens.append(token)
    if stops.tokenizer is None or (on_text is None and not stops.stop_strings):
        return  # the text is decoded once at the end
    text = stops.text(state.tokens)
    cut = stops.string_stop(text) if stops.stop_strings else None
    if cut is not None:
        text, state.finish_reason = text[:cut], "stop_string"
    state.text = text
    if on_text is not None:
        shown_to = len(text) if state.finish_reason else stops.safe_length(text)
        if shown_to > state.shown:
            on_text(text[state.shown:shown_to])
            state.shown = shown_to


def finish_rows(states: list[RowState], on_text: Callable[[int, str], None] | None) -> None:
    """Rows stopped by max_new_tokens: mark them, and flush their held-back text."""
    for row, state in enumerate(states):
        if state.finish_reason is None:
            state.finish_reason = "length"
            if on_text is not None and state.text is not None and len(state.text) > state.shown:
                on_text(row, state.text[state.shown:])
                state.shown = len(state.text)


def _generators(config, device, rows: int) -> list[torch.Generator] | None:
    """One random stream per row, row i seeded with seed + i: a batch's row i draws exactly what a
    one-prompt call with seed + i draws, and rows with the same prompt still differ."""
    if config.seed is None:
        return None
    return [torch.Generator(device=device).manual_seed(config.seed + row) for row in range(rows)]


@torch.inference_mode()
def sample(model, prompts: list[list[int]], config, *, eot_id: int | None = None, pad_id: int | None = None,
           tokenizer=None, on_token: Callable[[int, int], None] | None = None,
           on_text: Callable[[int, str], None] | None = None, skip_special_tokens: bool = True,
           compile: bool = False) -> list[Generation]:
    """Decode every prompt (token ids) with `config` (num_beams 1); one Generation per prompt.

    on_token(row, token) is called for each accepted token, on_text(row, text) with each piece of text
    that is safe to show (needs a tokenizer). Temperature 0 is greedy. compile: run the one-token steps
    through torch.compile (see Decoder).
    """
    context = model.config.context_length
    rows = prepare_prompts(prompts, config, context, eot_id)
    stops = StopChecker(config, eot_id, tokenizer, skip_special_tokens)
    states = [RowState(row) for row in rows]
    if config.max_new_tokens == 0:
        return [s.to_generation() for s in states]
    device = next(model.parameters()).device
    batch = len(rows)
    generators = _generators(config, device, batch)
    width = max(len(r) for r in rows)
    total = width + config.max_new_tokens
    prompt_tokens, pad_offsets = left_pad(rows, width)
    history = torch.zeros((batch, total), dtype=torch.long, device=device)
    history[:, :width] = prompt_tokens
    pad_offsets = pad_offsets.to(device) if pad_offsets is not None else None
    history_pad = pad_offsets
    decoder = Decoder(model, compile)
    capacity = max(min(total - 1, context), width)  # steps the model will read
    cache = decoder.new_cache(batch, capacity)
    logits = prefill(model, history[:, :width], cache, pad_offsets)
    uses_penalties = (config.repetition_penalty != 1.0 or config.presence_penalty or config.frequency_penalty
                      or config.no_repeat_ngram_size > 0)
    running = [True] * batch
    filler = eot_id if eot_id is not None else 0
    column = width
    for step in range(config.max_new_tokens):
        scores = logits.float()
        if pad_id is not None and pad_id != eot_id:
            scores[:, pad_id] = NEG_INF  # a padding token is never emitted
        if uses_penalties:
            scores = apply_penalties(scores, history[:, :column], history_pad, width, config)
        temperature = temperature_at(config, step)
        try:
            tokens = choose_tokens(scores, temperature, config, generators)
        except RuntimeError as error:  # torch.multinomial checks the distribution it draws from
            if "probability tensor contains" not in str(error):
                raise
            raise non_finite_logits(model) from None
        listed = chosen_tokens(scores, tokens, model) if temperature == 0.0 else tokens.tolist()
        history[:, column] = tokens
        column += 1
        for row, token in enumerate(listed):
            if not running[row]:
                continue
            accept_token(states[row], token, stops, on_text and (lambda text, row=row: on_text(row, text)))
            if on_token is not None and states[row].finish_reason in (None, "stop_string"):
                on_token(row, token)
            running[row] = states[row].finish_reason is None
        if not any(running) or step == config.max_new_tokens - 1:
            break
        if not all(running):
            history[:, column - 1].masked_fill_(torch.tensor([not r for r in running], device=device), filler)
        feed = history[:, column - 1:column]
        if cache.length == cache.capacity:
            # The context is full (overflow "slide"): keep the newest three quarters and re-read them.
            keep = max(1, (3 * context) // 4)
            kept = [history[i, max(int(history_pad[i]) if history_pad is not None else 0, column - keep):column]
                    .tolist() for i in range(batch)]
            kept_tokens, pad_offsets = left_pad(kept, keep)
            pad_offsets = pad_offsets.to(device) if pad_offsets is not None else None
            cache = decoder.new_cache(batch, capacity)
            logits = prefill(model, kept_tokens.to(device), cache, pad_offsets)
        else:
            logits = decoder.step(feed, cache, pad_offsets)
    finish_rows(states, on_text)
    for state in states:
        if tokenizer is not None and state.text is None:
            state.text = stops.text(state.tokens)
    return [s.to_generation() for s in states]
