"""The chat template: conversations to token ids and a loss mask, the chat tokens, and the embedding rows
a model trained without them needs.

    tokenizer = with_chat_tokens(load_tokenizer("data/shakespeare"))   # <|im_start|>, <|im_end|> appended
    config, state = extend_embeddings(state, config, tokenizer.vocab_size)
    ids, mask = render_chat(tokenizer, [{"role": "user", "content": "2 + 2?"},
                                        {"role": "assistant", "content": "4"}])

The template is ChatML as SmolLM2 writes it, without a default system prompt: each message is
`<|im_start|>{role}\\n{content}<|im_end|>\\n`, and a generation prompt appends `<|im_start|>assistant\\n`.
slmkit renders straight to ids: the two chat tokens by their special ids, the text between them by
`tokenizer.encode`, one piece at a time, which is how Hugging Face tokenizes the rendered string, so an
exported tokenizer's `apply_chat_template` (CHAT_TEMPLATE) gives the same ids. One deliberate
difference: text that spells a special token ("<|im_start|>" typed in a message) stays plain text here,
while `apply_chat_template` turns it into the special id, letting a user forge a turn.
"""

from __future__ import annotations

import torch

from slmkit.errors import SlmError
from slmkit.model.config import ModelConfig
from slmkit.tokenizer.base import CHAT_TEMPLATE, CHAT_TOKENS, Tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "CHAT_TOKENS",
    "ROLES",
    "chat_token_ids",
    "check_messages",
    "extend_embeddings",
    "has_chat_tokens",
    "render_chat",
    "with_chat_tokens",
]

ROLES = ("system", "user", "assistant")
CHAT_SUFFIX = "+chat"  # added to a tokenizer's name when the chat tokens are appended to it
# Parameters with one row per token id; each grows with the vocabulary.
VOCAB_ROWS = ("embed.weight", "lm_head.weight", "lm_head.bias")


def has_chat_tokens(tokenizer: Tokenizer) -> bool:
    """Whether `tokenizer` has `<|im_start|>` and `<|im_end|>` as special tokens."""
    return tokenizer.has_chat_tokens()


def chat_token_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    """The ids of `<|im_start|>` and `<|im_end|>` (the latter ends a turn: generation stops there).
    Raises SlmError when the tokenizer lacks them."""
    if not tokenizer.has_chat_tokens():
        raise SlmError(f"tokenizer {tokenizer.name!r} has no chat tokens {' and '.join(CHAT_TOKENS)}; add them with "
                       "slmkit.finetune.chat.with_chat_tokens (and grow the model's embeddings with "
                       "extend_embeddings), or train the tokenizer with chat_tokens=True")
    start, end = (tokenizer.special_token_id(token) for token in CHAT_TOKENS)
    return start, end


