"""Turn-by-turn chat with a model whose tokenizer has the chat template's tokens (a fine-tuned model).

    session = ChatSession(model, tokenizer, "greedy", system="Answer briefly.")
    session.reply("What is 2 + 3?")   # "2 + 3 = 5."

Each turn renders the whole conversation with the chat template (slmkit.finetune.chat.render_chat),
adds the assistant header and decodes until `<|im_end|>`. When the conversation no longer fits the
model's context, the oldest turns are dropped (a system message is kept).
"""

from __future__ import annotations

from collections.abc import Callable

from slmkit.errors import SlmError
from slmkit.finetune.chat import chat_token_ids, has_chat_tokens, render_chat
from slmkit.generate.api import generate, resolve_config
from slmkit.generate.config import GenerationConfig


def has_chat_template(tokenizer) -> bool:
    """Whether `tokenizer` has the chat tokens, so a model using it can chat in the template."""
    return tokenizer is not None and has_chat_tokens(tokenizer)


class ChatSession:
    """A conversation with `model`: `reply(text)` adds a user turn and returns the model's answer."""

    def __init__(self, model, tokenizer, config: GenerationConfig | str | None = None, *, system: str | None = None):
        if not has_chat_template(tokenizer):
            raise SlmError("this model's tokenizer has no chat tokens (<|im_start|>, <|im_end|>): it was not "
                           "fine-tuned for chat; fine-tune it with `slm finetune`, or use plain continuation")
        self.model, self.tokenizer = model, tokenizer
        self.config = resolve_config(config)
        self.system = system
        self.messages: list[dict] = []
        _, self.end_id = chat_token_ids(tokenizer)

    def reset(self) -> None:
        self.messages = []

    def prompt_ids(self) -> list[int]:
        """The conversation so far in the template, ending with the assistant header; the oldest turns
        are dropped while it leaves less than room for the answer (max_new_tokens, at most half the
        context); a last message too long even alone keeps its end."""
        context = self.model.config.context_length
        room = context - min(self.config.max_new_tokens, context // 2)
        while True:
            head = [{"role": "system", "content": self.system}] if self.system else []
            ids, _ = render_chat(self.tokenizer, head + self.messages, add_generation_prompt=True)
            if len(ids) <= room or len(self.messages) <= 1:
                return ids[-room:]
            self.messages = self.messages[2:]

    def reply(self, text: str, on_text: Callable[[int, str], None] | None = None) -> str:
        """The model's answer to the user message `text` (streamed to on_text(row, piece) if given)."""
        self.messages.append({"role": "user", "content": text})
        stops = sorted({*self.config.stop_token_ids, self.end_id})
        prompt = self.prompt_ids()
        budget = min(self.config.max_new_tokens, self.model.config.context_length - len(prompt))
        output = generate(self.model, prompt, self.config.replace(stop_token_ids=stops, max_new_tokens=budget),
                          tokenizer=self.tokenizer, on_text=on_text)
        answer = output.text.strip()
        self.messages.append({"role": "assistant", "content": answer})
        return answer
