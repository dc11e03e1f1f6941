"""Supervised fine-tuning data: conversations (JSONL) in, a directory of rendered examples out, and the
reader the trainer uses in place of a pretraining dataset.

    rows = read_rows("instructions.jsonl")        # every line checked; SlmError names the line
    prepare_sft_data("instructions.jsonl", tokenizer, "data/sft", seq_len=256)
    data = open_sft_data("data/sft", seq_len=256)
    x, y, segments = data.random_batch("train", batch_size=8, seq_len=256, seed=1, step=step)

A row is {"prompt": str, "response": str} (optionally "system": str) or {"messages": [{"role", "content"},
...]}. The rows, not tokens, are split into train and val. Each conversation is rendered with the chat
template (`slmkit.finetune.chat.render_chat`) into one example: its ids and a loss mask that is True on
the assistant's tokens only.

The directory holds per split `{split}.bin` (every example's ids, one after another; uint16 when the
vocabulary fits, else uint32), `{split}.mask.bin` (uint8 loss mask, one per id), `{split}.offsets.npy`
(int64 start of each example, and the end), the tokenizer files and meta.json.

Batches hold whole examples. With packing, each row of seq_len + 1 tokens is filled with examples one
after another and the rest padded; `segments[b, t]` numbers the example input token t belongs to within
its row (0, 1, ...), the padding taking the next number, so attention can be kept within each example.
A target is the next token only where that token belongs to the same example and is a response token;
everywhere else it is IGNORE_INDEX (-1). Without packing each row holds one example.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from slmkit.data.loader import bits_per_byte
from slmkit.errors import SlmError
from slmkit.finetune.chat import ROLES, render_chat
from slmkit.tokenizer import Tokenizer, load_tokenizer
from slmkit.tokenizer.base import MANIFEST
from slmkit.train.loss import IGNORE_INDEX
from slmkit.utils import atomic_dir, check_replaceable, output_errors, write_json_atomic, write_marker

FORMAT = "slmkit-sft-data"
VERSION = 1
MARKER = ".slmkit-sft-data"  # the mark of a directory prepare_sft_data wrote (slmkit.utils.write_marker)
KIND = "SFT data"
SPLITS = ("train", "val")
OVERLONG = ("truncate", "drop")
REQUIRED_KEYS = ("vocab_size", "dtype", "tokenizer", "splits", "seq_len")
SCAN_BYTES = 1 << 30  # token files up to this size in all are checked in full on opening
DRAWS = 1024  # example indices drawn from the random generator at a time when packing rows


# -- rows -----------------------------------------------------------------------------------------
def read_rows(path) -> list[list[dict]]:
    """The conversations of the JSONL file `path`, each a list of {"role", "content"} messages.

    Each non-blank line is {"prompt": str, "response": str} (optionally "system": str) or
    {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]} with at least one
    assistant message. Raises SlmError for a missing, non-UTF-8 or empty file, and for the first bad row,
    naming the file, its line number and what is wrong."""
    return [messages for _, messages in _numbered_rows(Path(path).expanduser())]


def _numbered_rows(path: Path) -> list[tuple[int, list[dict]]]:
    """(line number, messages) of every row of `path` (see `read_rows`)."""
    if not path.exists():
        raise SlmError(f"rows file not found: {path}; give a JSONL file of prompt/response or messages rows")
    if not path.is_file():
        raise SlmError(f"{path} is not a file; give a JSONL file of prompt/response or messages rows")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise SlmError(f"{path} is not UTF-8 text (byte {error.start} on line {line}); save it as UTF-8") from None
    rows = [(number, _parse_row(line, f"{path}, line {number}"))
            for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not rows:
        raise SlmError(f"{path} holds no rows; write one JSON object per line, e.g. "
                       '{"prompt": "2 + 2?", "response": "4"}')
    return rows


def _parse_row(line: str, where: str) -> list[dict]:
    """The messages of one JSONL line; SlmError starting with `where` (file and line) otherwise."""
    try:
        row = json.loads(line)
    except ValueError as error:
        raise SlmError(f"{where}: not JSON ({error}); each line must be one JSON object such as "
                       '{"prompt": "...", "response": "..."}') from None
    if not isinstance(row, dict):
        raise SlmError(f"{where}: a JSON {type(row).__name__}, not an object with \"prompt\" and \"response\" "
                       "or \"messages\"")
    if "messages" in row:
        if "prompt" in row or "response" in row:
            raise SlmError(f"{where}: has both \"messages\" and \"prompt\"/\"response\"; give one form per row")
        return _check_messages(row["messages"], where)
    missing = [key for key in ("prompt", "response") if key not in row]
    if missing:
        raise SlmError(f"{where}: missing field {' and '.join(repr(k) for k in missing)}; a row needs \"prompt\" "
                       "and \"response\", or \"messages\" (found keys: "
                       f"{', '.join(repr(k) for k in row) or 'none'})")
    messages = [{"role": "system", "content": row["system"]}] if "system" in row else []
    messages += [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    for message, field in zip(messages, (["system"] if "system" in row else []) + ["prompt", "response"]):
        _check_content(message["content"], where, repr(field))
    return messages


def _check_messages(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        shown = type(messages).__name__ if not isinstance(messages, list) else "an empty list"
        raise SlmError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} objects, "
                       f"not {shown}")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise SlmError(f"{where}: message {index} is a JSON {type(message).__name__}, not an object with "
                           "\"role\" and \"content\"")
        missing = [key for key in ("role", "content") if key not in message]
        if missing:
            raise SlmError(f"{where}: message {index} has no {' and no '.join(repr(k) for k in missing)}")
        role = message["role"]
        if role not in ROLES:
            raise SlmError(f"{where}: message {index} has unknown role {role!r}; the roles are "
                           f"{', '.join(ROLES)}")
        _check_content(message["content"], where, f"message {index} ({role})")
        checked.append({"role": role, "content": message["content"]})
    if not any(message["role"] == "assistant" for message in checked):
        raise SlmError(f"{where}: no assistant message; a row needs at least one response to learn from")
    return checked


def _check_content(content, where: str, what: str) -> None:
    if not isinstance(content, str):
        raise SlmError(f"{where}: {what} is a JSON {type(content).__name__}, not a string")
    if not content.strip():
        raise SlmError(f"{where}: {what} is empty")


# -- preparing the directory --------------------------------------------------------------------------
def prepare_sft_data(rows_path, tokenizer, out_dir, *, seq_len: int, val_fraction: float = 0.1, seed: int = 0,
                     overlong: str = "truncate", overwrite: bool = False, fingerprint: str | None = None) -> Path:
    """Render the conversations of the JSONL file `rows_path` (see `read_rows`) with `tokenizer` (a
    Tokenizer, or anything `load_tokenizer` takes; it must have the chat tokens) into the SFT data
    directory `out_dir`, and return its path.

    Rows are split into train and val by `seed`: round(rows x val_fraction) rows, at least 1 and at most
    rows - 1, are validation. An example longer than seq_len + 1 tokens (one row of inputs and targets)
    keeps its first seq_len + 1 tokens with overlong="truncate" (and is dropped when no response token is
    left), or is dropped with overlong="drop"; meta.json counts both. Written atomically; an existing
    `out_dir` is replaced only with `overwrite` and only when prepare_sft_data wrote it (a file added to it
    afterwards makes it the user's: record what it was made from in `fingerprint`, kept in meta.json, rather
    than in a file of your own). Raises SlmError for
    bad rows (with the line number), fewer than 2 rows, a tokenizer without chat tokens, bad settings, a
    split left without examples, or an output directory it may not replace.
    """
    rows_path, out_dir = Path(rows_path).expanduser(), Path(out_dir).expanduser()
    if not isinstance(seq_len, (int, np.integer)) or isinstance(seq_len, bool) or seq_len < 1:
        raise SlmError(f"seq_len {seq_len!r} must be a positive number of tokens")
    if not 0 < val_fraction < 1:
        raise SlmError(f"val_fraction {val_fraction} must be between 0 and 1 (e.g. 0.1 for a tenth of the rows)")
    if overlong not in OVERLONG:
        raise SlmError(f"overlong {overlong!r} must be one of {', '.join(OVERLONG)}")
    tokenizer_dir = None if isinstance(tokenizer, Tokenizer) or not Path(str(tokenizer)).expanduser().exists() \
        else Path(str(tokenizer)).expanduser()
    tokenizer = load_tokenizer(tokenizer)
    if not tokenizer.has_chat_tokens():
        raise SlmError(f"tokenizer {tokenizer.name!r} has no chat tokens <|im_start|> and <|im_end|>; add them with "
                       "slmkit.finetune.chat.with_chat_tokens (and grow the model with extend_embeddings)")
    check_replaceable(out_dir, [rows_path, tokenizer_dir], kind=KIND, marker=MARKER)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise SlmError(f"{out_dir} already holds SFT data; pass overwrite (--force) to replace it, or choose "
                       "another output directory")
    numbered = _numbered_rows(rows_path)
    if len(numbered) < 2:
        raise SlmError(f"{rows_path} holds {len(numbered)} row; SFT data needs at least 2 rows (one to train on, "
                       "one to validate on)")
    val_rows = _val_rows(len(numbered), val_fraction, seed)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    byte_lengths = tokenizer.token_byte_lengths()
    rendered, splits = {}, {}
    for split in SPLITS:
        indices = [i for i in range(len(numbered)) if (i in val_rows) == (split == "val")]
        rendered[split], splits[split] = _render_split([numbered[i][1] for i in indices], tokenizer, seq_len,
                                                       overlong, byte_lengths)
        if not splits[split]["examples"]:
            raise SlmError(f"every {split} example of {rows_path} is longer than seq_len + 1 = {seq_len + 1} tokens "
                           f"and was dropped (overlong={overlong}); raise seq_len"
                           + (" or use overlong='truncate'" if overlong == "drop" else ""))
    meta = _meta(tokenizer, dtype, rows_path, numbered, val_rows, seq_len, overlong, val_fraction, seed, splits)
    if fingerprint is not None:
        meta["fingerprint"] = fingerprint
    with output_errors(out_dir, "the SFT data"), atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            ids, mask, offsets = rendered[split]
            ids.astype(dtype).tofile(tmp / f"{split}.bin")
            mask.astype(np.uint8).tofile(tmp / f"{split}.mask.bin")
            np.save(tmp / f"{split}.offsets.npy", offsets)
        tokenizer.save(tmp)
        write_json_atomic(tmp / "meta.json", meta)
        write_marker(tmp, MARKER, KIND)
    return out_dir


def _val_rows(rows: int, val_fraction: float, seed: int) -> set[int]:
    """Indices of the validation rows: a seeded random choice of round(rows x val_fraction), in 1..rows-1."""
    count = min(max(round(rows * val_fraction), 1), rows - 1)
    return {int(i) for i in np.random.default_rng(int(seed)).permutation(rows)[:count]}


def _render_split(conversations: list[list[dict]], tokenizer: Tokenizer, seq_len: int, overlong: str,
                  byte_lengths: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], dict]:
    """(ids, mask, offsets) of the examples kept, and the split's counts for meta.json."""
    ids_list, mask_list, truncated, dropped = [], [], 0, 0
    limit = seq_len + 1
    for messages in conversations:
        ids, mask = render_chat(tokenizer, messages)
        if len(ids) > limit:
            if overlong == "drop" or not any(mask[1:limit]):  # (the first token is never a target)
                dropped += 1
                continue
            ids, mask = ids[:limit], mask[:limit]
            truncated += 1
        ids_list.append(np.asarray(ids, dtype=np.int64))
        mask_list.append(np.asarray(mask, dtype=bool))
    lengths = np.array([len(ids) for ids in ids_list], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate(ids_list) if ids_list else np.zeros(0, np.int64)
    mask = np.concatenate(mask_list) if mask_list else np.zeros(0, bool)
    counts = {
        "rows": len(conversations), "examples": len(ids_list), "tokens": int(len(ids)),
        "response_tokens": int(mask.sum()), "response_bytes": int(byte_lengths[ids[mask]].sum()),
        "longest": int(lengths.max(initial=0)), "truncated": truncated, "dropped": dropped,
        "max_token_id": int(ids.max(initial=-1)),
    }
    return (ids, mask, offsets), counts


def _meta(tokenizer: Tokenizer, dtype: np.dtype, rows_path: Path, numbered: list, val_rows: set[int], seq_len: int,
          overlong: str, val_fraction: float, seed: int, splits: dict) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tokenizer": {  # the keys of a pretraining dataset's meta.json (slmkit.data.meta)
            "name": tokenizer.name, "kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id, "pad_id": tokenizer.pad_id, "files": MANIFEST,
            "tiktoken": bool(getattr(tokenizer, "uses_tiktoken", False)), "trained_on": None,
        },
        "vocab_size": tokenizer.vocab_size,
        "max_token_id": max(split["max_token_id"] for split in splits.values()),
        "dtype": dtype.name,
        "eot_id": tokenizer.eot_id,
        "chat_template": "chatml",
        "source": {"path": str(rows_path.resolve()), "sha256": hashlib.sha256(rows_path.read_bytes()).hexdigest(),
                   "rows": len(numbered)},
        "split": {"method": "by row (conversation)", "seed": seed, "val_fraction": val_fraction,
                  "val_lines": [numbered[i][0] for i in sorted(val_rows)][:1000]},
        "seq_len": seq_len,
        "overlong": overlong,
        "truncated": sum(split["truncated"] for split in splits.values()),
        "dropped": sum(split["dropped"] for split in splits.values()),
        "splits": splits,
        "warnings": [],
    }


