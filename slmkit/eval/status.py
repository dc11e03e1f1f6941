"""`slm status`: every training run under a directory, what state it is in and how far it got.

    from slmkit.eval.status import run_status, format_status
    print(format_status(run_status("runs")))

Read from each run directory (slmkit.rundir): metrics.jsonl's events, checkpoints/, and the run lock
`.NAME.lock` beside the run, which holds its owner's PID and host while a process trains it. The
state:

    running   a live process holds the run's lock
    finished  the last session ended with an `end` event (max steps, max tokens or time budget)
    stopped   the last session was interrupted (Ctrl-C, SIGTERM, request_stop): a checkpoint was
              saved and `slm train --resume RUN` continues it
    failed    the last session stopped on an error (a `stopped` event, with its reason), or ended with
              no final event at all (the process was killed or crashed)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.rundir import (
    METRICS_FILE,
    RUN_CONFIG,
    RUN_FORMAT,
    RunLock,
    lock_owner_alive,
    read_metrics,
    run_checkpoints,
)

SESSION_EVENTS = ("start", "resume", "end", "interrupted", "stopped")  # the bookkeeping that decides the state
STATES = ("running", "finished", "stopped", "failed")


@dataclass
class RunStatus:
    """One run: its state and why, the step and tokens reached, the best validation figures (nats
    per token, bits per byte), the newest checkpoint, every checkpoint the run holds and when the run
    last changed (seconds since the epoch)."""

    run: str
    state: str  # one of STATES
    reason: str  # why it finished, stopped or failed; who runs it
    step: int
    tokens: int
    best_val_loss: float | None
    best_val_bpb: float | None
    last_checkpoint: str | None  # e.g. "last (step 400)"
    updated: float
    checkpoints: dict[str, int | None] = field(default_factory=dict)  # name -> step, every one: step-N, best, last, ema, average-*

    def to_dict(self) -> dict:
        return {**asdict(self), "updated": _when(self.updated)}


def find_runs(directory: str | os.PathLike) -> list[Path]:
    """Run directories at or under `directory` (a run's own folders are not searched), sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SlmError(f"{directory} not found; give the directory your runs are in (slm train --out's parent)")
    runs = []
    for root, folders, _ in os.walk(directory):
        if _is_run(Path(root)):
            runs.append(Path(root))
            folders.clear()
        else:
            folders[:] = sorted(f for f in folders if not f.startswith("."))
    return sorted(runs)


def _is_run(path: Path) -> bool:
    try:
        return json.loads((path / RUN_CONFIG).read_text()).get("format") == RUN_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def run_status(directory: str | os.PathLike = "runs") -> list[RunStatus]:
    """The status of every run at or under `directory` (default runs/). SlmError when the directory
    does not exist."""
    return [status_of(run) for run in find_runs(directory)]


def status_of(run_dir: str | os.PathLike) -> RunStatus:
    """The status of one run directory."""
    run_dir = Path(run_dir)
    events = read_metrics(run_dir)
    lock = RunLock(run_dir)
    owner = _lock_owner(lock.path)
    session = [e for e in events if e.get("event") in SESSION_EVENTS]
    last = session[-1] if session else {}
    if owner is not None and lock_owner_alive(owner):
        state, reason = "running", f"process {owner.get('pid')} on {owner.get('host')}"
    elif last.get("event") == "end":
        state, reason = "finished", last.get("reason", "")
    elif last.get("event") == "interrupted":
        state, reason = "stopped", f"{last.get('reason') or 'interrupted'}; continue with slm train --resume {run_dir}"
    elif last.get("event") == "stopped":
        state, reason = "failed", last.get("reason", "")
    else:
        left = f" (its lock, left by process {owner.get('pid')}, is stale)" if owner else ""
        state = "failed"
        reason = ("ended with no final event: the process was killed or crashed" + left) if events else \
            "no events: it stopped before its first step"
    evals = [e for e in events if e.get("event") == "eval" and e.get("val_loss") is not None]
    best = min(evals, key=lambda e: e["val_loss"], default=None)
    with_tokens = [e for e in events if isinstance(e.get("tokens"), int)]
    files = [run_dir / METRICS_FILE, run_dir / RUN_CONFIG, lock.path]
    updated = max((path.stat().st_mtime for path in files if path.exists()), default=0.0)
    return RunStatus(str(run_dir), state, reason, max((int(e.get("step", 0)) for e in events), default=0),
                     with_tokens[-1]["tokens"] if with_tokens else 0,
                     best["val_loss"] if best else None, best.get("val_bpb") if best else None,
                     _last_checkpoint(run_dir), updated,
                     {name: _checkpoint_step(path) for name, path in run_checkpoints(run_dir)})


def _lock_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _checkpoint_step(path: Path) -> int | None:
    try:
        step = json.loads((path / "config.json").read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def _last_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint, "NAME (step N)": last/ where it is the newest (what --resume reads)."""
    preference = {"last": 2, "best": 1}  # of checkpoints of one step: last/, then best/, then step-N
    found = []
    for name, path in run_checkpoints(run_dir):
        step = _checkpoint_step(path)
        if step is not None and (name in preference or name.startswith("step-")):
            found.append((step, preference.get(name, 0), name))
    if not found:
        return None
    step, _, name = max(found)
    return f"{name} (step {step:,})"


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else ""


def format_status(statuses: list[RunStatus], directory: str | os.PathLike = "runs") -> str:
    """A markdown table of the runs, one line each."""
    if not statuses:
        return f"no runs under {directory}"
    lines = ["| run | state | step | tokens | best val loss | best val bpb | last checkpoint | checkpoints | updated "
             "| why |",
             "|---|---|---:|---:|---:|---:|---|---|---|---|"]
    for s in statuses:
        loss = "" if s.best_val_loss is None else f"{s.best_val_loss:.4f}"
        bpb = "" if s.best_val_bpb is None else f"{s.best_val_bpb:.4f}"
        names = ", ".join(s.checkpoints)
        lines.append(f"| {s.run} | {s.state} | {s.step:,} | {s.tokens:,} | {loss} | {bpb} | {s.last_checkpoint or ''} "
                     f"| {names} | {_when(s.updated)} | {s.reason} |")
    return "\n".join(lines)
