"""The run directory's layout, in one place: what `slm train` writes and every later stage reads.

    RUN/config.json          the fully resolved config (format "slmkit-run")
    RUN/metrics.jsonl        one JSON object per event (train, eval, warning, ...)
    RUN/tokenizer/           the dataset's tokenizer, kept with the run
    RUN/checkpoints/         step-N/, best/, last/ (each an slmkit checkpoint directory)
    RUN/report.md, plots/, samples.md
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.utils import write_text_atomic

RUN_CONFIG = "config.json"
RUN_FORMAT = "slmkit-run"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
TOKENIZER = "tokenizer"
CHECKPOINT_CONFIG = "config.json"  # the file every checkpoint directory holds
STEP_DIR = re.compile(r"^step-(\d+)$")


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether `path` looks like a run directory (it has a checkpoints/ folder)."""
    return (Path(path) / CHECKPOINTS).is_dir()


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """The config.json of a run directory; SlmError when it is not one."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise SlmError(f"{run_dir} is not an slmkit run directory (no {RUN_CONFIG})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SlmError(f"{path} is not valid JSON ({error}); the run directory is damaged") from None
    if not isinstance(config, dict) or config.get("format") != RUN_FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise SlmError(f"{path} is not an slmkit run config (format={found!r})")
    return config


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All events of a run's metrics.jsonl (a torn last line, from a crash, is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    events = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def truncate_metrics(run_dir: str | os.PathLike, last_step: int) -> None:
    """Drop events after `last_step` (logged after the checkpoint a resume starts from), atomically."""
    path = Path(run_dir) / METRICS_FILE
    if path.is_file():
        kept = [event for event in read_metrics(run_dir) if event.get("step", 0) <= last_step]
        write_text_atomic(path, "".join(json.dumps(event) + "\n" for event in kept))


def step_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, dir) of the run's complete step-N checkpoints, oldest first."""
    checkpoints = Path(run_dir) / CHECKPOINTS
    found = []
    if checkpoints.is_dir():
        for item in checkpoints.iterdir():
            match = STEP_DIR.match(item.name)
            if match and (item / CHECKPOINT_CONFIG).is_file():
                found.append((int(match.group(1)), item))
    return sorted(found)


def run_checkpoints(run_dir: str | os.PathLike) -> list[tuple[str, Path]]:
    """(name, dir) of every complete checkpoint of a run: its step-N (oldest first), best, last, ema
    (train.ema_decay) and average-* (`slm average`) when present."""
    checkpoints = Path(run_dir) / CHECKPOINTS
    found = [(f"step-{step}", path) for step, path in step_checkpoints(run_dir)]
    found += [(name, checkpoints / name) for name in ("best", "last", "ema")
              if (checkpoints / name / CHECKPOINT_CONFIG).is_file()]
    found += [(path.name, path) for path in sorted(checkpoints.glob("average-*"))
              if (path / CHECKPOINT_CONFIG).is_file()]
    return found


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """A checkpoint dir itself, or a run dir's best (else last) checkpoint."""
    path = Path(path)
    if (path / CHECKPOINT_CONFIG).is_file() and not is_run_dir(path):  # a run dir has config.json too
        return path
    for name in ("best", "last"):
        candidate = path / CHECKPOINTS / name
        if (candidate / CHECKPOINT_CONFIG).is_file():
            return candidate
    if not path.exists():
        raise SlmError(f"checkpoint not found: {path}")
    raise SlmError(f"{path} holds no slmkit checkpoint (no {CHECKPOINT_CONFIG}, no {CHECKPOINTS}/best or last)")


class RunLock:
    """One process at a time in a run directory: a lock file `.NAME.lock` beside RUN (so that
    replacing RUN with --overwrite keeps it) holding the owner's PID and host.

    `acquire()` raises SlmError when a live process holds the lock; a lock left by a process that
    is no longer running is taken over, and `acquire()` returns a line saying so (else "").
    """

    def __init__(self, run_dir: str | os.PathLike):
        run_dir = Path(run_dir).absolute()
        self.path = run_dir.parent / f".{run_dir.name}.lock"
        self.run_dir = run_dir
        self.held = False

    def acquire(self) -> str:
        try:
            return self._acquire()
        except OSError as error:  # a read-only or full location: one line, not a traceback
            raise SlmError(f"cannot lock {self.run_dir} (writing {self.path}): {error.strerror}; choose a writable "
                           f"location with free space") from None

    def _acquire(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        note = ""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and lock_owner_alive(owner):
                    raise SlmError(f"run {self.run_dir} is in use by process {owner['pid']} on {owner['host']} "
                                   f"(lock {self.path}); wait for it to finish or stop it first") from None
                who = f"process {owner['pid']}" if owner else "an unreadable lock"
                note = f"note: taking over the lock of {self.run_dir} left by {who}, which is no longer running"
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump({"pid": os.getpid(), "host": socket.gethostname()}, handle)
            self.held = True
            return note
        raise SlmError(f"cannot lock {self.run_dir}: another process keeps taking {self.path}; try again")

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
        except (OSError, ValueError):
            return None


def lock_owner_alive(owner: dict) -> bool:
    """Whether the lock's owner still runs (a lock from another host is taken as alive)."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
