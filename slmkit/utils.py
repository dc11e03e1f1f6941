"""Small helpers shared by every layer: option fields, strict dataclass construction, CPU counting,
atomic writes, and the guard every command that replaces a directory asks first.

Every file or directory a later command trusts is written here: to a temporary name beside its
target, flushed to disk (fsync), then renamed into place, so an interrupted command or a power cut
never leaves half of one behind.

A command that replaces a directory (`slm prepare --force`, `slm export-hf --force`, `slm import-hf
--force`, `slm tokenizer train --out`, the trainer's `--overwrite`) first calls `check_replaceable`,
which refuses to replace anything the user may own: an input of the command, a directory around or
inside one, a run, a dataset or a checkpoint the command did not write, any non-empty directory without
the command's marker (`write_marker`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import errno
import hashlib
import json
import math
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from slmkit.errors import SlmError


def option(default=dataclasses.MISSING, help: str = "", *, flag: str | None = None, short: str | None = None,
           choices=None, metavar: str | None = None, default_factory=dataclasses.MISSING):
    """A dataclass field carrying its command-line help (and flag name, choices, metavar), which
    `slmkit.cli.options.add_options` turns into a flag; options dataclasses below the CLI declare
    their fields with it without importing the CLI."""
    metadata = {"help": help, "flag": flag, "short": short, "choices": choices, "metavar": metavar}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def dataclass_from_dict(cls, values: dict, where: str):
    """`cls(**values)`, refusing unknown keys with SlmError (naming the nearest known field)."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise SlmError(f"unknown key(s) in {where}: {', '.join(hints)}")
    return cls(**values)


class _LineWriter:
    """A stream for a progress bar whose output is a file or a pipe: each redraw becomes one plain
    line (no carriage returns, no partial lines in CI logs)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").replace("\x1b[A", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: float | None = None, desc: str = "", enabled: bool = True, **options) -> tqdm:
    """A tqdm progress bar on stderr: redrawn in place on a terminal; elsewhere (a file, a pipe, a CI
    log) a plain line every 30 s and at the end. `options` go to tqdm (unit, unit_scale, ...)."""
    if not enabled:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, smoothing=0.1, dynamic_ncols=True, **options)
    return tqdm(total=total, desc=desc, file=_LineWriter(sys.stderr), mininterval=30, ascii=True, ncols=100,
                **options)


def cache_dir() -> Path:
    """slmkit's cache (downloads, measured machine figures): $SLMKIT_CACHE, else $XDG_CACHE_HOME/slmkit,
    else ~/.cache/slmkit."""
    if os.environ.get("SLMKIT_CACHE"):
        return Path(os.environ["SLMKIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "slmkit"


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (all the machine's where there is no such mask). Here rather
    than in slmkit.runtime, which imports torch: prepare counts CPUs without loading torch (about 2 s)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a directory's content (a directory's: its entries, i.e. renames) to disk.
    A directory that the file system cannot flush (EINVAL, as some network file systems answer) is
    skipped; any other error (EIO, ENOSPC on a delayed write) is raised."""
    is_dir = os.path.isdir(path)
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if is_dir else 0))
    try:
        os.fsync(fd)
    except OSError as error:
        if not is_dir or error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every regular file and every directory under `root` (`root` included); links, pipes and
    other special files are left alone."""
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                fsync_path(path)
        fsync_path(directory)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write; on success it is flushed to disk (fsync) and renamed
    to `path` (an ordinary 0644 file; the folder flushed after), on any error it is deleted and `path`
    is left as it was."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes files private; these are ordinary shared files
        fsync_path(tmp)  # the content is on disk before the name points at it
        os.replace(tmp, path)
        fsync_path(path.parent)  # and the rename itself
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file and a rename: readers never see half a file."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """`obj` as indented JSON (non-ASCII kept as is), written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def replace_dir(new: Path, target: Path) -> None:
    """Move the finished directory `new` to `target`, replacing any old one only once `new` is complete."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{os.urandom(3).hex()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary directory beside `target` to fill; on success its files and folders are
    flushed to disk (fsync) and it replaces `target` in one rename (the parent flushed after), on any
    error it is deleted and `target` is left as it was. It replaces whatever is at `target`: ask
    `check_replaceable` first.

        with atomic_dir(out) as tmp:
            (tmp / "config.json").write_text(...)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        fsync_tree(tmp)  # every file and folder on disk before the rename makes them the target
        replace_dir(tmp, target)
        fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- replacing a directory: the one guard ---------------------------------------------------------
MARKER_FORMAT = "slmkit-output-marker"
# How slmkit's own directories are recognised, by their files alone (this module imports no layer above it).
RUN_FORMAT, DATASET_FORMAT, CHECKPOINT_FORMAT = "slmkit-run", "slmkit-dataset", "slmkit-checkpoint"
_DESCRIBE_DEPTH, _DESCRIBE_ENTRIES = 3, 2000  # bounds of the search for runs, datasets, checkpoints below a folder


def write_marker(directory: str | os.PathLike, marker: str, kind: str,
                 entries: Iterable[str] | None = None) -> Path:
    """Record in `directory` that a command wrote it, so that `check_replaceable(..., marker=marker)` lets
    that command replace it later. `marker`: the command's own file name (".slmkit-export-hf"); `kind`:
    what the directory is, for messages ("an HF export"); `entries`: the top-level names the command
    writes there (default: the names present now, the marker left out). A name outside `entries` found
    later is the user's, and makes the directory irreplaceable. Written atomically; returns its path."""
    directory = Path(directory)
    if entries is None:
        entries = (p.name for p in directory.iterdir() if p.name != marker)
    entries = sorted(set(entries))
    path = directory / marker
    write_json_atomic(path, {"format": MARKER_FORMAT, "kind": kind, "entries": entries,
                             "sha256": _small_file_hashes(directory, entries)})
    return path


