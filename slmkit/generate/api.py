"""The public entry points: `generate` (text or ids in, Generations out) and `stream` (text as it comes).

A prompt is a string (encoded with the model's tokenizer), a list of token ids, or a list of either
for a batch. The tokenizer is the one given, else the one saved beside the model's checkpoint.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator

import torch

from slmkit.errors import SlmError
from slmkit.generate.config import GenerationConfig
from slmkit.generate.engine import Generation, sample


def resolve_config(config: GenerationConfig | str | None = None, **overrides) -> GenerationConfig:
    """A GenerationConfig from a config, a preset name or None (defaults), with keyword overrides
    (None values ignored)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(config, str):
        return GenerationConfig.from_preset(config, **overrides)
    if config is None:
        return GenerationConfig(**overrides).validate()
    if not isinstance(config, GenerationConfig):
        raise SlmError(f"config must be a GenerationConfig or a preset name, got {type(config).__name__}")
    return config.replace(**overrides) if overrides else config.validate()


def model_tokenizer(model, required: bool = False,
                    remedy: str = 'pass tokenizer= (e.g. slmkit.tokenizer.load_tokenizer("gpt2")) or give token ids'):
    """The tokenizer saved with the model's checkpoint, or None.

    Read from `model.checkpoint_dir` (set by `load_model`) at each call, which costs milliseconds;
    callers that generate repeatedly pass tokenizer= instead. required: raise SlmError when there is
    none, ending with `remedy` (what the caller can do; the command line names its --tokenizer flag).
    """
    directory = getattr(model, "checkpoint_dir", None)
    if directory is not None:
        try:
            from slmkit.tokenizer import load_tokenizer

            return load_tokenizer(directory)
        except (ImportError, SlmError) as error:
            if required:
                raise SlmError(f"cannot load the tokenizer saved with {directory}: {error}; {remedy}") from None
            return None
    if required:
        raise SlmError(f"a text prompt needs a tokenizer: this model has none saved with it; {remedy}")
    return None


def _as_prompts(prompt, tokenizer) -> tuple[list[list[int]], bool]:
    """(list of id lists, whether the input was a single prompt)."""
    if isinstance(prompt, torch.Tensor):
        prompt = prompt.tolist()
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt) if prompt else []], True
    if isinstance(prompt, (list, tuple)):
        if not prompt or all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [list(prompt)], True
        prompts = []
        for item in prompt:
            if isinstance(item, str):
                prompts.append(tokenizer.encode(item) if item else [])
            elif isinstance(item, (list, tuple)) and all(isinstance(t, int) for t in item):
                prompts.append(list(item))
            else:
                raise SlmError(f"a batch prompt must be a string or a list of token ids, got {item!r:.60}")
        return prompts, False
    raise SlmError(f"prompt must be a string, a list of token ids, or a list of those; got {type(prompt).__name__}")


def _check_ids(prompts: list[list[int]], vocab_size: int) -> None:
    for prompt in prompts:
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise SlmError(f"token id {bad[0]} is outside the model's vocabulary of {vocab_size}")


def generate(model, prompt, config: GenerationConfig | str | None = None, *, tokenizer=None,
             eot_id: int | None = None, pad_id: int | None = None, skip_special_tokens: bool = True,
             on_text: Callable[[int, str], None] | None = None, on_token: Callable[[int, int], None] | None = None,
             compile: bool = False, **overrides):
    """Continue `prompt` with `model`.

    prompt: a string, a list of token ids, or a list of strings / id lists (a batch, left-padded;
    each row comes out as it would alone). config: a GenerationConfig, a preset name ("creative",
    "coherent", "deterministic", "greedy") or None; keyword overrides (max_new_tokens=..., top_p=...)
    change single fields. The tokenizer defaults to the one saved with the checkpoint; eot_id and
    pad_id default to the tokenizer's. on_text(row, text) receives text as it becomes final,
    on_token(row, id) each token. compile=True runs the decode steps through torch.compile (compiled
    once for batch 1 and once for larger batches, then reused; worth it for long generations).

    Returns a Generation for a single prompt, a list (one per prompt) for a batch; with
    num_return_sequences > 1 each of those becomes a list of Generations (beam search: best first).
    Raises SlmError for invalid settings, out-of-vocabulary ids, or a text prompt without tokenizer.
    """
    config = resolve_config(config, **overrides)
    needs_text = isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and any(isinstance(p, str) for p in prompt))
    tokenizer = tokenizer or model_tokenizer(model, required=needs_text or bool(config.stop_strings))
    if tokenizer is not None:
        eot_id = tokenizer.eot_id if eot_id is None else eot_id
        pad_id = tokenizer.pad_id if pad_id is None else pad_id
    prompts, single = _as_prompts(prompt, tokenizer)
    _check_ids(prompts, model.config.vocab_size)
    was_training = model.training
    model.eval()
    try:
        if config.num_beams > 1:
            from slmkit.generate.beam import beam_search

            results = beam_search(model, prompts, config, eot_id=eot_id, pad_id=pad_id, tokenizer=tokenizer,
                                  skip_special_tokens=skip_special_tokens)
        else:
            copies = config.num_return_sequences
            flat = [p for p in prompts for _ in range(copies)]
            outputs = sample(model, flat, config, eot_id=eot_id, pad_id=pad_id, tokenizer=tokenizer,
                             on_token=on_token, on_text=on_text, skip_special_tokens=skip_special_tokens,
                             compile=compile)
            results = [outputs[i * copies:(i + 1) * copies] for i in range(len(prompts))]
    finally:
        model.train(was_training)
    if config.num_return_sequences == 1:
        results = [r[0] for r in results]
    return results[0] if single else results


def stream(model, prompt, config: GenerationConfig | str | None = None, *, tokenizer=None,
           **kwargs) -> Iterator[str]:
    """Yield the text of one prompt's continuation piece by piece, as it is generated.

    Text that could still turn into a stop string, or an unfinished UTF-8 character, is held back
    until it is decided. Same arguments as `generate` (num_beams must be 1, one prompt).
    """
    fields = {f.name for f in dataclasses.fields(GenerationConfig)}
    config = resolve_config(config, **{k: kwargs.pop(k) for k in list(kwargs) if k in fields})
    if config.num_beams > 1 or config.num_return_sequences > 1:
        raise SlmError("streaming shows one sampled continuation; use num_beams 1 and num_return_sequences 1")
    tokenizer = tokenizer or model_tokenizer(model, required=True)
    pieces: queue.Queue = queue.Queue()
    done = object()
    failure: list[BaseException] = []

    def run():
        try:
            generate(model, prompt, config, tokenizer=tokenizer, on_text=lambda row, text: pieces.put(text), **kwargs)
        except BaseException as error:  # re-raised in the consumer
            failure.append(error)
        finally:
            pieces.put(done)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    while (piece := pieces.get()) is not done:
        yield piece
    worker.join()
    if failure:
        raise failure[0]


__all__ = ["Generation", "generate", "model_tokenizer", "resolve_config", "stream"]
