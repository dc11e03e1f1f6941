"""One completion request of `slm serve`, from the JSON fields a caller sends to the Generation it gets.

The web demo and the HTTP API both go through `CompletionService`: `parse` checks a request's fields
against the server's bounds (raising RequestError with the HTTP status to answer), and `submit`
runs it in the bounded pool of worker threads (raising QueueFull when the pool is full).
"""

from __future__ import annotations

import difflib
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import torch

from slmkit.errors import SlmError
from slmkit.generate.api import generate, model_tokenizer, resolve_config
from slmkit.generate.chat import ChatSession, has_chat_template
from slmkit.generate.config import PRESETS, GenerationConfig
from slmkit.model.checkpoint import load_model
from slmkit.rundir import resolve_checkpoint_dir
from slmkit.serve.limits import GenerationPool, ServeOptions

# The fields of a request to POST /api/complete (and of what the web demo sends on its behalf).
REQUEST_FIELDS = ("prompt", "model", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "preset", "stream",
                  "chat", "system")
SEED_RANGE = 2**31  # a request without a seed gets one drawn below this, and is told which


class RequestError(SlmError):
    """A request the server refuses; `status` is the HTTP status to answer with (400, 404, 413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Cancelled(Exception):
    """The caller went away (or the server is stopping): the generation ends early."""


@dataclass
class ServedModel:
    """A model the server answers with, under `name` (what a request's "model" field names)."""

    name: str
    model: torch.nn.Module
    tokenizer: object

    @property
    def chat(self) -> bool:
        """Whether the model's tokenizer has the chat tokens (a fine-tuned model): its prompts may be
        rendered in the chat template."""
        return has_chat_template(self.tokenizer)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
             name: str | None = None) -> ServedModel:
        """A checkpoint or run directory (its best, else last, checkpoint) with the tokenizer saved beside
        it. Raises SlmError for a missing or damaged model, or one without a tokenizer."""
        directory = resolve_checkpoint_dir(path)
        model = load_model(directory, device=device, dtype=dtype)
        tokenizer = model_tokenizer(model, required=True,
                                    remedy=f"save the tokenizer the model was trained with into {directory}")
        return cls(name or model_name(path), model, tokenizer)


def model_name(path: str | os.PathLike) -> str:
    """A short name for a model directory: the run's name, or run/checkpoint for a checkpoint inside a run."""
    path = Path(path).absolute()
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def unique_names(models: Sequence[ServedModel]) -> list[ServedModel]:
    """The models with distinct names (a repeated name gets " (2)", " (3)", ...)."""
    seen: dict[str, int] = {}
    for served in models:
        count = seen.get(served.name, 0) + 1
        seen[served.name] = count
        if count > 1:
            served.name = f"{served.name} ({count})"
    return list(models)


@dataclass
class CompletionRequest:
    """A checked request: the model, the prompt's token ids and the GenerationConfig to decode with."""

    served: ServedModel
    prompt_ids: list[int]
    config: GenerationConfig
    stream: bool = False
    chat: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)