def with_chat_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer` with the chat tokens appended at ids vocab_size and vocab_size + 1 (named NAME+chat);
    `tokenizer` itself when it has them already. Ordinary text encodes to the same ids as before, and the
    result saves and loads like any tokenizer. Raises SlmError for a kind that cannot take new tokens."""
    if tokenizer.has_chat_tokens():
        return tokenizer
    name = tokenizer.name if tokenizer.name.endswith(CHAT_SUFFIX) else tokenizer.name + CHAT_SUFFIX
    return tokenizer.with_special_tokens(list(CHAT_TOKENS), name)


def check_messages(messages) -> None:
    """SlmError unless `messages` is a non-empty list of {"role": one of ROLES, "content": str}."""
    if not isinstance(messages, list) or not messages:
        raise SlmError(f"a conversation is a non-empty list of messages, not {type(messages).__name__}")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise SlmError(f"message {index} of the conversation must be an object with \"role\" and \"content\", "
                           f"not {str(message)[:80]!r}")
        if message["role"] not in ROLES:
            raise SlmError(f"message {index} has unknown role {message['role']!r}; use one of {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise SlmError(f"message {index} ({message['role']}) has content of type "
                           f"{type(message['content']).__name__}; content must be a string")


def render_chat(tokenizer: Tokenizer, messages: list[dict],
                add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """Token ids of `messages` in the chat template, and the loss mask: True on the tokens of each
    assistant message's content and its closing `<|im_end|>` (so the model learns to end its turn), False
    on everything else (the other messages, every `<|im_start|>{role}\\n` header, the newlines between
    turns, the generation prompt). Raises SlmError for a tokenizer without chat tokens or a malformed
    message (see `check_messages`)."""
    start, end = chat_token_ids(tokenizer)
    check_messages(messages)
    newline = tokenizer.encode("\n")
    ids: list[int] = []
    mask: list[bool] = []
    for message in messages:
        role = message["role"]
        text = tokenizer.encode(f"{role}\n{message['content']}")  # one piece, as Hugging Face encodes it
        header = _header_length(tokenizer, f"{role}\n", text) if role == "assistant" else len(text)
        ids += [start, *text, end, *newline]
        response = role == "assistant"
        mask += [False] * (1 + header) + [True] * (len(text) - header) + [response] + [False] * len(newline)
    if add_generation_prompt:
        prompt = tokenizer.encode("assistant\n")
        ids += [start, *prompt]
        mask += [False] * (1 + len(prompt))
    return ids, mask


def _header_length(tokenizer: Tokenizer, header: str, ids: list[int]) -> int:
    """How many of `ids` (the encoding of header + content) belong to the header alone. Usually the
    header's own encoding is a prefix; when a token spans the boundary (content starting with a newline
    can merge with the header's), it is counted as content: the first token whose decoded prefix is longer
    than the header (a few tokens in, since the header is short)."""
    alone = tokenizer.encode(header)
    if ids[: len(alone)] == alone:
        return len(alone)
    size = len(header.encode("utf-8"))
    for count in range(len(ids)):
        if len(tokenizer.decode(ids[: count + 1], skip_special_tokens=False).encode("utf-8")) > size:
            return count
    return len(ids)


def extend_embeddings(state: dict[str, torch.Tensor], config: ModelConfig,
                      new_vocab: int) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Grow a model's vocabulary to `new_vocab` ids (e.g. after `with_chat_tokens`): the config with the
    new vocab_size, and a state dict whose per-token rows (embed.weight; an untied lm_head.weight; a bias
    if any) gain new rows equal to the mean of the existing rows, so a new token starts as an "average
    token" and the first loss stays near the model's. Old ids keep their exact logits. A tied head shares
    the grown embedding. Raises SlmError when `new_vocab` is below the model's vocabulary or `state` does
    not match `config`."""
    old_vocab = config.vocab_size
    if new_vocab < old_vocab:
        raise SlmError(f"cannot shrink the model's vocabulary from {old_vocab} to {new_vocab} ids; the tokenizer "
                       "must keep every id the model knows")
    if "embed.weight" not in state:
        raise SlmError("the model's weights have no embed.weight; this is not an slmkit model state dict")
    state = dict(state)
    tied = config.tie_embeddings or state.get("lm_head.weight") is state["embed.weight"]
    for name in VOCAB_ROWS:
        if name not in state or (name == "lm_head.weight" and tied):
            continue
        rows = state[name]
        if rows.shape[0] != old_vocab:
            raise SlmError(f"{name} has {rows.shape[0]} rows but the model config says vocab_size {old_vocab}; "
                           "the weights and the config do not belong together")
        mean = rows.float().mean(dim=0, keepdim=True).to(rows.dtype)
        state[name] = torch.cat([rows, mean.expand(new_vocab - old_vocab, *rows.shape[1:])], dim=0)
    if tied and "lm_head.weight" in state:
        state["lm_head.weight"] = state["embed.weight"]
    return config.replace(vocab_size=new_vocab), state
