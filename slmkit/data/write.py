"""The dataset directory on disk: train.bin / val.bin copied from the scratch tokens in bounded pieces,
the output folder checked and cleared of scratch folders of killed runs, and the fingerprint that lets
a run with unchanged inputs reuse the existing directory.

The directory itself is built in a temporary folder beside it and renamed into place at the end
(`slmkit.utils.atomic_dir`), so a failed or interrupted run leaves no half dataset behind. An existing
output is reused when its inputs are identical, refused without `force` when they differ (naming what
differs), and replaced with `force` only where `slmkit.utils.check_replaceable` allows: never an input
or a folder around or inside one, never anything but a dataset prepare wrote (PREPARE_MARKER).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from slmkit.data.documents import Documents, Scratch
from slmkit.data.loader import FORMAT, SPLITS, VERSION, read_meta
from slmkit.data.options import PrepareOptions
from slmkit.data.sources import Source, parse_weight
from slmkit.errors import SlmError
from slmkit.tokenizer import MANIFEST, Tokenizer, needs_training
from slmkit.utils import check_replaceable

PREPARE_MARKER = ".slmkit-prepare"  # the mark of a dataset prepare wrote (see slmkit.utils.write_marker)
# What a dataset directory holds; a folder of these alone, with a dataset's meta.json, is one prepare made
# before it left a marker.
DATASET_FILES = ("train.bin", "val.bin", "meta.json", MANIFEST, "tokenizer.json")

WRITE_TOKENS = 1 << 22  # tokens copied at a time: memory stays bounded for long runs of documents


def write_splits(directory: Path, scratch: Scratch, docs: Documents, dest: np.ndarray, repeats: np.ndarray,
                 dtype: np.dtype, n_sources: int) -> tuple[dict, list[dict]]:
    """Write train.bin and val.bin in `directory`: each kept document's tokens from the scratch file,
    `repeats` times, in corpus order. Returns the counts per split {"documents", "tokens", "bytes",
    "max_token_id"} (the largest id written, -1 for an empty split) and per source {"train_documents",
    "val_documents", "train_tokens", "val_tokens"}.

    The scratch tokens are read in order, WRITE_TOKENS at a time (not mapped), so memory stays flat
    whatever the size of the dataset."""
    offsets, lengths = docs.offsets(), docs.column("tokens")
    doc_bytes, sources = docs.column("text_bytes"), docs.column("source")
    splits = {name: {"documents": 0, "tokens": 0, "bytes": 0} for name in SPLITS}
    max_id = {name: -1 for name in SPLITS}
    per_source = [{"train_documents": 0, "val_documents": 0, "train_tokens": 0, "val_tokens": 0}
                  for _ in range(n_sources)]
    written = (dest >= 0) & (repeats > 0)
    for d, name in enumerate(SPLITS):  # the counts, vectorised (Python ints: numpy ints would not go into meta.json)
        times = np.where(written & (dest == d), repeats, 0)
        splits[name]["documents"] = int(times.sum())
        splits[name]["tokens"] = int((times * lengths).sum())
        splits[name]["bytes"] = int((times * doc_bytes).sum())
        documents = np.bincount(sources, weights=times, minlength=n_sources)
        tokens = np.bincount(sources, weights=times * lengths, minlength=n_sources)
        for k in range(n_sources):
            per_source[k][f"{name}_documents"] = int(documents[k])
            per_source[k][f"{name}_tokens"] = int(tokens[k])
    # Runs of consecutive documents that go to the same split once are copied as one piece.
    change = np.ones(len(dest), dtype=bool)
    change[1:] = (dest[1:] != dest[:-1]) | (repeats[1:] != 1) | (repeats[:-1] != 1) | ~written[1:] | ~written[:-1]
    starts = np.flatnonzero(change & written)
    ends = np.append(np.flatnonzero(change)[1:], len(dest))  # each run ends where the next change is
    ends = ends[np.searchsorted(np.flatnonzero(change), starts)]
    with open(scratch.tokens, "rb") as scratch_file, open(directory / "train.bin", "wb") as train_file, \
            open(directory / "val.bin", "wb") as val_file:
        files = {0: train_file, 1: val_file}
        for i, j in zip(starts.tolist(), ends.tolist()):
            d, r = int(dest[i]), int(repeats[i])
            first, count = int(offsets[i]), int(offsets[j - 1] + lengths[j - 1] - offsets[i])
            for repeat in range(r):
                scratch_file.seek(first * dtype.itemsize)
                for piece in range(0, count, WRITE_TOKENS):
                    block = np.fromfile(scratch_file, dtype=dtype, count=min(WRITE_TOKENS, count - piece))
                    if repeat == 0 and len(block):  # the piece is at hand: its max costs next to nothing
                        max_id[SPLITS[d]] = max(max_id[SPLITS[d]], int(block.max()))
                    files[d].write(memoryview(block))
    for name in SPLITS:
        splits[name]["max_token_id"] = max_id[name]
    return splits, per_source


def fingerprint(options: PrepareOptions, train: list[Source], val: list[Source], tokenizer) -> str:
    """A hash of everything that shapes the dataset: options, sources (names, sizes, modification
    times), tokenizer (its files' hashes for a tokenizer on disk). Random for an in-memory Tokenizer,
    which cannot be fingerprinted cheaply: such a dataset is never reused."""
    tokenizer_id = options.tokenizer
    if isinstance(tokenizer, Tokenizer):
        return os.urandom(16).hex()
    if Path(str(tokenizer)).exists():
        path = Path(str(tokenizer))
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        tokenizer_id = [str(path)] + [hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()]
    inputs = {
        "format": FORMAT, "version": VERSION, "options": options.dataset_fields(), "tokenizer": tokenizer_id,
        "train": [(s.fingerprint(), s.weight) for s in train], "val": [s.fingerprint() for s in val],
    }
    if needs_training(tokenizer):
        # Not reused: a dataset from before prepare trained tokenizers on the training split only.
        inputs["tokenizer_trained_on"] = "train"
    blob = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def reusable(out_dir: Path, fingerprint: str) -> bool:
    """True when `out_dir` holds a complete dataset made from inputs with this fingerprint."""
    try:
        return read_meta(out_dir).get("fingerprint") == fingerprint
    except SlmError:
        return False


def _dataset_meta(path: Path) -> dict | None:
    """The parsed meta.json of `path` when it is an slmkit dataset's (complete or not), else None."""
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def dataset_inputs(options: PrepareOptions, train: list[Source], val: list[Source]) -> dict:
    """What meta.json records of the inputs (options, source specs), to name what changed on a later run."""
    options_json = json.loads(json.dumps(options.dataset_fields(), default=str))
    return {"options": options_json, "train": [s.spec for s in train], "val": [s.spec for s in val]}


def input_paths(sources: list[Source], tokenizer) -> list[Path]:
    """The local files and folders a prepare run reads: what its output may not be, contain or lie in."""
    paths = []
    for source in sources:
        if source.kind != "local":
            continue
        base = Path(parse_weight(source.spec)[0]).expanduser()
        paths.extend([base] if base.exists() else source.paths)
    if isinstance(tokenizer, (str, os.PathLike)) and Path(str(tokenizer)).exists():
        paths.append(Path(str(tokenizer)))
    return paths


def changes(meta: dict, inputs: dict) -> str:
    """What differs between the inputs recorded in an existing dataset's meta.json and `inputs`, e.g.
    "--tokenizer 'gpt2' (now 'char')"; for a dataset without a record, what its summary fields show."""
    found = []
    recorded = meta.get("inputs")
    if isinstance(recorded, dict):
        old_options = recorded.get("options", {})
        for key, value in inputs["options"].items():
            if key in old_options and old_options[key] != value:
                found.append(f"--{key.replace('_', '-')} {old_options[key]!r} (now {value!r})")
        old_sources = (recorded.get("train"), recorded.get("val"))
    else:  # made before meta.json recorded its inputs
        old_name = (meta.get("tokenizer") or {}).get("name")
        if old_name != inputs["options"]["tokenizer"]:
            found.append(f"--tokenizer {old_name!r} (now {inputs['options']['tokenizer']!r})")
        sources = meta.get("sources") or []
        old_sources = ([s.get("spec") for s in sources if s.get("role") != "val"],
                       [s.get("spec") for s in sources if s.get("role") == "val"])
    if old_sources != (inputs["train"], inputs["val"]):
        found.append(f"sources {' '.join(old_sources[0] or [])}{' --val-source ' if old_sources[1] else ''}"
                     f"{' '.join(old_sources[1] or [])} (now {' '.join(inputs['train'])}"
                     f"{' --val-source ' if inputs['val'] else ''}{' '.join(inputs['val'])})")
    return "; ".join(found) or "the source files (sizes, modification times) or the tokenizer files changed"


def check_out_dir(out_dir: Path, fingerprint: str, inputs: dict, paths: list[Path], force: bool) -> bool:
    """Whether the existing `out_dir` is reused (True) or may be written (False). SlmError when it is a
    file; a dataset made from other inputs, without `force` (naming what differs); a non-empty folder
    that holds no dataset; or anything `check_replaceable` refuses (a source, a folder around or inside
    one, a folder holding more than a dataset prepare wrote)."""
    if not os.path.lexists(out_dir):
        return False
    if not out_dir.is_dir():
        raise SlmError(f"output {out_dir} exists and is a file; choose another --out")
    meta = _dataset_meta(out_dir)
    if meta is not None and meta.get("fingerprint") == fingerprint and not force and reusable(out_dir, fingerprint):
        return True
    if meta is not None and meta.get("fingerprint") != fingerprint and not force:
        raise SlmError(f"{out_dir} holds a dataset made from other inputs ({changes(meta, inputs)}); pass --force "
                       "to replace it, or choose another --out")
    if meta is None and any(out_dir.iterdir()) and not force:
        raise SlmError(f"output folder {out_dir} is not empty and holds no slmkit dataset; choose another --out")
    legacy = meta is not None and {p.name for p in out_dir.iterdir()} <= set(DATASET_FILES)
    check_replaceable(out_dir, paths, kind="a dataset", marker=PREPARE_MARKER, legacy_output=legacy)
    return False


def remove_stale_temporaries(out_dir: Path) -> None:
    """Remove temporary folders of earlier runs of this output that were killed (their process is gone)."""
    for path in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        try:
            pid = int(path.name.rsplit(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError, IndexError):
            continue
