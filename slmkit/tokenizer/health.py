"""Tokenizer health on a dataset: bytes per token, the share of single-byte tokens, and whether common
words come out as strings of characters (the "O n ce u p on" failure of a badly trained BPE)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from slmkit.errors import SlmError

_WORD = re.compile(r"[^\W\d_]{4,}")
# Common words split into pieces shorter than this many characters on average count as fragmented.
FRAGMENT_CHARS_PER_TOKEN = 2.0
FRAGMENTED_WARN_SHARE = 0.2
TOP_WORDS = 100
SINGLE_BYTE_WARN_SHARE = 0.5


def word_fragmentation(tokenizer, sample_text: str, top_words: int = TOP_WORDS) -> dict:
    """How the `top_words` most frequent words (4+ letters) of `sample_text` are split, each with a
    leading space as in running text. Returns the share fragmented and a few examples."""
    counts = Counter(_WORD.findall(sample_text))
    words = [w for w, _ in counts.most_common(top_words)]
    fragmented = []
    total_tokens = 0
    for word in words:
        try:
            ids = tokenizer.encode(" " + word)
        except SlmError:  # e.g. a character vocabulary without a space
            continue
        total_tokens += len(ids)
        if len(word) / len(ids) < FRAGMENT_CHARS_PER_TOKEN:
            pieces = [tokenizer.decode([i]) for i in ids]
            fragmented.append(" ".join(p.strip() or p for p in pieces))
    return {
        "words_checked": len(words),
        "tokens_per_word": round(total_tokens / len(words), 3) if words else None,
        "fragmented_share": round(len(fragmented) / len(words), 4) if words else 0.0,
        "fragmented_examples": fragmented[:5],
    }


def single_byte_share(tokens: np.ndarray, byte_lengths: np.ndarray, chunk: int = 1 << 22) -> float:
    """Share of tokens (special tokens excluded) that stand for exactly one byte; reads `tokens` in chunks."""
    counts = np.zeros(len(byte_lengths), dtype=np.int64)
    for start in range(0, len(tokens), chunk):
        counts += np.bincount(np.asarray(tokens[start : start + chunk]), minlength=len(byte_lengths))
    ordinary = counts[byte_lengths > 0].sum()
    return float(counts[byte_lengths == 1].sum() / ordinary) if ordinary else 0.0


def tokenizer_health(tokenizer, splits: dict, sample_text: str = "") -> dict:
    """Health report of `tokenizer` on a dataset.

    `splits` maps a split name to {"tokens": array of ids, "bytes": UTF-8 bytes of its text,
    "documents": number of end-of-text separators}. Returns per split bytes_per_token (text bytes per
    non-separator token) and single_byte_token_share, the word fragmentation of `sample_text`, and a
    list of warnings.
    """
    byte_lengths = tokenizer.token_byte_lengths()
    report: dict = {"tokenizer": tokenizer.name, "splits": {}, "warnings": []}
    for name, split in splits.items():
        tokens = split["tokens"]
        text_tokens = len(tokens) - split.get("documents", 0)
        report["splits"][name] = {
            "bytes_per_token": round(split["bytes"] / text_tokens, 4) if text_tokens > 0 else None,
            "single_byte_token_share": round(single_byte_share(tokens, byte_lengths), 4),
        }
    if sample_text:
        report["words"] = word_fragmentation(tokenizer, sample_text)
        share = report["words"]["fragmented_share"]
        if tokenizer.kind != "char" and share > FRAGMENTED_WARN_SHARE:
            examples = "; ".join(report["words"]["fragmented_examples"][:3])
            report["warnings"].append(
                f"tokenizer {tokenizer.name} splits {share:.0%} of the {report['words']['words_checked']} most "
                f"common words into near-single characters (e.g. {examples}); train it on more text "
                "or on text like this corpus"
            )
    first = next(iter(report["splits"].values()), None)
    if tokenizer.kind != "char" and first and first["single_byte_token_share"] > SINGLE_BYTE_WARN_SHARE:
        report["warnings"].append(
            f"{first['single_byte_token_share']:.0%} of {next(iter(report['splits']))} tokens are single bytes "
            f"(warn above {SINGLE_BYTE_WARN_SHARE:.0%}): tokenizer {tokenizer.name} fits this text poorly; a BPE "
            "trained on it (--tokenizer bpe:N) would give fewer, longer tokens"
        )
    return report
