"""Reading a prepared dataset for training and evaluation, straight from the memory-mapped token files.

    ds = open_dataset("data/shakespeare", seq_len=256)   # every check up front, SlmError saying the fix
    x, y = ds.random_batch("train", batch_size=8, seq_len=256, seed=1, step=step)
    for x, y in ds.eval_batches("val", batch_size=8, seq_len=256): ...
    ds.bits_per_byte(mean_loss_nats, "val")               # = bits_per_byte(loss, ds.bytes_per_token("val"))

Random windows depend only on (seed, step), so a resumed run sees the same batches (a distributed
trainer gives each process its own steps). Only the windows asked for are read from disk.

Token ids outside the vocabulary (token files that do not belong to their meta.json, or damaged ones)
are refused with SlmError before the model sees them: on opening, from the largest id meta.json records
(prepare writes it), and by one pass over the token files themselves when meta.json has no record or
they are small enough (SCAN_BYTES) that the pass costs under a second; and in every batch, by its max.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from slmkit.data.report import format_summary
from slmkit.errors import SlmError
from slmkit.tokenizer import load_tokenizer

FORMAT = "slmkit-dataset"
VERSION = 1
SPLITS = ("train", "val")
DTYPES = ("uint16", "uint32")
REQUIRED_KEYS = ("vocab_size", "dtype", "splits", "tokenizer")
SCAN_BYTES = 1 << 30  # token files up to this size in all are checked in full on opening (one numpy pass)
SCAN_TOKENS = 1 << 24  # tokens read at a time by that pass


def bits_per_byte(loss_nats: float | None, bytes_per_token: float | None) -> float | None:
    """Bits per byte of text from a mean per-token loss in nats: loss / ln 2 / (UTF-8 bytes per token).

    Tokenizer-independent, so models with different tokenizers compare. None when either is None (or
    bytes_per_token is 0: a dataset whose meta.json lacks the byte counts)."""
    if loss_nats is None or not bytes_per_token:
        return None
    return loss_nats / math.log(2) / bytes_per_token


class TokenFile:
    """A token file read by slices, each read into a new array: what one pass over a large split uses
    instead of a memory map, whose pages would stay resident (and count in the process's memory) until
    the map is closed. Supports len() and slices with step 1."""

    def __init__(self, path: str | Path, dtype):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.length = self.path.stat().st_size // self.dtype.itemsize

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a TokenFile is read by slices with step 1")
        start, stop, _ = key.indices(self.length)
        with open(self.path, "rb") as f:
            f.seek(start * self.dtype.itemsize)
            return np.fromfile(f, dtype=self.dtype, count=max(stop - start, 0))


class Dataset:
    """A dataset directory written by `slmkit.data.prepare`; made by `open_dataset`, which checks it."""

    def __init__(self, directory: Path, meta: dict):
        self.dir = directory
        self.meta = meta
        self.vocab_size: int = meta["vocab_size"]
        self.dtype = np.dtype(meta["dtype"])
        self.eot_id: int = meta["tokenizer"]["eot_id"]
        self.reused = False  # set by prepare: True when an identical earlier result was kept
        self._tokenizer = None
        self._arrays: dict[str, np.memmap] = {}

    @property
    def tokenizer(self):
        """The dataset's tokenizer, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.dir)
        return self._tokenizer

    def split(self, name: str) -> np.memmap:
        """Token ids of split `name` ("train" or "val") as a read-only memory map."""
        if name not in SPLITS:
            raise SlmError(f"unknown split {name!r}; use train or val")
        if name not in self._arrays:
            empty = not self.meta["splits"][name]["tokens"]  # numpy cannot map an empty file
            self._arrays[name] = np.empty(0, self.dtype) if empty else \
                np.memmap(self.dir / f"{name}.bin", dtype=self.dtype, mode="r")
        return self._arrays[name]

    @property
    def train(self) -> np.memmap:
        return self.split("train")

    @property
    def val(self) -> np.memmap:
        return self.split("val")

    def bytes_per_token(self, split: str = "val") -> float | None:
        """UTF-8 bytes of text per token of `split` (all tokens, end-of-text separators included), or
        None when meta.json lacks the counts."""
        info = self.meta["splits"].get(split, {})
        tokens, n_bytes = info.get("tokens"), info.get("bytes")
        return n_bytes / tokens if tokens and n_bytes else None

    def bits_per_byte(self, loss_nats: float, split: str = "val") -> float | None:
        """Bits per byte of text from a mean per-token loss in nats on `split` (see `bits_per_byte`)."""
        return bits_per_byte(loss_nats, self.bytes_per_token(split))

    def check_window(self, split: str, seq_len: int) -> None:
        """SlmError when `split` is shorter than one window of seq_len + 1 tokens (inputs and targets)."""
        tokens = self.meta["splits"][split]["tokens"]
        if tokens < seq_len + 1:
            raise SlmError(
                f"the {split} split has {tokens} tokens, fewer than one window of seq_len + 1 = {seq_len + 1} "
                f"(dataset {self.dir}); use a shorter seq_len or prepare more data"
            )

    def max_token_id(self, split: str) -> int:
        """The largest token id in `split`, by one pass over its file in pieces read one at a time, so
        memory stays flat (-1 when it is empty)."""
        if not self.meta["splits"][split]["tokens"]:
            return -1
        data = TokenFile(self.dir / f"{split}.bin", self.dtype)
        return max((int(data[i : i + SCAN_TOKENS].max()) for i in range(0, len(data), SCAN_TOKENS)), default=-1)

    def check_token_ids(self, scan: bool | None = None) -> None:
        """SlmError when a token id is outside the vocabulary (0 .. vocab_size - 1): first the largest id
        meta.json records, then (`scan` True, or None and the files hold at most SCAN_BYTES, or meta.json
        records none) the token files themselves."""
        recorded = self.meta.get("max_token_id")
        if recorded is not None and recorded >= self.vocab_size:
            self._refuse_id(int(recorded), "its meta.json records")
        total = sum(self.meta["splits"][name]["tokens"] for name in SPLITS) * self.dtype.itemsize
        if scan is None:
            scan = recorded is None or total <= SCAN_BYTES
        if scan:
            for name in SPLITS:
                found = self.max_token_id(name)
                if found >= self.vocab_size:
                    self._refuse_id(found, f"{name}.bin holds")

    def _refuse_id(self, token_id: int, where: str) -> None:
        raise SlmError(
            f"dataset {self.dir}: {where} token id {token_id}, outside its vocabulary of {self.vocab_size} ids "
            f"(0..{self.vocab_size - 1}); its token files do not belong to its meta.json and tokenizer (damaged, "
            "or copied from another dataset): rebuild it with `slm prepare --force`"
        )

    def _check_batch(self, block: np.ndarray, split: str, starts) -> None:
        """The cheap check of every batch: its largest id (one pass over a few thousand numbers). `block`:
        the batch's token ids, one row per window (or one row); `starts`: the first token of each row."""
        if block.size and int(block.max()) >= self.vocab_size:
            rows = block.reshape(len(starts), -1)
            row = int(np.argmax(rows.max(axis=1)))
            self._refuse_id(int(rows[row].max()), f"the {split} split near token {int(starts[row]):,} holds")

    def random_batch(self, split: str, batch_size: int, seq_len: int, seed: int, step: int):
        """(x, y): int64 torch tensors (batch_size, seq_len) of random windows of `split`, y shifted by
        one token; a function of (seed, step) only."""
        import torch  # heavy; prepare and `slm data info` read datasets without it

        self.check_window(split, seq_len)
        data = self.split(split)
        # The 0 held a process rank once; it stays so that the windows of a seed and step never change.
        rng = np.random.default_rng([int(seed), int(step), 0, 0x5E9])
        starts = rng.integers(0, len(data) - seq_len, size=batch_size)
        windows = np.stack([np.asarray(data[s : s + seq_len + 1]) for s in starts]).astype(np.int64)
        self._check_batch(windows, split, starts)
        windows = torch.from_numpy(windows)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def eval_windows(self, split: str, seq_len: int) -> int:
        """Number of non-overlapping evaluation windows of `seq_len` (+1 target) in `split`."""
        return (len(self.split(split)) - 1) // seq_len

    def eval_batches(self, split: str, batch_size: int, seq_len: int, max_batches: int | None = None, *,
                     first_window: int = 0) -> Iterator:
        """Sequential non-overlapping windows of `split` from window `first_window` (0: its start), as (x, y)
        int64 tensors of up to batch_size rows (the last batch may be smaller); at most `max_batches`
        batches. Only the windows asked for are read."""
        import torch  # heavy; see random_batch

        self.check_window(split, seq_len)
        data = self.split(split)
        n_windows = self.eval_windows(split, seq_len)
        for index, first in enumerate(range(first_window, n_windows, batch_size)):
            if max_batches is not None and index >= max_batches:
                return
            count = min(batch_size, n_windows - first)
            start, stop = first * seq_len, (first + count) * seq_len + 1
            block = np.asarray(data[start:stop]).astype(np.int64)
            self._check_batch(block, split, [start])
            x = np.lib.stride_tricks.as_strided(block, (count, seq_len), (seq_len * 8, 8))
            y = np.lib.stride_tricks.as_strided(block[1:], (count, seq_len), (seq_len * 8, 8))
            yield torch.from_numpy(x.copy()), torch.from_numpy(y.copy())

    def summary(self, path=None) -> str:
        """The human-readable summary of meta.json that `slm prepare` and `slm data info` print, headed
        by `path` (default: the directory)."""
        return format_summary(self.meta, self.dir if path is None else path, reused=self.reused)

    def __repr__(self) -> str:
        s = self.meta["splits"]
        return (f"Dataset({str(self.dir)!r}, tokenizer={self.meta['tokenizer']['name']!r}, "
                f"train={s['train']['tokens']:,} tokens, val={s['val']['tokens']:,} tokens)")


def read_meta(directory: str | Path) -> dict:
    """The parsed meta.json of a complete dataset directory: format, version, keys and dtype checked,
    and train.bin / val.bin present with the sizes meta.json gives. SlmError saying what is wrong and
    the fix otherwise."""
    directory = Path(directory).expanduser()
    meta_path = directory / "meta.json"
    if not directory.is_dir():
        raise SlmError(f"dataset directory not found: {directory}; create one with `slm prepare`")
    if not meta_path.is_file():
        raise SlmError(f"{directory} is not a dataset (no meta.json); create one with `slm prepare`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as error:  # invalid JSON or invalid UTF-8
        raise SlmError(f"{meta_path} is not valid JSON ({error}); rebuild the dataset with `slm prepare`") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise SlmError(f"{meta_path} is not an slmkit dataset (format {found!r})")
    if meta.get("version", 0) > VERSION:
        raise SlmError(f"{directory} was written by a newer slmkit (dataset version {meta['version']}); upgrade slmkit")
    for key in REQUIRED_KEYS + tuple(f"splits.{split}.tokens" for split in SPLITS):
        value = meta
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            raise SlmError(f"{meta_path} has no {key!r}; it is not a dataset meta file (rebuild with `slm prepare`)")
    if meta["dtype"] not in DTYPES:
        raise SlmError(f"{meta_path}: dtype {meta['dtype']!r} must be uint16 or uint32")
    missing = [f"{split}.bin" for split in SPLITS if not (directory / f"{split}.bin").is_file()]
    if missing:
        raise SlmError(f"dataset {directory} is incomplete: missing {', '.join(missing)}; "
                       "run `slm prepare` again to rebuild it")
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        path = directory / f"{split}.bin"
        size, tokens = path.stat().st_size, meta["splits"][split]["tokens"]
        if size != tokens * itemsize:
            raise SlmError(f"{path} holds {size} bytes, but meta.json says {tokens} {meta['dtype']} tokens; "
                           "the dataset is damaged or truncated, rebuild it with `slm prepare`")
    return meta


def open_dataset(directory: str | Path, seq_len: int | None = None, *, scan_ids: bool | None = None) -> Dataset:
    """Open the dataset directory `directory` after checking it (see `read_meta`) and its token ids
    (`Dataset.check_token_ids`: the recorded largest id, and one pass over the token files when they hold
    at most SCAN_BYTES or meta.json records no largest id; `scan_ids` True or False forces the pass or
    skips it); with `seq_len`, also check that each split holds at least one window of seq_len + 1
    tokens. Raises SlmError naming what is wrong and the fix."""
    directory = Path(directory).expanduser()
    dataset = Dataset(directory, read_meta(directory))
    dataset.check_token_ids(scan_ids)
    if seq_len is not None:
        for split in SPLITS:
            dataset.check_window(split, seq_len)
    return dataset
