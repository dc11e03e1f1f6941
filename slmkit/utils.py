"""Small helpers shared by every layer: strict dataclass construction and atomic directory swaps."""

from __future__ import annotations

import dataclasses
import difflib
import os
import shutil
from pathlib import Path

from slmkit.errors import SlmError


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


def replace_dir(new: Path, target: Path) -> None:
    """Move the finished directory `new` to `target`, replacing any old one only once `new` is complete."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