# -- reading it ----------------------------------------------------------------------------------------
class SFTData:
    """An SFT data directory written by `prepare_sft_data`; made by `open_sft_data`, which checks it. It
    offers what the trainer and evaluator use of `slmkit.data.loader.Dataset`, with batches of
    (x, y, segments) instead of (x, y)."""

    def __init__(self, directory: Path, meta: dict, packing: bool = True):
        self.dir = directory
        self.meta = meta
        self.packing = packing
        self.vocab_size: int = meta["vocab_size"]
        self.dtype = np.dtype(meta["dtype"])
        self.eot_id: int = meta["tokenizer"]["eot_id"]
        pad_id = meta["tokenizer"].get("pad_id")
        self.pad_id: int = self.eot_id if pad_id is None else pad_id  # what fills a row after its examples
        self._tokenizer = None
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._eval_rows: dict[tuple[str, int], list[list[int]]] = {}

    @property
    def tokenizer(self):
        """The data's tokenizer (with the chat tokens), loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.dir)
        return self._tokenizer

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, loss mask, example offsets) of split `name`; ids and mask as read-only memory maps."""
        if name not in SPLITS:
            raise SlmError(f"unknown split {name!r}; use train or val")
        if name not in self._arrays:
            offsets = np.load(self.dir / f"{name}.offsets.npy")
            if not self.meta["splits"][name]["tokens"]:  # numpy cannot map an empty file
                ids, mask = np.zeros(0, self.dtype), np.zeros(0, np.uint8)
            else:
                ids = np.memmap(self.dir / f"{name}.bin", dtype=self.dtype, mode="r")
                mask = np.memmap(self.dir / f"{name}.mask.bin", dtype=np.uint8, mode="r")
            self._arrays[name] = (ids, mask, offsets)
        return self._arrays[name]

    def examples(self, split: str) -> int:
        """Number of examples (rendered conversations) in `split`."""
        return len(self.split(split)[2]) - 1

    def bytes_per_token(self, split: str = "val") -> float | None:
        """UTF-8 bytes of response text per response token of `split` (the tokens the loss counts; each
        closing <|im_end|> counts as a token of 0 bytes), so bits per byte is over the responses."""
        info = self.meta["splits"].get(split, {})
        tokens, n_bytes = info.get("response_tokens"), info.get("response_bytes")
        return n_bytes / tokens if tokens and n_bytes else None

    def bits_per_byte(self, loss_nats: float, split: str = "val") -> float | None:
        """Bits per byte of response text from a mean loss in nats per response token on `split`."""
        return bits_per_byte(loss_nats, self.bytes_per_token(split))

    def check_window(self, split: str, seq_len: int) -> None:
        """SlmError when `split` has no example, or an example longer than one row of seq_len + 1 tokens
        (the data was prepared for a longer seq_len)."""
        info = self.meta["splits"][split]
        if not info["examples"]:
            raise SlmError(f"the {split} split of {self.dir} has no example; prepare the SFT data again with more rows")
        if info["longest"] > seq_len + 1:
            raise SlmError(f"the {split} split of {self.dir} has examples of up to {info['longest']} tokens, more than "
                           f"one row of seq_len + 1 = {seq_len + 1}; use seq_len {info['longest'] - 1} or more, or "
                           f"prepare the data again with seq_len={seq_len}")

    def check_token_ids(self, scan: bool | None = None) -> None:
        """SlmError when a token id is outside the vocabulary: the largest id meta.json records, then (`scan`
        True, or None and the files are small) the token files themselves."""
        recorded = self.meta.get("max_token_id")
        if recorded is not None and recorded >= self.vocab_size:
            self._refuse_id(int(recorded), "its meta.json records")
        total = sum(self.meta["splits"][name]["tokens"] for name in SPLITS) * self.dtype.itemsize
        if scan or (scan is None and (recorded is None or total <= SCAN_BYTES)):
            for name in SPLITS:
                ids = self.split(name)[0]
                if len(ids) and int(ids.max()) >= self.vocab_size:
                    self._refuse_id(int(ids.max()), f"{name}.bin holds")

    def _refuse_id(self, token_id: int, where: str) -> None:
        raise SlmError(f"SFT data {self.dir}: {where} token id {token_id}, outside its vocabulary of {self.vocab_size} "
                       f"ids; its files do not belong together: prepare it again (overwrite)")

    # -- batches ------------------------------------------------------------------------------
    def random_batch(self, split: str, batch_size: int, seq_len: int, seed: int, step: int):
        """(x, y, segments): int64 torch tensors (batch_size, seq_len) of whole examples drawn at random
        from `split` (packed several to a row, or one per row without packing); a function of (seed,
        step) only. See the module docstring for y and segments."""
        self.check_window(split, seq_len)
        lengths = np.diff(self.split(split)[2])
        rng = np.random.default_rng([int(seed), int(step), 0, 0x5F7])
        if not self.packing:
            return self._assemble(split, [[int(i)] for i in rng.integers(0, len(lengths), batch_size)], seq_len)
        draws = _draws(rng, len(lengths))
        rows, pending = [], next(draws)
        for _ in range(batch_size):
            row, used = [], 0
            while not row or used + lengths[pending] <= seq_len + 1:
                row.append(pending)
                used += int(lengths[pending])
                pending = next(draws)
            rows.append(row)
        return self._assemble(split, rows, seq_len)

    def eval_windows(self, split: str, seq_len: int) -> int:
        """Number of rows `eval_batches` makes of `split`."""
        return len(self._rows_in_order(split, seq_len))

    def eval_batches(self, split: str, batch_size: int, seq_len: int, max_batches: int | None = None) -> Iterator:
        """Every example of `split` in order, packed (or one per row) as in `random_batch`, as (x, y,
        segments) batches of up to batch_size rows (the last may be smaller); at most `max_batches`."""
        self.check_window(split, seq_len)
        rows = self._rows_in_order(split, seq_len)
        for index, first in enumerate(range(0, len(rows), batch_size)):
            if max_batches is not None and index >= max_batches:
                return
            yield self._assemble(split, rows[first : first + batch_size], seq_len)

    def _rows_in_order(self, split: str, seq_len: int) -> list[list[int]]:
        """The examples of `split` in order, grouped into rows of at most seq_len + 1 tokens (one each
        without packing)."""
        key = (split, seq_len)
        if key not in self._eval_rows:
            self.check_window(split, seq_len)
            lengths = np.diff(self.split(split)[2])
            rows: list[list[int]] = []
            used = seq_len + 2  # no open row
            for index, length in enumerate(lengths.tolist()):
                if not self.packing or used + length > seq_len + 1:
                    rows.append([])
                    used = 0
                rows[-1].append(index)
                used += length
            self._eval_rows[key] = rows
        return self._eval_rows[key]

    def _assemble(self, split: str, rows: list[list[int]], seq_len: int):
        """(x, y, segments) tensors of `rows` (lists of example indices, each list fitting seq_len + 1)."""
        import torch  # heavy; preparing and inspecting the data do not need it

        ids, mask, offsets = self.split(split)
        tokens = np.full((len(rows), seq_len + 1), self.pad_id, dtype=np.int64)
        loss = np.zeros((len(rows), seq_len + 1), dtype=bool)
        segments = np.empty((len(rows), seq_len + 1), dtype=np.int64)
        for b, row in enumerate(rows):
            position = 0
            for number, example in enumerate(row):
                start, end = int(offsets[example]), int(offsets[example + 1])
                stop = position + end - start
                tokens[b, position:stop] = ids[start:end]
                loss[b, position:stop] = mask[start:end]
                segments[b, position:stop] = number
                position = stop
            segments[b, position:] = len(row)  # padding: a segment of its own
        if tokens.size and int(tokens.max()) >= self.vocab_size:
            self._refuse_id(int(tokens.max()), f"the {split} split holds")
        same_example = segments[:, 1:] == segments[:, :-1]
        targets = np.where(loss[:, 1:] & same_example, tokens[:, 1:], IGNORE_INDEX)
        return (torch.from_numpy(np.ascontiguousarray(tokens[:, :-1])), torch.from_numpy(targets),
                torch.from_numpy(np.ascontiguousarray(segments[:, :-1])))

    # -- description --------------------------------------------------------------------------
    def summary(self, path=None) -> str:
        """Human-readable lines: the tokenizer, and per split its examples, tokens, response tokens,
        truncated and dropped examples."""
        tok = self.meta["tokenizer"]
        lines = [f"SFT data {self.dir if path is None else path}",
                 f"  tokenizer   {tok['name']} ({tok['kind']}), vocab {tok['vocab_size']:,}, {self.meta['dtype']}, "
                 f"chat template {self.meta.get('chat_template')}",
                 f"  source      {self.meta['source']['path']}: {self.meta['source']['rows']:,} rows, sha256 "
                 f"{self.meta['source']['sha256'][:12]}"]
        for name in SPLITS:
            s = self.meta["splits"][name]
            lines.append(f"  {name:<11} {s['examples']:,} examples, {s['tokens']:,} tokens, {s['response_tokens']:,} "
                         f"response tokens; {s['truncated']} truncated, {s['dropped']} dropped "
                         f"(longer than seq_len + 1 = {self.meta['seq_len'] + 1}, overlong={self.meta['overlong']})")
        lines += [f"warning: {warning}" for warning in self.meta.get("warnings", [])]
        return "\n".join(lines)

    def __repr__(self) -> str:
        s = self.meta["splits"]
        return (f"SFTData({str(self.dir)!r}, tokenizer={self.meta['tokenizer']['name']!r}, "
                f"train={s['train']['examples']:,} examples, val={s['val']['examples']:,} examples, "
                f"packing={self.packing})")


