"""Character-level tokenizer (as in nanoGPT's shakespeare_char): one id per character seen in training.

Ids 0..n-1 are the sorted characters, id n is `<|endoftext|>`. Encoding is a numpy table lookup over
code points, so it is fast; a character that was not in the training text is an error, not a guess,
unless the tokenizer was made with `unknown=True`: then id n + 1 is `<|unk|>` and stands for any such
character (what `prepare` uses, since validation text may hold characters training text lacks). Special
tokens added later (`specials`, e.g. the chat tokens) follow; text never encodes to them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from slmkit.errors import SlmError
from slmkit.tokenizer.base import EOT_TOKEN, Tokenizer

UNK_TOKEN = "<|unk|>"


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: Iterable[str], name: str = "char", unknown: bool = False,
                 specials: Iterable[str] = ()):
        self.chars = sorted(set(chars))
        if any(len(c) != 1 for c in self.chars):
            raise SlmError("a character tokenizer's vocabulary must hold single characters")
        self.name = name
        self.eot_id = len(self.chars)
        self.pad_id = None
        self.unk_id = len(self.chars) + 1 if unknown else None
        self.specials = list(specials)
        self.vocab_size = len(self.chars) + (2 if unknown else 1) + len(self.specials)
        self._special_ids = {EOT_TOKEN: self.eot_id, **({UNK_TOKEN: self.unk_id} if unknown else {})}
        first_added = len(self.chars) + (2 if unknown else 1)
        self._special_ids.update({token: first_added + i for i, token in enumerate(self.specials)})
        self._special_tokens = {i: token for token, i in self._special_ids.items()}
        top = max((ord(c) for c in self.chars), default=0)
        self._table = np.full(top + 1, -1, dtype=np.int64)
        for index, char in enumerate(self.chars):
            self._table[ord(char)] = index

    def encode_to_array(self, text: str, dtype=np.uint32) -> np.ndarray:
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        inside = points < len(self._table)
        ids = np.full(len(points), -1, dtype=np.int64)
        ids[inside] = self._table[points[inside]]
        if self.unk_id is not None:
            ids[ids < 0] = self.unk_id
        elif (ids < 0).any():
            unknown = sorted({chr(p) for p in points[ids < 0][:1000]})
            raise SlmError(
                f"characters not in the {self.vocab_size}-id character vocabulary: {unknown[:10]!r}; "
                "train the character tokenizer on text that contains them"
            )
        return ids.astype(dtype)

    def encode(self, text: str) -> list[int]:
        return self.encode_to_array(text, np.int64).tolist()

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i < len(self.chars):
                out.append(self.chars[i])
            elif not skip_special_tokens and i in self._special_tokens:
                out.append(self._special_tokens[i])
        return "".join(out)

    def token_byte_lengths(self) -> np.ndarray:
        specials = [0] * (self.vocab_size - len(self.chars))
        return np.array([len(c.encode("utf-8")) for c in self.chars] + specials, dtype=np.int64)

    def special_token_id(self, token: str) -> int | None:
        return self._special_ids.get(token)

    def with_special_tokens(self, tokens: list[str], name: str | None = None) -> CharTokenizer:
        missing = [token for token in dict.fromkeys(tokens) if token not in self._special_ids]
        return CharTokenizer(self.chars, name or self.name, unknown=self.unk_id is not None,
                             specials=[*self.specials, *missing])

    def _manifest_extra(self, directory: Path) -> dict:
        return {"chars": "".join(self.chars), **({"unk_id": self.unk_id} if self.unk_id is not None else {}),
                **({"specials": self.specials} if self.specials else {})}

    def to_hf_tokenizer(self):
        """A WordLevel tokenizer over single characters. Characters outside the vocabulary map to
        `<|unk|>` when this tokenizer has it, else to end-of-text (`tokenizers` needs an unknown token;
        slmkit itself refuses them then)."""
        vocab = {c: i for i, c in enumerate(self.chars)}
        vocab.update(self._special_ids)
        specials = list(self._special_ids)
        unknown = UNK_TOKEN if self.unk_id is not None else EOT_TOKEN
        hf = HFTokenizer(models.WordLevel(vocab=vocab, unk_token=unknown))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        hf.decoder = decoders.Fuse()
        hf.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
        return hf


def train_char(texts: Iterable[str]) -> CharTokenizer:
    """A character tokenizer over every character in `texts`."""
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    if not chars:
        raise SlmError("cannot train a character tokenizer on empty text")
    return CharTokenizer(chars)