MARKED_HASH_BYTES = 1 << 20  # files up to this size (cards, configs, notes) are hashed in the marker


def _small_file_hashes(directory: Path, entries: Iterable[str]) -> dict[str, str]:
    """sha256 of the small plain files among `entries`: a user may edit those (a model card, a config),
    and an edited one must not be replaced as if the command still owned it."""
    hashes = {}
    for name in entries:
        path = directory / name
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_size <= MARKED_HASH_BYTES:
                hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            continue
    return hashes


def check_replaceable(target: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), *, kind: str,
                      marker: str, legacy_output: bool = False) -> None:
    """Raise SlmError unless the command writing `kind` (e.g. "an HF export") may replace `target`.

    Refused, whatever else holds: a `target` that is not a directory; one that is, contains or lies
    inside any of `inputs` (the command's sources: files or directories; None entries are skipped).
    Then allowed: a `target` that does not exist, an empty directory, a directory holding `marker` (the
    same command wrote it: `write_marker`) and nothing besides the entries that marker lists, or one the
    caller recognises as its own output from before markers existed (`legacy_output`). Anything else is
    refused: a run, a dataset, a checkpoint (recognised by their files), a folder holding them, or any
    other non-empty directory; the message names what it holds and what to do.

    Call it before writing anything; then write the new directory with `atomic_dir` and, inside it,
    `write_marker`. Raises only SlmError.
    """
    target = Path(target).expanduser()
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise SlmError(f"will not replace {target}: it is a file, not a directory; {kind} is written as a "
                       "directory, so choose another output path")
    resolved = target.resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).expanduser().resolve()
        if source == resolved:
            relation = "is"
        elif resolved in source.parents:
            relation = "contains"
        elif source in resolved.parents:
            relation = "lies inside"
        else:
            continue
        raise SlmError(f"will not replace {target}: it {relation} the input {given}; write {kind} to a "
                       "directory outside the inputs")
    try:
        names = sorted(p.name for p in target.iterdir())
    except OSError as error:
        raise SlmError(f"will not replace {target}: its contents cannot be listed ({error.strerror})") from None
    if not names:
        return
    record = _read_marker(target / marker)
    if record is not None:
        foreign = [name for name in names if name != marker and name not in record["entries"]]
        edited = [name for name, digest in (record.get("sha256") or {}).items()
                  if name in names and _small_file_hashes(target, [name]).get(name, digest) != digest]
        if edited and not foreign:
            shown = ", ".join(edited[:3]) + (f" and {len(edited) - 3} more" if len(edited) > 3 else "")
            raise SlmError(f"will not replace {target}: {shown} changed since this command wrote {kind} there "
                           "(edited by hand?); move your version out, or choose another output directory")
        if not foreign:
            return
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise SlmError(f"will not replace {target}: besides {kind} written there before, it holds {shown}, "
                       "which this command did not write; move those out, or choose another output directory")
    if legacy_output:
        return
    raise SlmError(f"will not replace {target}: it {_describe(target, names)}, and {kind} replaces only an empty "
                   f"directory or one this command wrote before; choose a new or empty directory (or delete "
                   f"{target} yourself if you mean to)")


