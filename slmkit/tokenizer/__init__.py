"""Tokenizers: GPT-2 BPE (tiktoken), byte-level BPE trained on your corpus, character-level, and any
local Hugging Face tokenizer.json; all saved and loaded the same way.

    tok = load_tokenizer("gpt2")                       # or "path/to/dir", a dataset dir, a tokenizer.json
    tok = train_tokenizer(texts, "bpe:8192")           # or "char"
    tok.save("out/"); load_tokenizer("out/")           # identical ids
    tok.export_hf("hf/")                               # AutoTokenizer.from_pretrained("hf/") agrees
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.tokenizer.base import (
    CHAT_TEMPLATE,
    CHAT_TOKENS,
    EOT_TOKEN,
    MANIFEST,
    MANIFEST_FORMAT,
    PAD_TOKEN,
    Tokenizer,
)
from slmkit.tokenizer.bpe import BPETokenizer, load_gpt2, load_hf_file, train_bpe
from slmkit.tokenizer.char import CharTokenizer, train_char
from slmkit.tokenizer.health import tokenizer_health

__all__ = [
    "CHAT_TEMPLATE",
    "CHAT_TOKENS",
    "EOT_TOKEN",
    "MANIFEST",
    "PAD_TOKEN",
    "BPETokenizer",
    "CharTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "needs_training",
    "parse_spec",
    "tokenizer_health",
    "train_tokenizer",
]


def parse_spec(spec: str) -> tuple[str, int | None]:
    """Split a tokenizer spec that needs training: "bpe:8192" -> ("bpe", 8192), "char" -> ("char", None)."""
    if spec == "char":
        return "char", None
    if spec.startswith("bpe:"):
        try:
            size = int(spec[4:].replace("_", "").lower().replace("k", "000"))
        except ValueError:
            raise SlmError(f"bad BPE spec {spec!r}: write bpe:VOCAB_SIZE, e.g. bpe:8192") from None
        return "bpe", size
    raise SlmError(f"{spec!r} is not a tokenizer spec that can be trained; use bpe:VOCAB_SIZE or char")


def needs_training(spec) -> bool:
    """True for specs that are trained on a corpus ("bpe:N", "char") rather than loaded."""
    return isinstance(spec, str) and (spec == "char" or spec.startswith("bpe:")) and not Path(spec).exists()


def load_tokenizer(spec_or_dir) -> Tokenizer:
    """Load a tokenizer: "gpt2", a directory saved by `Tokenizer.save` (a dataset directory is one), a
    directory holding a Hugging Face tokenizer.json, or the tokenizer.json file itself.

    Raises SlmError for specs that need training ("bpe:N", "char": use `train_tokenizer` or
    `slm prepare --tokenizer`) and for paths that hold no tokenizer.
    """
    if isinstance(spec_or_dir, Tokenizer):
        return spec_or_dir
    spec = str(spec_or_dir)
    if spec == "gpt2":
        return load_gpt2()
    path = Path(spec).expanduser()
    if path.is_dir():
        manifest_path = path / MANIFEST
        if manifest_path.is_file():
            return _load_manifest(path, manifest_path)
        if (path / "tokenizer.json").is_file():
            return load_hf_file(path / "tokenizer.json", name=spec)
        raise SlmError(f"no tokenizer in {path}: expected {MANIFEST} (saved by slmkit) or tokenizer.json")
    if path.is_file():
        if path.name.endswith(".json"):
            return load_hf_file(path, name=spec)
        raise SlmError(f"{path} is not a tokenizer.json file")
    if needs_training(spec):
        raise SlmError(
            f"tokenizer {spec!r} must be trained first: `slm tokenizer train SOURCE --tokenizer {spec}` "
            f"or `slm prepare SOURCE --tokenizer {spec}` (Python: slmkit.tokenizer.train_tokenizer)"
        )
    raise SlmError(
        f"unknown tokenizer {spec!r}: use gpt2, char, bpe:VOCAB_SIZE, or a path to a tokenizer directory "
        "or tokenizer.json (no such path exists)"
    )


def _load_manifest(directory: Path, manifest_path: Path) -> Tokenizer:
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != MANIFEST_FORMAT:
        raise SlmError(f"{manifest_path} is not an slmkit tokenizer manifest")
    kind = manifest.get("kind")
    if kind == "gpt2":
        added = manifest.get("added_special_tokens")
        return load_gpt2().with_special_tokens(added, manifest["name"]) if added else load_gpt2()
    if kind == "char":
        return CharTokenizer(manifest["chars"], name=manifest.get("name", "char"),
                             unknown=manifest.get("unk_id") is not None, specials=manifest.get("specials", ()))
    if kind in ("bpe", "hf"):
        file = directory / "tokenizer.json"
        if not file.is_file():
            raise SlmError(f"{directory} lacks tokenizer.json, which its {MANIFEST} names; re-create the tokenizer")
        return load_hf_file(file, manifest=manifest)
    raise SlmError(f"{manifest_path}: unknown tokenizer kind {kind!r}")


def train_tokenizer(
    texts: Iterable[str],
    spec: str = "bpe:8192",
    *,
    chat_tokens: bool = False,
    min_frequency: int = 2,
    check_texts: list[str] | None = None,
    progress: bool = False,
) -> Tokenizer:
    """Train a tokenizer on `texts` (an iterable of documents).

    spec "bpe:N": byte-level BPE with N ids in all (Hugging Face tokenizers; encoded by tiktoken when
    that gives identical ids on `check_texts` and fixed probes); "char": one id per character seen.
    Special tokens: `<|endoftext|>` (and for BPE `<|pad|>`, plus `<|im_start|>`/`<|im_end|>` with
    `chat_tokens`). Raises SlmError for a bad spec or an empty corpus.
    """
    kind, vocab_size = parse_spec(spec)
    if kind == "char":
        return train_char(texts)
    return train_bpe(
        texts, vocab_size, chat_tokens=chat_tokens, min_frequency=min_frequency,
        check_texts=check_texts, progress=progress,
    )
