"""Shared fixtures: synthetic corpora (varied pseudo-words, so unrelated documents are not near-duplicates)
and the real texts in ../shared/data when present."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_text(seed: int, words: int = 600) -> str:
    """Deterministic English-looking text of pseudo-words, different for every seed."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ren", "tha", "vor", "sel", "dun", "pri", "gal", "ost", "wen", "ber", "ful",
                 "nim", "zer", "ash", "cor", "lei", "mun"]
    common = ["the", "and", "of", "to", "a", "in", "that", "is", "was", "he", "for", "it", "with", "as", "his"]
    out = []
    for i in range(words):
        if rng.random() < 0.4:
            out.append(rng.choice(common))
        else:
            out.append("".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))))
        if i % 12 == 11:
            out[-1] += ".\n" if rng.random() < 0.3 else "."
    return " ".join(out)


@pytest.fixture
def corpus_dir(tmp_path):
    """A folder of 20 distinct documents (3-4 KB each)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(20):
        (folder / f"doc{i:02d}.txt").write_text(make_text(i), encoding="utf-8")
    return folder


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / "shakespeare").is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def threads_restored(monkeypatch):
    """Restore torch's thread count afterwards; start each test without OMP_NUM_THREADS/MKL_NUM_THREADS."""
    import torch

    previous = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(previous)
