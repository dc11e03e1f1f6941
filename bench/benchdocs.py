"""docs/benchmarks.md: each bench script owns one "## " section and replaces only that one."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slmkit.utils import write_text_atomic  # noqa: E402

BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"


def write_section(section: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the section whose heading is `section`'s first line (up to the next "## " heading),
    or append it; every other section is kept. Written atomically."""
    heading = section.splitlines()[0].strip()
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\nFigures measured by the scripts in bench/.\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        rest = "".join(lines[end:])
        new = "".join(lines[:start]) + section.rstrip("\n") + "\n" + ("\n" + rest if rest else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, new.rstrip("\n") + "\n")
