"""Reading a prepared dataset for training and evaluation, straight from the memory-mapped token files.

    ds = open_dataset("data/shakespeare")
    x, y = ds.random_batch("train", batch_size=8, seq_len=256, seed=1, step=step, rank=rank, world_size=world)
    for x, y in ds.eval_batches("val", batch_size=8, seq_len=256): ...
    ds.bits_per_byte(mean_loss_nats, "val")

Random windows depend only on (seed, step, rank), so a resumed run sees the same batches and each DDP
rank its own stream. Only the windows asked for are read from disk.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from slmkit.errors import SlmError

SPLITS = ("train", "val")


class Dataset:
    """A dataset directory written by `slmkit.data.prepare`."""

    def __init__(self, directory: Path, meta: dict):
        self.dir = directory
        self.meta = meta
        self.vocab_size: int = meta["vocab_size"]
        self.dtype = np.dtype(meta["dtype"])
        self.eot_id: int = meta["tokenizer"]["eot_id"]
        self.reused = False
        self._tokenizer = None
        self._arrays: dict[str, np.memmap] = {}

    @property
    def tokenizer(self):
        """The dataset's tokenizer, loaded on first use."""
        if self._tokenizer is None:
            from slmkit.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.dir)
        return self._tokenizer

    def split(self, name: str) -> np.memmap:
        """Token ids of split `name` ("train" or "val") as a read-only memory map."""
        if name not in SPLITS:
            raise SlmError(f"unknown split {name!r}; use train or val")
        if name not in self._arrays:
            path = self.dir / f"{name}.bin"
            expected = self.meta["splits"][name]["tokens"] * self.dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                size = path.stat().st_size if path.is_file() else "missing"
                raise SlmError(
                    f"{path} is {size} bytes but meta.json says {expected}: the dataset is damaged; "
                    "run slm prepare again"
                )
            self._arrays[name] = np.memmap(path, dtype=self.dtype, mode="r") if expected else np.empty(0, self.dtype)
        return self._arrays[name]

    @property
    def train(self) -> np.memmap:
        return self.split("train")

    @property
    def val(self) -> np.memmap:
        return self.split("val")

    def bytes_per_token(self, split: str = "val") -> float:
        """UTF-8 bytes of text per token of `split` (all tokens, end-of-text separators included)."""
        info = self.meta["splits"][split]
        return info["bytes"] / info["tokens"]

    def bits_per_byte(self, loss_nats: float, split: str = "val") -> float:
        """Bits per byte of text from a mean per-token loss in nats on `split`:
        loss / ln 2 * tokens / bytes (tokenizer-independent, so models with different tokenizers compare)."""
        return loss_nats / math.log(2) / self.bytes_per_token(split)

    def _check_length(self, name: str, seq_len: int) -> np.memmap:
        data = self.split(name)
        if len(data) < seq_len + 1:
            raise SlmError(
                f"the {name} split has {len(data)} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
                "use a shorter --seq-len or more data"
            )
        return data

    def random_batch(self, split: str, batch_size: int, seq_len: int, seed: int, step: int,
                     rank: int = 0, world_size: int = 1):
        """(x, y): int64 torch tensors (batch_size, seq_len) of random windows of `split`, y shifted by
        one token; a function of (seed, step, rank) only. `world_size` only checks `rank`."""
        import torch

        if not 0 <= rank < world_size:
            raise SlmError(f"rank {rank} is outside world size {world_size}")
        data = self._check_length(split, seq_len)
        rng = np.random.default_rng([int(seed), int(step), int(rank), 0x5E9])
        starts = rng.integers(0, len(data) - seq_len, size=batch_size)
        windows = np.stack([np.asarray(data[s : s + seq_len + 1]) for s in starts]).astype(np.int64)
        windows = torch.from_numpy(windows)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def eval_windows(self, split: str, seq_len: int) -> int:
        """Number of non-overlapping evaluation windows of `seq_len` (+1 target) in `split`."""
        return (len(self.split(split)) - 1) // seq_len

    def eval_batches(self, split: str, batch_size: int, seq_len: int, max_batches: int | None = None,
                     rank: int = 0, world_size: int = 1) -> Iterator:
        """Sequential non-overlapping windows of `split` from its start, as (x, y) int64 tensors of up to
        batch_size rows (the last batch may be smaller); with `world_size` > 1, rank r takes every
        world_size-th batch. Stops after `max_batches` batches of this rank."""
        import torch

        data = self._check_length(split, seq_len)
        n_windows = self.eval_windows(split, seq_len)
        produced = 0
        for index, first in enumerate(range(0, n_windows, batch_size)):
            if index % world_size != rank:
                continue
            if max_batches is not None and produced >= max_batches:
                return
            count = min(batch_size, n_windows - first)
            start, stop = first * seq_len, (first + count) * seq_len + 1
            block = np.asarray(data[start:stop]).astype(np.int64)
            x = np.lib.stride_tricks.as_strided(block, (count, seq_len), (seq_len * 8, 8))
            y = np.lib.stride_tricks.as_strided(block[1:], (count, seq_len), (seq_len * 8, 8))
            produced += 1
            yield torch.from_numpy(x.copy()), torch.from_numpy(y.copy())

    def __repr__(self) -> str:
        s = self.meta["splits"]
        return (f"Dataset({str(self.dir)!r}, tokenizer={self.meta['tokenizer']['name']!r}, "
                f"train={s['train']['tokens']:,} tokens, val={s['val']['tokens']:,} tokens)")


def open_dataset(directory) -> Dataset:
    """Open a dataset directory; raises SlmError when it is missing or not an slmkit dataset."""
    directory = Path(directory).expanduser()
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise SlmError(f"{directory} is not a dataset (no meta.json); create one with slm prepare")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise SlmError(f"{meta_path} is not valid JSON ({error}); run slm prepare again") from None
    if meta.get("format") != "slmkit-dataset":
        raise SlmError(f"{meta_path} is not an slmkit dataset (format {meta.get('format')!r})")
    if meta.get("version", 0) > 1:
        raise SlmError(f"{directory} was written by a newer slmkit (dataset version {meta['version']}); upgrade slmkit")
    return Dataset(directory, meta)
