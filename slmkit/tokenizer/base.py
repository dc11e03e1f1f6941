"""The Tokenizer interface every slmkit tokenizer honours, and the manifest it saves.

A saved tokenizer is a directory holding `slmkit_tokenizer.json` (the manifest: kind, name, special
ids) plus whatever files the kind needs (`tokenizer.json` for BPE). `load_tokenizer(dir)` reads it
back with identical ids.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from slmkit.errors import SlmError
from slmkit.utils import write_json_atomic, write_text_atomic

MANIFEST = "slmkit_tokenizer.json"
MANIFEST_FORMAT = "slmkit-tokenizer"
EOT_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
# ChatML as SmolLM2 writes it, without a default system prompt: what transformers' apply_chat_template
# runs for an exported tokenizer that has CHAT_TOKENS. slmkit.finetune.chat.render_chat gives the same ids.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class Tokenizer(ABC):
    """Text to token ids and back.

    Attributes: `name` (the spec it was made from, e.g. "gpt2", "bpe:8192", "char"), `vocab_size`
    (number of ids, special tokens included), `eot_id` (end-of-text id that separates documents),
    `pad_id` (padding id or None).
    """

    kind: str = ""
    name: str
    vocab_size: int
    eot_id: int
    pad_id: int | None

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of ordinary text; special-token strings in `text` are encoded as plain text."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_to_array(self, text: str, dtype=np.uint32) -> np.ndarray:
        """Ids of `text` as a numpy array (subclasses avoid the Python list where they can)."""
        return np.asarray(self.encode(text), dtype=dtype)

    @abstractmethod
    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of `ids`; special tokens are dropped unless `skip_special_tokens` is False."""

    @abstractmethod
    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 length in bytes of every id (0 for special tokens), shape (vocab_size,)."""

    @abstractmethod
    def special_token_id(self, token: str) -> int | None:
        """The id of special token `token` (e.g. "<|im_start|>"), or None when this tokenizer lacks it."""

    def has_chat_tokens(self) -> bool:
        """Whether `<|im_start|>` and `<|im_end|>` are special tokens of this tokenizer."""
        return all(self.special_token_id(token) is not None for token in CHAT_TOKENS)

    def with_special_tokens(self, tokens: list[str], name: str | None = None) -> Tokenizer:
        """A copy of this tokenizer with the special `tokens` it lacks appended at ids vocab_size,
        vocab_size + 1, ... (ordinary text still encodes to the same ids), named `name` (default: this
        name). Raises SlmError for a kind that cannot take new tokens."""
        raise SlmError(f"tokenizer {self.name!r} ({self.kind}) cannot take new special tokens {tokens!r}")

    @abstractmethod
    def _manifest_extra(self, directory: Path) -> dict:
        """Write the kind's own files into `directory`; return manifest fields to add."""

    def save(self, directory) -> Path:
        """Write this tokenizer's files into `directory` (created if needed) so that
        `load_tokenizer(directory)` gives identical ids. Returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": 1,
            "kind": self.kind,
            "name": self.name,
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
            "pad_id": self.pad_id,
        }
        manifest.update(self._manifest_extra(directory))
        write_json_atomic(directory / MANIFEST, manifest)
        return directory

    @abstractmethod
    def to_hf_tokenizer(self):
        """This tokenizer as a `tokenizers.Tokenizer` (used by `export_hf`)."""

    def export_hf(self, directory) -> Path:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `directory`
        so that `transformers.AutoTokenizer.from_pretrained(directory)` encodes ordinary text to the
        same ids. Raises SlmError where the tokenizer cannot be expressed that way."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        hf = self.to_hf_tokenizer()
        write_text_atomic(directory / "tokenizer.json", hf.to_str())
        eot = hf.id_to_token(self.eot_id)
        specials = {"eos_token": eot, "bos_token": eot}
        if self.pad_id is not None:
            specials["pad_token"] = hf.id_to_token(self.pad_id)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 1_000_000_000,
            "clean_up_tokenization_spaces": False,
            "add_bos_token": False,
            "add_eos_token": False,
            **specials,
        }
        if self.has_chat_tokens():
            config["chat_template"] = CHAT_TEMPLATE
        write_json_atomic(directory / "tokenizer_config.json", config)
        write_json_atomic(directory / "special_tokens_map.json", specials)
        return directory

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"
