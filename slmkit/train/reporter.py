"""What a run reports: the console line, metrics.jsonl (one JSON object per event), and TensorBoard
and W&B where installed.

Events in metrics.jsonl (every one has "event", "step" and "time", seconds since the run began):
- train: loss (nats, mean over the step's tokens on all processes), lr (the AdamW groups' rate),
  muon_lr (the Muon group's rate, with train.optimizer = muon), tokens (seen so far, all processes),
  tokens_per_s, mfu (fraction of peak, or null), grad_norm;
- eval: val_loss, val_ppl, val_bpb, train_loss, train_ppl, train_bpb (on fixed samples); with
  train.ema_decay also ema_val_loss, ema_val_ppl, ema_val_bpb, ema_train_loss, ... (the weights' EMA);
- threads: threads, previous, other_cpus (train.threads = "auto" changed the CPU thread count);
- warning: kind, message; start / resume / end / interrupted / stopped / skipped_step: bookkeeping
  (start and resume carry the thread count in use).
Only the main process reports; on the others every method does nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.rundir import METRICS_FILE
from slmkit.train.guards import write_error


class MetricsLogger:
    """Appends events to metrics.jsonl and mirrors scalars to TensorBoard / W&B where installed."""

    def __init__(self, run_dir: Path, use_tensorboard: bool = True, use_wandb: bool = True,
                 run_name: str = "", config: dict | None = None, time_offset: float = 0.0):
        self.run_dir = Path(run_dir)
        self.start = time.time() - time_offset
        try:
            self._file = open(self.run_dir / METRICS_FILE, "a")  # noqa: SIM115 - held open for the run
        except OSError as error:
            raise write_error(error, f"{self.run_dir / METRICS_FILE}") or error from None
        self._tensorboard = None
        self._wandb = None
        self.missing: list[str] = []  # loggers that are on but not installed
        if use_tensorboard:
            try:  # optional (the `loggers` extra), and slow to import: only when asked for
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                self.missing.append("tensorboard")
        if use_wandb:
            try:  # optional (the `loggers` extra)
                import wandb

                os.environ.setdefault("WANDB_MODE", "offline")
                self._wandb = wandb.init(project="slmkit", name=run_name or self.run_dir.name,
                                         dir=str(self.run_dir), config=config or {}, resume="allow")
            except ImportError:
                self.missing.append("wandb")

    def log(self, event: str, step: int, **values) -> dict:
        record = {"event": event, "step": step, **values, "time": round(time.time() - self.start, 3)}
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as error:
            raise write_error(error, f"{self.run_dir / METRICS_FILE}") or error from None
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v)}
        if self._tensorboard is not None and event in ("train", "eval"):
            for key, value in scalars.items():
                self._tensorboard.add_scalar(f"{event}/{key}", value, step)
        if self._wandb is not None and event in ("train", "eval"):
            self._wandb.log({f"{event}/{k}": v for k, v in scalars.items()}, step=step)
        return record

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a full disk: what could be written was, and the error was reported
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


class Reporter:
    """The run's voice: prints to the console (a live progress line on a terminal), logs events.

    tokens/s counts training time only: `pause()` restarts the measuring window after an
    evaluation or a checkpoint. MFU is tokens/s x FLOPs per token over peak x processes.
    """

    def __init__(self, is_main: bool, quiet: bool, flops_per_token: float, peak_flops: float | None,
                 world_size: int = 1):
        self.active = is_main
        self.quiet = quiet or not is_main
        self.live = not self.quiet and sys.stderr.isatty()  # redraw the progress line in place
        self.flops_per_token, self.peak_flops, self.world_size = flops_per_token, peak_flops, world_size
        self.logger: MetricsLogger | None = None
        self._stop_logged = False
        self._line_shown = False
        self._window_start, self._window_tokens = time.time(), 0
        self._eta_start, self._eta_step = time.time(), 0  # ETA is measured from the session's first step on

    def open(self, run_dir: Path, tensorboard: bool, wandb: bool, run_config: dict, time_offset: float) -> None:
        """Start logging to the run directory (main process only)."""
        if self.active:
            self.logger = MetricsLogger(run_dir, tensorboard, wandb, run_dir.name, run_config, time_offset)
            for name in self.logger.missing:
                self.print(f"note: train.{name} is on but the {name} package is not installed, so nothing is sent "
                           f"to it; install it (pip install 'slmkit[loggers]') or --set train.{name}=false")

    def close(self) -> None:
        if self._line_shown:
            sys.stderr.write("\n")
            self._line_shown = False
        if self.logger is not None:
            self.logger.close()
            self.logger = None

    def log(self, event: str, step: int, **values) -> None:
        if self.logger is not None:
            self.logger.log(event, step, **values)

    def stopped(self, step: int, reason: str) -> None:
        """Log a `stopped` event (once), if it can still be written: the run ends on an error."""
        if self.logger is not None and not self._stop_logged:
            self._stop_logged = True
            with contextlib.suppress(OSError, SlmError):  # the disk that stopped the run may refuse this too
                self.logger.log("stopped", step, reason=reason)

    def print(self, text: str) -> None:
        if self.quiet:
            return
        if self._line_shown:
            sys.stderr.write("\r\x1b[K")  # clear the progress line; the next update redraws it
            sys.stderr.flush()
        print(text, flush=True)

    def started(self, run, parameters: int, setup, world_size: int, threads: int,
                dataset_warnings: list[str]) -> None:
        """A new run begins: the start event, one line saying what trains where, and the dataset's
        own warnings (prepare's leak and health checks)."""
        self.log("start", 0, parameters=parameters, device=setup.description, precision=setup.precision,
                 world_size=world_size, tokens_per_step=run.tokens_per_step, threads=threads)
        train = run.train
        length = f"time budget {train.time_budget:g} s" if train.time_budget else f"{train.max_steps:,} steps"
        processes = f" x {world_size} processes" if world_size > 1 else ""
        self.print(f"training {run.model.name or 'a model'} ({parameters:,} parameters) on {setup.description} in "
                   f"{setup.precision}{processes}: {run.tokens_per_step:,} tokens per step, {length}; "
                   f"run directory {run.run_dir}")
        for message in dataset_warnings:
            self.warning(0, "dataset", f"dataset {run.data_dir.name}: {message}")

    def warning(self, step: int, kind: str, message: str) -> None:
        self.log("warning", step, kind=kind, message=message)
        self.print(f"warning: {message}")

    # -- the loop -------------------------------------------------------------------------------
    def session_started(self, step: int, tokens: int) -> None:
        """The loop starts (or resumes) at `step`: reset the clocks that rates and ETA use."""
        self._window_start, self._window_tokens = time.time(), tokens
        self._eta_start, self._eta_step = None, step

    def first_step_done(self, step: int) -> None:
        """The session's first step is done: the ETA counts from here, leaving out the start-up and
        compilation that the first step carries."""
        self._eta_start, self._eta_step = time.time(), step

    def pause(self, tokens: int) -> None:
        """Restart the throughput window (after time spent on something other than training)."""
        self._window_start, self._window_tokens = time.time(), tokens

    def train_step(self, step: int, tokens: int, loss: float, rates: dict[str, float], grad_norm: float,
                   max_steps: int, time_budget: float | None, elapsed: float) -> None:
        """Log a train event and redraw the progress line; `rates` is {"lr": ..., ["muon_lr": ...]}."""
        now = time.time()
        rate = (tokens - self._window_tokens) / max(now - self._window_start, 1e-9)
        mfu = rate * self.flops_per_token / (self.peak_flops * self.world_size) if self.peak_flops else None
        self.log("train", step, loss=loss, **rates, tokens=tokens, tokens_per_s=round(rate, 1),
                 mfu=None if mfu is None else round(mfu, 4), grad_norm=grad_norm)
        self._window_start, self._window_tokens = now, tokens
        if self.quiet:
            return
        eta = None
        if self._eta_start is not None and step > self._eta_step:
            eta = (max_steps - step) * (now - self._eta_start) / (step - self._eta_step)
        if time_budget:
            eta = max(0.0, time_budget - elapsed) if eta is None else min(eta, max(0.0, time_budget - elapsed))
        mfu_text = f" mfu {100 * mfu:.1f}%" if mfu is not None else ""
        of = "" if time_budget else f"/{max_steps}"
        eta_text = "eta -" if eta is None else f"eta {eta / 60:.1f} min"
        text = f"step {step}{of} loss {loss:.4f} lr {rates['lr']:.2e} {rate:,.0f} tok/s{mfu_text} {eta_text}"
        if self.live:
            sys.stderr.write("\r\x1b[K" + text)
            sys.stderr.flush()
            self._line_shown = True
        else:
            print(text, flush=True)

    def evaluation(self, record: dict, improved: bool) -> None:
        self.log("eval", **record, best=improved)
        bpb = f", bpb {record['val_bpb']:.3f}" if record["val_bpb"] is not None else ""
        ema = ""
        if record.get("ema_val_loss") is not None:
            ema_bpb = f", bpb {record['ema_val_bpb']:.3f}" if record.get("ema_val_bpb") is not None else ""
            ema = f"; EMA val loss {record['ema_val_loss']:.4f} (ppl {record['ema_val_ppl']:.2f}{ema_bpb})"
        self.print(f"step {record['step']}: val loss {record['val_loss']:.4f} (ppl {record['val_ppl']:.2f}{bpb}), "
                   f"train loss {record['train_loss']:.4f}" + (" *best*" if improved else "") + ema)

    def threads_changed(self, step: int, change) -> None:
        self.print(f"threads: {change.previous} -> {change.threads} (other processes are using "
                   f"{change.other_cpus:.1f} CPU)")
        self.log("threads", step, threads=change.threads, previous=change.previous,
                 other_cpus=round(change.other_cpus, 2))

    def skipped_step(self, step: int, reason: str) -> None:
        self.log("skipped_step", step, reason=reason)
        if not self.quiet:
            print(f"warning: {reason} at step {step}; step skipped", file=sys.stderr)
