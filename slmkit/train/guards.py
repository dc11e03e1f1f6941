"""What may stop a run early: a non-finite loss or gradient (train.nan_policy), a stop request
(Ctrl-C, SIGTERM, or `Trainer.request_stop()`), which ends the run after the current step with a
checkpoint saved, and a batch that does not fit in memory."""

from __future__ import annotations

import errno
import signal
import sys
import threading
from pathlib import Path

import torch

from slmkit.errors import SlmError

NAN_HINT = ("lower train.lr, raise train.warmup_steps, keep train.grad_clip on, or use precision fp32/bf16 "
            "instead of fp16")


class NonFiniteGuard:
    """train.nan_policy: "stop" stops at the first non-finite step; "skip" skips up to
    `max_skipped` such steps in a row, then stops."""

    def __init__(self, policy: str, max_skipped: int, skipped_in_a_row: int = 0):
        self.policy, self.max_skipped = policy, max_skipped
        self.skipped_in_a_row = skipped_in_a_row

    def skip(self) -> bool:
        """Whether to skip the current non-finite step (counted) rather than stop."""
        if self.policy == "skip" and self.skipped_in_a_row < self.max_skipped:
            self.skipped_in_a_row += 1
            return True
        return False

    def finite_step(self) -> None:
        self.skipped_in_a_row = 0

    def stop_error(self, what: str, step: int, saved_step: int | None, newest: tuple[int, Path] | None,
                   run_dir: Path) -> SlmError:
        """The error that ends the run: what went wrong at `step`; which weights were saved
        (`saved_step`: the last finite step's, when they passed the health check) or else the newest
        healthy checkpoint; what to do."""
        skipped = f" after {self.skipped_in_a_row} skipped steps in a row" if self.policy == "skip" else ""
        skip_hint = "" if self.policy == "skip" else "; `--set train.nan_policy=skip` skips such steps instead"
        if saved_step is not None:
            kept = f"the weights of step {saved_step}, the last finite step, are saved in {run_dir / 'checkpoints' / 'last'}"
        else:
            kept = "the current weights give non-finite logits, so they were not saved"
        if newest is None:
            then = "then start again with --overwrite (no healthy checkpoint of this run exists)"
        else:
            choice = "" if newest[1].name == "last" else f" --from {newest[1].name}"
            then = (f"then continue from the newest healthy checkpoint, {newest[1]} (step {newest[0]}), with "
                    f"--resume {run_dir}{choice}")
        return SlmError(f"the {what} at step {step}{skipped}; stopped: {kept}. To fix: {NAN_HINT}"
                        f"{skip_hint}; {then}")


class StopSignals:
    """While active (a `with` block on the main thread), SIGINT and SIGTERM ask the run to stop after
    the current step; a second Ctrl-C stops at once (KeyboardInterrupt). `reason` is the request."""

    def __init__(self, announce: bool = True):
        self.reason = ""
        self.announce = announce
        self._previous: dict = {}

    def request(self, reason: str) -> None:
        self.reason = reason

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.reason and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        self.request(f"{name} received")
        if self.announce:
            print(f"\n{name}: saving a checkpoint after this step (Ctrl-C again to quit at once)", file=sys.stderr)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def out_of_memory_error(config, seq_len: int, device) -> SlmError:
    """What to lower when a training batch does not fit in memory."""
    return SlmError(f"out of memory on {device} at batch_size {config.batch_size} x seq_len {seq_len}: lower "
                    f"--set train.batch_size (raise train.grad_accum to keep the tokens per step), lower "
                    f"train.seq_len, or set train.activation_checkpointing=true")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation failure (CUDA's OutOfMemoryError, or a CPU/MPS RuntimeError)."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    if isinstance(error, oom_type):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


DISK_ADVICE = {errno.ENOSPC: "free some space (or lower train.keep_last / raise train.checkpoint_interval)",
               errno.EDQUOT: "free some space within your disk quota",
               errno.EROFS: "the file system is read-only: choose a writable location",
               errno.EACCES: "check the directory's permissions, or choose a writable location",
               errno.EPERM: "check the directory's permissions, or choose a writable location"}


def write_error(error: OSError, what: str) -> SlmError | None:
    """One line for a disk fault while writing `what` (the path, the cause, what to do), or None when
    `error` is not one a user can fix (then it is a bug and keeps its traceback)."""
    advice = DISK_ADVICE.get(error.errno)
    if advice is None:
        return None
    where = f" ({error.filename})" if error.filename else ""
    return SlmError(f"cannot write {what}{where}: {error.strerror}; {advice}; what was written before is intact")