def _flag(body: dict, name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise RequestError(f"\"{name}\" must be true or false, not {value!r:.40}")
    return value


class CompletionService:
    """The models, the bounds and the pool of worker threads behind the web demo and the HTTP API."""

    def __init__(self, models: Sequence[ServedModel], options: ServeOptions | None = None):
        if not models:
            raise SlmError("slm serve needs at least one model")
        self.options = (options or ServeOptions()).validate()
        self.models = unique_names(models)
        self.pool = GenerationPool(self.options.concurrency, self.options.max_queue,
                                   self.options.threads_per_generation())
        self._closing = threading.Event()

    def model(self, name: str | None) -> ServedModel:
        """The model called `name` (the first when None); RequestError (404) for an unknown name."""
        if name is None:
            return self.models[0]
        for served in self.models:
            if served.name == name:
                return served
        names = ", ".join(repr(m.name) for m in self.models)
        raise RequestError(f"unknown model {name!r:.80}; this server has {names}", status=404)

    def parse(self, body) -> CompletionRequest:
        """A CompletionRequest from a request's JSON body (a dict), checked against the server's bounds.

        Raises RequestError: 400 for a malformed field or a setting that cannot work, 404 for an unknown
        model, 413 for a prompt longer than max_prompt_chars or max_prompt_tokens."""
        if not isinstance(body, dict):
            raise RequestError(f"the request body must be a JSON object with a \"prompt\" field, not "
                               f"{type(body).__name__}")
        unknown = sorted(set(body) - set(REQUEST_FIELDS))
        if unknown:
            close = difflib.get_close_matches(unknown[0], REQUEST_FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known fields: {', '.join(REQUEST_FIELDS)}"
            raise RequestError(f"unknown field {unknown[0]!r:.60}{hint}")
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError(f"\"prompt\" must be a string, not {type(prompt).__name__}")
        if len(prompt) > self.options.max_prompt_chars:
            raise RequestError(f"prompt of {len(prompt)} characters exceeds this server's limit of "
                               f"{self.options.max_prompt_chars}; shorten it", status=413)
        model_field = body.get("model")
        if model_field is not None and not isinstance(model_field, str):
            raise RequestError(f"\"model\" must be a model's name (a string), not {model_field!r:.40}")
        served = self.model(model_field)
        config = self.generation_config(body)
        chat, system = _flag(body, "chat"), body.get("system")
        if system is not None and not isinstance(system, str):
            raise RequestError(f"\"system\" must be a string, not {type(system).__name__}")
        if chat and not served.chat:
            raise RequestError(f"model {served.name!r} has no chat template (it was not fine-tuned for chat); "
                               f"leave \"chat\" unset or false")
        chat = served.chat if chat is None else chat
        if system is not None and not chat:
            raise RequestError("\"system\" needs the chat template: a model fine-tuned for chat, with \"chat\" "
                               "true or unset")
        prompt_ids, config = self.encode(served, prompt, config, chat, system)
        return CompletionRequest(served, prompt_ids, config, stream=bool(_flag(body, "stream")), chat=chat)

    def generation_config(self, body: dict) -> GenerationConfig:
        """The request's preset (the server's when it names none) with its overrides; a request without
        a seed gets one drawn here. RequestError for an unknown preset, a value that cannot work, or
        max_new_tokens over the server's cap."""
        preset = body.get("preset") or self.options.preset
        if preset not in PRESETS:
            raise RequestError(f"unknown preset {preset!r:.40}; choose one of {', '.join(PRESETS)}")
        cap = self.options.max_new_tokens
        max_new_tokens = body.get("max_new_tokens")
        if max_new_tokens is None:
            max_new_tokens = min(GenerationConfig.max_new_tokens, cap)
        elif isinstance(max_new_tokens, int) and max_new_tokens > cap:
            raise RequestError(f"max_new_tokens {max_new_tokens} exceeds this server's limit of {cap}; ask for "
                               f"at most {cap}")
        seed = body.get("seed")
        if seed is None:
            seed = secrets.randbelow(SEED_RANGE)  # told to the caller, so any answer can be reproduced
        try:
            return resolve_config(preset, max_new_tokens=max_new_tokens, temperature=body.get("temperature"),
                                  top_k=body.get("top_k"), top_p=body.get("top_p"), seed=seed)
        except SlmError as error:
            raise RequestError(str(error)) from None

    def encode(self, served: ServedModel, prompt: str, config: GenerationConfig, chat: bool,
               system: str | None) -> tuple[list[int], GenerationConfig]:
        """(prompt ids, config): the prompt as it is, or as the user's turn in the chat template (then the
        config also stops at `<|im_end|>` and leaves the answer room in the context). RequestError (413)
        when the prompt's own tokens exceed max_prompt_tokens, (400) when the tokenizer cannot encode it."""
        try:  # a character the tokenizer cannot encode is the caller's to fix
            prompt_ids = served.tokenizer.encode(prompt) if prompt else []
            if len(prompt_ids) > self.options.max_prompt_tokens:
                raise RequestError(f"prompt of {len(prompt_ids)} tokens exceeds this server's limit of "
                                   f"{self.options.max_prompt_tokens}; shorten it", status=413)
            if not chat:
                return prompt_ids, config
            session = ChatSession(served.model, served.tokenizer, config, system=system)
            session.messages.append({"role": "user", "content": prompt})
            prompt_ids = session.prompt_ids()
        except RequestError:
            raise
        except SlmError as error:
            raise RequestError(f"cannot encode the prompt: {error}") from None
        room = served.model.config.context_length - len(prompt_ids)
        return prompt_ids, config.replace(stop_token_ids=sorted({*config.stop_token_ids, session.end_id}),
                                          max_new_tokens=max(0, min(config.max_new_tokens, room)))

    def submit(self, request: CompletionRequest, on_text: Callable[[str], None] | None = None) -> Future:
        """Run `request` in a worker thread; the future's result is `complete`'s dict. on_text(piece)
        receives the text as it becomes final (in the worker thread). Raises QueueFull when the pool
        is full; setting `request.cancelled` ends the generation at its next token."""
        return self.pool.submit(self.complete, request, on_text)

    def complete(self, request: CompletionRequest, on_text: Callable[[str], None] | None = None) -> dict | None:
        """Generate `request` here and now: {"model", "text", "tokens" (ids), "finish_reason",
        "prompt_tokens" (a count), "seed", "chat"}; None when cancelled before it ended."""
        served = request.served

        def check(row: int, token: int) -> None:
            if request.cancelled.is_set() or self._closing.is_set():
                raise Cancelled()

        try:
            check(0, 0)
            output = generate(served.model, request.prompt_ids, request.config, tokenizer=served.tokenizer,
                              on_token=check, on_text=None if on_text is None else lambda row, text: on_text(text))
        except Cancelled:
            return None
        return {"model": served.name, "text": output.text, "tokens": output.tokens,
                "finish_reason": output.finish_reason, "prompt_tokens": len(request.prompt_ids),
                "seed": request.config.seed, "chat": request.chat}

    def describe(self) -> dict:
        """The models and the bounds, as GET /api/models answers."""
        options = self.options
        return {
            "models": [{"name": m.name, "chat": m.chat, "context_length": m.model.config.context_length,
                        "parameters": sum(p.numel() for p in m.model.parameters())} for m in self.models],
            "limits": {"max_prompt_chars": options.max_prompt_chars, "max_prompt_tokens": options.max_prompt_tokens,
                       "max_new_tokens": options.max_new_tokens, "max_queue": options.max_queue,
                       "concurrency": options.concurrency},
            "presets": PRESETS,
        }

    def close(self) -> None:
        """Stop: running generations end at their next token, waiting ones are dropped."""
        self._closing.set()
        self.pool.shutdown()
