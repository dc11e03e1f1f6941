"""What a run records: metrics.jsonl (one JSON object per event), TensorBoard and W&B when
installed, and the honest-number warnings.

Events in metrics.jsonl (every one has "event", "step" and "time", seconds since the run began):
- train: loss (nats, mean over the step's tokens on all processes), lr (peak AdamW group), tokens
  (seen so far, all processes), tokens_per_s, mfu (fraction of peak, or null), grad_norm;
- eval: val_loss, val_ppl, val_bpb, train_loss, train_ppl, train_bpb (on fixed samples);
- threads: threads, previous, other_cpus (train.threads = "auto" changed the CPU thread count);
- warning: kind, message; start / resume / end / interrupted / skipped_step: bookkeeping (start and
  resume carry the thread count in use).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict]:
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


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop events after `last_step` (logged after the checkpoint a resume starts from), atomically."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [e for e in read_metrics(run_dir) if e.get("step", 0) <= last_step]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".metrics.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        for event in kept:
            handle.write(json.dumps(event) + "\n")
    os.replace(tmp, path)


class MetricsLogger:
    """Appends events to metrics.jsonl and mirrors scalars to TensorBoard / W&B where installed."""

    def __init__(self, run_dir: Path, use_tensorboard: bool = True, use_wandb: bool = True,
                 run_name: str = "", config: dict | None = None, time_offset: float = 0.0):
        self.run_dir = Path(run_dir)
        self.start = time.time() - time_offset
        self._file = open(self.run_dir / METRICS_FILE, "a")  # noqa: SIM115 - held open for the run
        self._tensorboard = None
        self._wandb = None
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                pass
        if use_wandb:
            try:
                import wandb

                os.environ.setdefault("WANDB_MODE", "offline")
                self._wandb = wandb.init(project="slmkit", name=run_name or self.run_dir.name,
                                         dir=str(self.run_dir), config=config or {}, resume="allow")
            except ImportError:
                pass

    def log(self, event: str, step: int, **values) -> dict:
        record = {"event": event, "step": step, **values, "time": round(time.time() - self.start, 3)}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v)}
        if self._tensorboard is not None and event in ("train", "eval"):
            for key, value in scalars.items():
                self._tensorboard.add_scalar(f"{event}/{key}", value, step)
        if self._wandb is not None and event in ("train", "eval"):
            self._wandb.log({f"{event}/{k}": v for k, v in scalars.items()}, step=step)
        return record

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


# -- honest numbers ---------------------------------------------------------------------------------

GAP_MIN_NATS = 0.1  # a gap smaller than this is noise, however it moves
GAP_WIDENING_EVALS = 3  # consecutive widenings before warning
NEAR_ZERO_LOSS = 0.05  # nats: perplexity below about 1.05


def honesty_warnings(evals: list[dict], already: set[str] | None = None) -> list[tuple[str, str]]:
    """(kind, message) for each suspicious pattern in the eval events so far, skipping kinds in
    `already` (each kind is raised once per run).

    - gap_widening: val - train loss grew at each of the last 3 evaluations and exceeds 0.1 nats
      (the model is memorising its training data);
    - val_below_train: validation loss well below training loss (leakage, or a val split easier than train);
    - near_zero_loss: a loss under 0.05 nats, a perplexity near one (memorisation or leakage; a
      real corpus of natural language does not get there).
    """
    already = already or set()
    found = []
    if not evals:
        return found
    last = evals[-1]
    val, train = last.get("val_loss"), last.get("train_loss")
    step = last.get("step")
    gaps = [e["val_loss"] - e["train_loss"] for e in evals
            if e.get("val_loss") is not None and e.get("train_loss") is not None]
    if "gap_widening" not in already and len(gaps) > GAP_WIDENING_EVALS:
        recent = gaps[-(GAP_WIDENING_EVALS + 1):]
        if all(b > a for a, b in zip(recent, recent[1:])) and recent[-1] > GAP_MIN_NATS:
            found.append(("gap_widening",
                          f"step {step}: the train/val gap widened at {GAP_WIDENING_EVALS} evaluations in a row "
                          f"(now {recent[-1]:.3f} nats: val {val:.3f}, train {train:.3f}); the model is "
                          f"memorising its training data. Use more data, fewer steps, dropout or a smaller model; "
                          f"the best checkpoint is the one to keep"))
    if "val_below_train" not in already and val is not None and train is not None \
            and val < train - max(GAP_MIN_NATS, 0.05 * train):
        found.append(("val_below_train",
                      f"step {step}: validation loss {val:.3f} is well below training loss {train:.3f}; check the "
                      f"split for leakage (documents in both splits) or a validation set easier than training"))
    if "near_zero_loss" not in already:
        low = [(name, value) for name, value in (("validation", val), ("training", train))
               if value is not None and value < NEAR_ZERO_LOSS]
        if low:
            name, value = low[0]
            found.append(("near_zero_loss",
                          f"step {step}: {name} loss {value:.4f} (perplexity {math.exp(value):.3f}) is near zero; "
                          f"a language model of real text does not get there: the data is memorised or leaks "
                          f"between splits, so these numbers do not measure generalisation"))
    return found
