"""Small helpers shared by every layer: option fields, strict dataclass construction, CPU counting and
atomic writes.

Every file or directory a later command trusts is written here: to a temporary name beside its
target, then renamed into place, so an interrupted command never leaves half of one behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

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


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (all the machine's where there is no such mask). Here rather
    than in slmkit.runtime, which imports torch: prepare counts CPUs without loading torch (about 2 s)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write; on success it is renamed to `path` (an ordinary
    0644 file), on any error it is deleted and `path` is left as it was."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes files private; these are ordinary shared files
        os.replace(tmp, path)
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
    """A fresh temporary directory beside `target` to fill; on success it replaces `target` in one
    rename, on any error it is deleted and `target` is left as it was.

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
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
