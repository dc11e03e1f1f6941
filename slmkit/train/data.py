"""The trainer's view of a dataset directory: checked up front, then read through slmkit.data.

`open_training_data(dir)` refuses a missing, incomplete or too short dataset with a message that
says what is wrong, then returns `slmkit.data.loader.open_dataset(dir)`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slmkit.errors import SlmError

REQUIRED_FILES = ("train.bin", "val.bin", "meta.json")
DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def check_dataset_dir(directory: str | Path) -> dict:
    """The parsed meta.json of a complete dataset directory; SlmError saying what is missing otherwise."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SlmError(f"dataset directory not found: {directory}; create one with `slm prepare`")
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise SlmError(f"dataset {directory} is incomplete: missing {', '.join(missing)}; "
                       f"run `slm prepare` again to rebuild it")
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SlmError(f"{directory / 'meta.json'} is not valid JSON ({error}); rebuild the dataset") from None
    for key in ("vocab_size", "dtype", "splits"):
        if key not in meta:
            raise SlmError(f"{directory / 'meta.json'} has no {key!r}; it is not a dataset meta file "
                           f"(rebuild with `slm prepare`)")
    if meta["dtype"] not in DTYPES:
        raise SlmError(f"{directory / 'meta.json'}: dtype {meta['dtype']!r} must be uint16 or uint32")
    itemsize = np.dtype(DTYPES[meta["dtype"]]).itemsize
    for split in ("train", "val"):
        size = (directory / f"{split}.bin").stat().st_size
        expected = meta["splits"].get(split, {}).get("tokens")
        if size % itemsize or (expected is not None and size // itemsize != expected):
            raise SlmError(f"{directory / (split + '.bin')} holds {size} bytes, but meta.json says "
                           f"{expected} {meta['dtype']} tokens; the dataset is truncated, rebuild it")
    return meta


def open_training_data(directory: str | Path, seq_len: int):
    """The dataset at `directory`, checked complete and long enough for `seq_len`-token windows."""
    meta = check_dataset_dir(directory)
    for split in ("train", "val"):
        tokens = meta["splits"].get(split, {}).get("tokens", 0)
        if tokens < seq_len + 1:
            raise SlmError(f"the {split} split of {directory} has {tokens} tokens, fewer than one window of "
                           f"{seq_len + 1}; lower --set train.seq_len or prepare more data")
    from slmkit.data.loader import open_dataset

    return open_dataset(directory)


def split_bytes_per_token(meta: dict, split: str) -> float | None:
    """UTF-8 bytes per token of a split (for bits per byte), or None when meta lacks the counts."""
    info = meta.get("splits", {}).get(split, {})
    tokens, n_bytes = info.get("tokens"), info.get("bytes")
    if not tokens or not n_bytes:
        return None
    return n_bytes / tokens