def _draws(rng: np.random.Generator, count: int) -> Iterator[int]:
    """Random example indices below `count`, drawn DRAWS at a time."""
    while True:
        yield from rng.integers(0, count, DRAWS).tolist()


def read_sft_meta(directory) -> dict:
    """The parsed meta.json of a complete SFT data directory, with every file present at the size
    meta.json gives. SlmError saying what is wrong and the fix otherwise."""
    directory = Path(directory).expanduser()
    meta_path = directory / "meta.json"
    if not directory.is_dir():
        raise SlmError(f"SFT data directory not found: {directory}; create one with prepare_sft_data")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SlmError(f"{directory} is not SFT data (no meta.json); create it with prepare_sft_data") from None
    except ValueError as error:
        raise SlmError(f"{meta_path} is not valid JSON ({error}); prepare the SFT data again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        hint = "; it is a pretraining dataset: give SFT data (JSONL rows prepared with prepare_sft_data)" \
            if found == "slmkit-dataset" else ""
        raise SlmError(f"{meta_path} is not SFT data (format {found!r}){hint}")
    if meta.get("version", 0) > VERSION:
        raise SlmError(f"{directory} was written by a newer slmkit (SFT data version {meta['version']}); upgrade slmkit")
    missing = [key for key in REQUIRED_KEYS if key not in meta] + \
        [f"splits.{split}" for split in SPLITS if split not in meta.get("splits", {})]
    if missing:
        raise SlmError(f"{meta_path} has no {missing[0]!r}; prepare the SFT data again")
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        info = meta["splits"][split]
        expected = {f"{split}.bin": info["tokens"] * itemsize, f"{split}.mask.bin": info["tokens"],
                    f"{split}.offsets.npy": None}
        for name, size in expected.items():
            path = directory / name
            if not path.is_file():
                raise SlmError(f"SFT data {directory} is incomplete: missing {name}; prepare it again")
            if size is not None and path.stat().st_size != size:
                raise SlmError(f"{path} holds {path.stat().st_size} bytes, but meta.json gives {size}; the data is "
                               "damaged or truncated: prepare it again")
        offsets = np.load(directory / f"{split}.offsets.npy")
        if len(offsets) != info["examples"] + 1 or (len(offsets) and int(offsets[-1]) != info["tokens"]) \
                or (np.diff(offsets) <= 0).any():
            raise SlmError(f"{directory / f'{split}.offsets.npy'} does not match meta.json's {info['examples']} "
                           f"examples of {info['tokens']} tokens; prepare the SFT data again")
    return meta


def open_sft_data(directory, seq_len: int | None = None, *, packing: bool = True,
                  scan_ids: bool | None = None) -> SFTData:
    """Open the SFT data directory `directory` after checking it (`read_sft_meta`) and its token ids
    (`SFTData.check_token_ids`; `scan_ids` forces or skips the pass over the files); with `seq_len`, also
    check that each split has examples that fit rows of seq_len + 1 tokens. `packing`: several examples
    to a row (True) or one per row. Raises SlmError naming what is wrong and the fix."""
    directory = Path(directory).expanduser()
    data = SFTData(directory, read_sft_meta(directory), packing=packing)
    data.check_token_ids(scan_ids)
    if seq_len is not None:
        for split in SPLITS:
            data.check_window(split, seq_len)
    return data