def _read_marker(path: Path) -> dict | None:
    """A marker's content when `path` is a valid marker file, else None."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != MARKER_FORMAT or \
            not isinstance(record.get("entries"), list):
        return None
    return record


def _json_format(path: Path) -> str | None:
    """The "format" field of a JSON object file, or None (no file, not JSON, no object)."""
    try:
        if path.stat().st_size > 1 << 24:  # slmkit's config and meta files are small
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def slmkit_kind(path: Path) -> str | None:
    """What an slmkit directory is, from its files: "a training run" (config.json of format slmkit-run,
    or a checkpoints/ folder), "a dataset" (meta.json of format slmkit-dataset), "a checkpoint"
    (config.json of format slmkit-checkpoint); None for anything else."""
    config = _json_format(path / "config.json")
    if config == RUN_FORMAT or (path / "checkpoints").is_dir():
        return "a training run"
    if _json_format(path / "meta.json") == DATASET_FORMAT:
        return "a dataset"
    if config == CHECKPOINT_FORMAT:
        return "a checkpoint"
    return None


def _describe(target: Path, names: list[str]) -> str:
    """What a non-empty directory holds, for a refusal: "is a training run", "holds 2 datasets (a, b)",
    "holds 3 entries (notes.txt, ...)". Searches at most a few levels and entries below `target`."""
    kind = slmkit_kind(target)
    if kind:
        return f"is {kind}"
    found: list[tuple[str, Path]] = []
    seen = 0
    level = [target]
    for _ in range(_DESCRIBE_DEPTH):
        below = []
        for folder in level:
            try:
                children = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]
            except OSError:
                continue
            for child in children:
                seen += 1
                kind = slmkit_kind(child)
                if kind:
                    found.append((kind, child))
                else:
                    below.append(child)
            if seen > _DESCRIBE_ENTRIES:
                break
        level = below
    if found:
        shown = ", ".join(f"{kind} at {path.relative_to(target)}" for kind, path in found[:3])
        return f"holds {shown}" + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"holds {len(names)} entr{'y' if len(names) == 1 else 'ies'} ({shown})"


# -- errors of writing an output ------------------------------------------------------------------
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _concerns(error: OSError, target: Path) -> bool:
    """Whether a permission error is about `target`: its own path, a folder above it, a temporary name
    beside it (".NAME...") or a file in one; not, say, a source file that cannot be read."""
    if error.filename is None:
        return True
    path = Path(os.path.abspath(error.filename))
    target = Path(os.path.abspath(target))
    temporary = any(p.parent == target.parent and p.name.startswith(f".{target.name}.") for p in (path, *path.parents))
    return path == target or path in target.parents or target in path.parents or temporary


@contextlib.contextmanager
def output_errors(target: str | os.PathLike, what: str, flag: str = "--out", needed: str | None = None):
    """Turn an OSError of writing `what` (e.g. "the dataset") to `target` into one SlmError line: the
    path, what was needed and what to do. A full disk (ENOSPC, EDQUOT, EFBIG) anywhere in the block;
    a read-only or forbidden location (EROFS, EACCES, EPERM) when the error names `target`, a folder
    above it or a temporary name beside it. Other errors pass unchanged. `flag`: how the user names
    the output, for the fix; `needed`: about how much space `what` takes, when known ("about 40 MB").
    Writes are atomic, so the message can say that `target` was left as it was."""
    target = Path(target).expanduser()
    try:
        yield
    except OSError as error:
        if error.errno in _NO_SPACE:
            need = f"; {what} needs {needed}" if needed else ""
            raise SlmError(f"cannot write {what} to {target}: no space left on the device ({error.strerror}{need}); "
                           f"free some space or choose another {flag}; {target} was left as it was") from None
        if error.errno in _NOT_WRITABLE and _concerns(error, target):
            where = error.filename or target
            raise SlmError(f"cannot write {what} to {target}: {where} is not writable ({error.strerror}); "
                           f"writing needs a folder you may write to: choose another {flag} or fix the "
                           f"permissions; {target} was left as it was") from None
        raise


def megabytes(n_bytes: float) -> str:
    """"about 12.3 MB" (decimal megabytes), for messages."""
    return f"about {n_bytes / 1e6:,.1f} MB"


def format_number(value, digits: int = 4) -> str:
    """`value` with thousands separators and `digits` decimals; "n/a" for None, NaN or infinity."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def format_duration(seconds: float | None) -> str:
    """Seconds as "4m 05s" or "1h 02m 03s"; "n/a" for None."""
    if seconds is None:
        return "n/a"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
