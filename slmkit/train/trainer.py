"""The training loop: a dataset directory and two configs in, a run directory out.

`Trainer` orchestrates components that each own one concern (device.py, optim.py, schedule.py,
checkpointing.py, metrics.py, distributed.py); this file holds only the order of things:
check the inputs, set up, loop (accumulate, clip, step, log, evaluate, checkpoint), finish.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from slmkit import runtime
from slmkit.errors import SlmError
from slmkit.model.config import ModelConfig
from slmkit.model.stats import model_stats
from slmkit.train import checkpointing as ckpt
from slmkit.train import distributed as dist_utils
from slmkit.train.config import TrainConfig
from slmkit.train.data import open_training_data, split_bytes_per_token
from slmkit.train.device import compile_model, peak_flops, pick_device, setup_device
from slmkit.train.loss import language_model_loss
from slmkit.train.metrics import MetricsLogger, honesty_warnings, read_metrics, truncate_metrics
from slmkit.train.optim import build_optimizer
from slmkit.train.schedule import lr_factor, set_learning_rate

RUN_CONFIG = "config.json"
RUN_FORMAT = "slmkit-run"


@dataclass
class TrainResult:
    """What a run did. Losses in nats; times in seconds."""

    run_dir: Path
    step: int = 0
    tokens: int = 0
    final_eval: dict | None = None
    best_val_loss: float | None = None
    interrupted: bool = False  # stopped by Ctrl-C, SIGTERM or request_stop(), with a checkpoint saved
    stop_reason: str = ""
    wall_time: float = 0.0
    warnings: list[str] = field(default_factory=list)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` through a temporary file and a rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; run files are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_run_config(run_dir: str | Path) -> dict:
    """The config.json of a run directory; SlmError when it is not one."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise SlmError(f"{run_dir} is not an slmkit run directory (no {RUN_CONFIG})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SlmError(f"{path} is not valid JSON ({error}); the run directory is damaged") from None
    if config.get("format") != RUN_FORMAT:
        raise SlmError(f"{path} is not an slmkit run config (format={config.get('format')!r})")
    return config


def free_run_dir(out: str | Path) -> Path:
    """`out` itself when unused, else out-2, out-3, ... (never an existing run)."""
    out = Path(out)
    if not out.exists() or not any(out.iterdir()):
        return out
    index = 2
    while Path(f"{out}-{index}").exists():
        index += 1
    return Path(f"{out}-{index}")


def architecture_differences(a: ModelConfig, b: ModelConfig) -> list[str]:
    """Fields that make two model configs different networks (name, dropout and notes aside)."""
    ignore = {"name", "dropout", "extra"}
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} vs {db[k]!r}" for k in da if k not in ignore and da[k] != db.get(k)]


def _out_of_memory_message(config: TrainConfig, seq_len: int, device) -> str:
    return (f"out of memory on {device} at batch_size {config.batch_size} x seq_len {seq_len}: lower "
            f"--set train.batch_size (raise train.grad_accum to keep the tokens per step), lower "
            f"train.seq_len, or set train.activation_checkpointing=true")


def _is_out_of_memory(error: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    if isinstance(error, oom_type):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class Trainer:
    """One training run. Build it (which checks every input before touching the disk), then `run()`.

    data_dir: a prepared dataset directory. run_dir: where the run is written. resume: continue the
    run in run_dir exactly (model_config must match it, or be None). init_from: a checkpoint or run
    dir whose weights start a new run (the optimizer starts fresh). on_step(trainer) is called after
    every optimizer step (tests use it to stop a run; `request_stop()` is the same path as Ctrl-C).
    Raises SlmError for any input it cannot use, before writing anything.
    """

    def __init__(self, data_dir: str | Path | None, run_dir: str | Path, model_config: ModelConfig | None,
                 train_config: TrainConfig, *, resume: bool = False, init_from: str | Path | None = None,
                 overwrite: bool = False, quiet: bool = False,
                 on_step: Callable[[Trainer], None] | None = None):
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.quiet = quiet
        self.on_step = on_step
        self._stop_requested = ""
        self._live_line = False  # a progress line is on the terminal, to clear before printing
        self.dist = dist_utils.init_distributed(train_config.device)
        self.is_main = self.dist.is_main

        saved = read_run_config(self.run_dir) if resume else None
        self.saved_init_from = saved.get("init_from") if saved else None  # kept across resumes
        if resume and data_dir is None:
            data_dir = saved["data"]["path"]
        if data_dir is None:
            raise SlmError("no dataset given: pass --data DIR (a directory made by `slm prepare`)")
        self.data_dir = Path(data_dir).resolve()

        # -- model config: from the run (resume), a checkpoint (init_from), or as given ----------
        self.init_state = None
        self.init_from = None
        if resume:
            saved_model = ModelConfig.from_dict(saved["model"], where=str(self.run_dir / RUN_CONFIG)).validate()
            if model_config is not None:
                differences = architecture_differences(saved_model, model_config)
                if differences:
                    raise SlmError(f"cannot resume {self.run_dir} with a different model config "
                                   f"({'; '.join(differences[:4])}); drop the model overrides, or start a new "
                                   f"run with --init-from {self.run_dir}")
            model_config = saved_model
        elif init_from is not None:
            from slmkit.model.checkpoint import load_state, resolve_checkpoint_dir

            self.init_from = resolve_checkpoint_dir(init_from)
            source_config, state, _ = load_state(self.init_from)
            if model_config is not None:
                differences = architecture_differences(source_config, model_config)
                if differences:
                    raise SlmError(f"--init-from {init_from}: its model differs from the config given "
                                   f"({'; '.join(differences[:4])}); drop the model settings to use the "
                                   f"checkpoint's own")
            model_config = source_config
            self.init_state = state
        if model_config is None:
            raise SlmError("no model given: name a preset (--preset, see `slm presets`) or a config file (--config)")
        if train_config.dropout is not None:
            model_config = model_config.replace(dropout=float(train_config.dropout))
        self.model_config = model_config.validate()

        # -- data and shapes --------------------------------------------------------------------
        config = train_config.validate()
        self.seq_len = config.seq_len or self.model_config.context_length
        if self.seq_len > self.model_config.context_length:
            raise SlmError(f"train.seq_len = {self.seq_len} exceeds the model context "
                           f"{self.model_config.context_length}; lower train.seq_len or raise "
                           f"--set context_length={self.seq_len}")
        self.data = open_training_data(self.data_dir, self.seq_len)
        data_vocab = int(self.data.meta["vocab_size"])
        if data_vocab != self.model_config.vocab_size:
            raise SlmError(f"the dataset's tokenizer has {data_vocab:,} tokens but the model's vocab_size is "
                           f"{self.model_config.vocab_size:,}; add --set vocab_size={data_vocab} (or prepare the "
                           f"data with a tokenizer of {self.model_config.vocab_size:,} tokens)")
        per_micro = config.batch_size * self.seq_len * self.dist.world_size
        if config.tokens_per_step:
            if config.tokens_per_step % per_micro:
                raise SlmError(f"train.tokens_per_step = {config.tokens_per_step} is not a multiple of batch_size x "
                               f"seq_len x processes = {per_micro}; use a multiple, e.g. "
                               f"{max(1, round(config.tokens_per_step / per_micro)) * per_micro}")
            config = config.replace(grad_accum=config.tokens_per_step // per_micro)
        self.tokens_per_step = per_micro * config.grad_accum
        if config.max_tokens:
            config = config.replace(max_steps=max(1, math.ceil(config.max_tokens / self.tokens_per_step)))
        if config.optimizer == "muon" and config.parallelism == "fsdp" and self.dist.enabled:
            raise SlmError("train.optimizer = 'muon' with parallelism = 'fsdp' is not supported; use ddp or adamw")
        self.config = config

        # -- the run directory: checked on every process before any process writes ---------------
        if resume:
            self.resume_dir = self._resume_checkpoint()
        elif self.run_dir.exists() and any(self.run_dir.iterdir()) and not overwrite:
            raise SlmError(f"run directory {self.run_dir} already exists; pass --overwrite to replace it, "
                           f"or --resume {self.run_dir} to continue it")
        dist_utils.barrier(self.dist)
        self.overwrite = overwrite

    # -- set-up ---------------------------------------------------------------------------------
    def _resume_checkpoint(self) -> Path:
        checkpoints = self.run_dir / "checkpoints"
        last = checkpoints / "last"
        if (last / ckpt.STATE_FILE).is_file():
            return last
        steps = ckpt.step_checkpoints(checkpoints)
        if steps:
            return steps[-1][1]
        raise SlmError(f"{self.run_dir} has no checkpoint to resume from (checkpoints/last is missing); "
                       f"start it again with --overwrite")

    def _build(self) -> None:
        from slmkit.model.transformer import Transformer

        config = self.config
        runtime.tune_allocator()
        self.thread_governor = self._configure_threads()
        self.setup = setup_device(config.device, config.precision, self.dist.local_rank)
        torch.manual_seed(config.seed)  # the same initial weights on every process
        np.random.seed(config.seed)
        random.seed(config.seed)
        model = Transformer(self.model_config)
        if self.init_state is not None:
            from slmkit.model.checkpoint import load_weights

            load_weights(model, self.init_state, str(self.init_from))
            self.init_state = None
        model.set_activation_checkpointing(config.activation_checkpointing)
        self.model = model.to(self.setup.device)
        self.model.train()
        self.compiled = compile_model(self.model, config.compile)
        self.wrapped = dist_utils.wrap_model(self.compiled, self.dist, self.setup.device, config.parallelism)
        self.optimizer = build_optimizer(self.model, config, self.setup.device.type)
        self.scaler = torch.amp.GradScaler("cuda") if self.setup.needs_grad_scaler else None
        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0  # training seconds before this process started (resume)
        self.best_val_loss = math.inf
        self.skipped_in_a_row = 0
        self.warned: set[str] = set()
        self.evals: list[dict] = []
        self.flops_per_token = model_stats(self.model_config, context=self.seq_len).training_flops_per_token
        self.peak = peak_flops(self.setup, config.peak_tflops)
        self.bytes_per_token = {split: split_bytes_per_token(self.data.meta, split) for split in ("train", "val")}
        # Last, so nothing above can shift the dropout streams (distinct per process).
        torch.manual_seed(config.seed + self.dist.rank)

    def _configure_threads(self) -> runtime.ThreadGovernor | None:
        """Set the intra-op thread count (train.threads); the governor that adapts it to other
        processes' load, for "auto" in a single CPU process without OMP_NUM_THREADS, else None
        (under torchrun the count stays fixed: sibling processes are not "other" load)."""
        threads = self.config.threads
        # processes of this run on this machine share its CPUs (torchrun sets LOCAL_WORLD_SIZE)
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", self.dist.world_size)) if self.dist.enabled else 1
        runtime.configure_threads(threads, processes)
        on_cpu = pick_device(self.config.device, self.dist.local_rank).type == "cpu"
        if threads != "auto" or self.dist.enabled or not on_cpu or runtime.threads_fixed_by_environment():
            return None
        return runtime.ThreadGovernor(runtime.available_cpus(), watched=runtime.affinity_cpus())

    def _follow_cpu_load(self) -> None:
        """Under train.threads = "auto": apply the governor's new thread count, print and log it."""
        change = self.thread_governor.check()
        if change is None:
            return
        self._print(f"threads: {change.previous} -> {change.threads} (other processes are using "
                    f"{change.other_cpus:.1f} CPU)")
        if self.logger is not None:
            self.logger.log("threads", self.step, threads=change.threads, previous=change.previous,
                            other_cpus=round(change.other_cpus, 2))

    def _prepare_run_dir(self) -> None:
        if self.is_main:
            if self.resume:
                truncate_metrics(self.run_dir, self.step)
            else:
                if self.run_dir.exists() and self.overwrite:
                    shutil.rmtree(self.run_dir)
                self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_dir / RUN_CONFIG, self.run_config())
            self._copy_tokenizer()
        dist_utils.barrier(self.dist)

    def _copy_tokenizer(self) -> None:
        """Keep the dataset's tokenizer with the run (and in each checkpoint), so a checkpoint can
        encode and decode text on its own."""
        target = self.run_dir / "tokenizer"
        if target.exists():
            return
        try:
            tokenizer = self.data.tokenizer
        except (SlmError, OSError, KeyError, ValueError):  # a dataset without tokenizer files
            return
        if tokenizer is not None:
            tokenizer.save(target)

    def run_config(self) -> dict:
        """The fully resolved configuration, as saved in the run directory's config.json."""
        meta = self.data.meta
        from slmkit import __version__

        return {
            "format": RUN_FORMAT, "version": 1, "slmkit_version": __version__,
            "model": self.model_config.to_dict(),
            "train": self.config.to_dict(),
            "data": {"path": str(self.data_dir), "vocab_size": meta.get("vocab_size"),
                     "tokenizer": meta.get("tokenizer"), "splits": meta.get("splits")},
            "init_from": str(self.init_from) if self.init_from else self.saved_init_from,
            "parameters": self.model.num_parameters(),
            "seq_len": self.seq_len,
            "tokens_per_step": self.tokens_per_step,
            "world_size": self.dist.world_size,
            "parallelism": self.config.parallelism if self.dist.enabled else None,
            "device": self.setup.description,
            "precision": self.setup.precision,
            "compile": self.config.compile,
            "flops_per_token": self.flops_per_token,
            "peak_flops": self.peak,
        }

    def _load_resume_state(self) -> None:
        from slmkit.model.checkpoint import load_state, load_weights

        config, tensors, meta = load_state(self.resume_dir)
        differences = architecture_differences(config, self.model_config)
        if differences:
            raise SlmError(f"checkpoint {self.resume_dir} does not match the run's model config "
                           f"({'; '.join(differences[:4])})")
        state = ckpt.load_training_state(self.resume_dir)
        configured = [group["initial_lr"] for group in self.optimizer.param_groups]
        if self.sharded:
            ckpt.restore_full_state(self.model, self.optimizer, tensors, state["optimizer"])
        elif state["optimizer"].get("full_state_dict"):
            raise SlmError(f"{self.resume_dir} was saved by an FSDP run; resume it under torchrun with "
                           f"train.parallelism=fsdp")
        else:
            load_weights(self.model, tensors, str(self.resume_dir))
            self.optimizer.load_state_dict(state["optimizer"])
        for group, initial_lr in zip(self.optimizer.param_groups, configured):
            group["initial_lr"] = initial_lr  # a changed train.lr applies from the resumed step on
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.best_val_loss = float(state.get("best_val_loss", math.inf))
        best_meta = self.run_dir / "checkpoints" / "best" / "config.json"
        if best_meta.is_file():  # best/ may be newer than last/
            best_loss = json.loads(best_meta.read_text()).get("val_loss")
            if best_loss is not None:
                self.best_val_loss = min(self.best_val_loss, float(best_loss))
        self.warned = set(state.get("warned", []))
        self.evals = [e for e in read_metrics(self.run_dir) if e.get("event") == "eval"
                      and e.get("step", 0) <= self.step]
        rng = state.get("rng_per_rank", [])
        if len(rng) == self.dist.world_size:
            ckpt.set_rng_state(rng[self.dist.rank])
        else:
            warnings.warn(f"the run was saved with {len(rng)} processes and resumes with {self.dist.world_size}; "
                          f"dropout streams restart (data order is unchanged)", stacklevel=2)
            torch.manual_seed(self.config.seed + self.dist.rank + self.step)

    # -- signals --------------------------------------------------------------------------------
    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop after the current step, saving a checkpoint (what Ctrl-C and SIGTERM do)."""
        self._stop_requested = reason

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum, frame):
            name = signal.Signals(signum).name
            if self._stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
            self.request_stop(f"{name} received")
            if self.is_main and not self.quiet:
                print(f"\n{name}: saving a checkpoint after this step (Ctrl-C again to quit at once)",
                      file=sys.stderr)

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
        return previous

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train until max_steps, max_tokens or the time budget; evaluate, checkpoint and log on the way."""
        self._build()
        if self.resume:
            self._load_resume_state()
        self._prepare_run_dir()
        config = self.config
        logger = None
        if self.is_main:
            logger = MetricsLogger(self.run_dir, config.tensorboard, config.wandb, self.run_dir.name,
                                   self.run_config(), time_offset=self.elapsed)
            if self.resume:
                logger.log("resume", self.step, tokens=self.tokens, checkpoint=str(self.resume_dir),
                           threads=torch.get_num_threads())
            else:
                logger.log("start", 0, parameters=self.model.num_parameters(), device=self.setup.description,
                           precision=self.setup.precision, world_size=self.dist.world_size,
                           tokens_per_step=self.tokens_per_step, threads=torch.get_num_threads())
                length = (f"time budget {config.time_budget:g} s" if config.time_budget
                          else f"{config.max_steps:,} steps")
                self._print(f"training {self.model_config.name or 'a model'} ({self.model.num_parameters():,} "
                            f"parameters) on {self.setup.description} in {self.setup.precision}"
                            f"{f' x {self.dist.world_size} processes' if self.dist.enabled else ''}: "
                            f"{self.tokens_per_step:,} tokens per step, {length}; run directory {self.run_dir}")
                for message in self.data.meta.get("warnings") or []:  # prepare's leak and health checks
                    logger.log("warning", 0, kind="dataset", message=f"dataset {self.data_dir.name}: {message}")
                    self._print(f"warning: dataset {self.data_dir.name}: {message}")
        self.logger = logger
        result = TrainResult(self.run_dir)
        previous_handlers = self._install_signal_handlers()
        progress = self._progress_bar()
        self._first_step = self.step
        self._session_start = session_start = time.time()
        last_log_time, last_log_tokens = session_start, self.tokens
        last_eval_step = -1
        try:
            while self.step < config.max_steps:
                elapsed = self.elapsed_time()
                time_fraction = elapsed / config.time_budget if config.time_budget else 0.0
                factor = lr_factor(config, self.step, time_fraction)
                set_learning_rate(self.optimizer, factor)
                time_up = bool(config.time_budget and elapsed >= config.time_budget)
                loss, grad_norm, stop = self._train_step(time_up or bool(self._stop_requested))
                if stop:
                    reason = self._stop_requested or ("time budget reached" if time_up else "stop on another process")
                    if time_up and not self._stop_requested:
                        result.stop_reason = reason
                        break
                    self._stop_requested = reason
                    break
                if loss is None:  # a skipped non-finite step
                    continue
                self.step += 1
                self.tokens += self.tokens_per_step
                now = time.time()
                if self.is_main and (self.step % config.log_interval == 0 or self.step == 1
                                     or self.step == config.max_steps):
                    rate = (self.tokens - last_log_tokens) / max(now - last_log_time, 1e-9)
                    mfu = rate * self.flops_per_token / (self.peak * self.dist.world_size) if self.peak else None
                    logger.log("train", self.step, loss=loss, lr=config.lr * factor, tokens=self.tokens,
                               tokens_per_s=round(rate, 1), mfu=None if mfu is None else round(mfu, 4),
                               grad_norm=grad_norm)
                    last_log_time, last_log_tokens = now, self.tokens
                    self._show_progress(progress, loss, config.lr * factor, rate, mfu,
                                        self.elapsed_time())
                evaluate_now = config.eval_interval and self.step % config.eval_interval == 0
                if evaluate_now:
                    self._evaluate_and_checkpoint(periodic=self._periodic_due())
                    last_eval_step = self.step
                elif self._periodic_due():
                    self._save(periodic=True, best=False, last=True)
                if evaluate_now or self._periodic_due():  # throughput counts training time only
                    last_log_time, last_log_tokens = time.time(), self.tokens
                if self.thread_governor is not None:
                    self._follow_cpu_load()
                if self.on_step is not None:
                    self.on_step(self)
            # -- the end: a final evaluation and checkpoint, or an interrupted one --------------
            if self._stop_requested:
                result.interrupted = True
                result.stop_reason = self._stop_requested
                self._save(periodic=False, best=False, last=True)
                if self.is_main:
                    logger.log("interrupted", self.step, reason=self._stop_requested, tokens=self.tokens)
            else:
                result.stop_reason = result.stop_reason or "max steps reached"
                if last_eval_step != self.step:
                    self._evaluate_and_checkpoint(periodic=True, final=True)
                else:
                    self._save(periodic=self.config.checkpoint_interval > 0, best=False, last=True)
                if self.is_main:
                    logger.log("end", self.step, tokens=self.tokens, reason=result.stop_reason,
                               training_time=round(self.elapsed_time(), 2))
        except SlmError:
            if self.is_main and not self.resume and not (self.run_dir / "checkpoints").exists():
                if logger is not None:
                    logger.close()
                    logger = None
                shutil.rmtree(self.run_dir, ignore_errors=True)  # nothing worth keeping: allow a plain re-run
            raise
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            if progress and self._live_line:
                sys.stderr.write("\n")
            if logger is not None:
                logger.close()
        result.step, result.tokens = self.step, self.tokens
        result.final_eval = self.evals[-1] if self.evals else None
        result.best_val_loss = None if math.isinf(self.best_val_loss) else self.best_val_loss
        result.wall_time = self.elapsed_time()
        result.warnings = sorted(self.warned)
        return result

    def elapsed_time(self) -> float:
        """Seconds of training so far, earlier sessions of a resumed run included."""
        start = getattr(self, "_session_start", None)
        return self.elapsed + (time.time() - start if start is not None else 0.0)

    def _periodic_due(self) -> bool:
        interval = self.config.checkpoint_interval
        return bool(interval) and self.step % interval == 0

    def _train_step(self, stop_flag: bool) -> tuple[float | None, float | None, bool]:
        """One optimizer step over grad_accum micro-batches per process.

        Returns (mean loss over all processes' tokens, gradient norm, stop): loss None when the
        step was skipped for a non-finite loss; stop True when any process asked to stop (nothing
        was applied then).
        """
        config, setup = self.config, self.setup
        accum = config.grad_accum
        loss_sum = torch.zeros((), device=setup.device)
        if not stop_flag:
            for micro in range(accum):
                # One global stream of micro-batches, interleaved over processes, so N processes x
                # accumulation A see exactly the batches of 1 process x accumulation N*A.
                index = (self.step * accum + micro) * self.dist.world_size + self.dist.rank
                x, y = self.data.random_batch("train", config.batch_size, self.seq_len, config.seed, index)
                x = x.to(setup.device, non_blocking=True)
                y = y.to(setup.device, non_blocking=True)
                try:
                    with dist_utils.no_sync(self.wrapped, sync=micro == accum - 1), setup.autocast():
                        loss = language_model_loss(self.wrapped, x, y)
                    loss_sum += loss.detach()
                    scaled = loss / accum
                    (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                except Exception as error:
                    if _is_out_of_memory(error):
                        raise SlmError(_out_of_memory_message(config, self.seq_len, setup.device)) from None
                    if self.compiled is not self.model and self.step == self._first_step \
                            and not isinstance(error, SlmError):
                        self._fall_back_to_eager(error)
                        return self._train_step(stop_flag)
                    raise
        # one small all-reduce carries the loss and the stop flag of every process
        summary = torch.stack([loss_sum / accum, torch.tensor(float(stop_flag), device=setup.device)])
        dist_utils.all_reduce_sum(summary, self.dist)
        if summary[1].item() > 0:
            self.optimizer.zero_grad(set_to_none=True)
            return None, None, True
        loss_value = summary[0].item() / self.dist.world_size
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            return self._non_finite(f"loss became {loss_value}"), None, False
        if self.scaler is not None:
            for optimizer in self.optimizer.optimizers:
                self.scaler.unscale_(optimizer)
        # the norm before clipping (max_norm inf: measured, not clipped)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip or math.inf))
        if not math.isfinite(grad_norm) and self.scaler is None:  # fp16's scaler skips such steps itself
            self.optimizer.zero_grad(set_to_none=True)
            return self._non_finite(f"gradient norm became {grad_norm}"), None, False
        self.skipped_in_a_row = 0
        if self.scaler is not None:
            for optimizer in self.optimizer.optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, grad_norm, False

    def _fall_back_to_eager(self, error: Exception) -> None:
        warnings.warn(f"torch.compile failed at the first step ({type(error).__name__}: {str(error)[:200]}); "
                      f"training in eager mode", stacklevel=2)
        self.optimizer.zero_grad(set_to_none=True)
        self.compiled = self.model
        self.wrapped = dist_utils.wrap_model(self.model, self.dist, self.setup.device, self.config.parallelism)

    def _non_finite(self, what: str) -> None:
        """A NaN/inf loss or gradient (`what`, e.g. "loss nan"): stop with the last good state saved,
        or skip the step (train.nan_policy). Called before the optimizer step, so the weights are good."""
        step = self.step + 1
        if self.config.nan_policy == "skip" and self.skipped_in_a_row < self.config.max_skipped_steps:
            self.skipped_in_a_row += 1
            if self.is_main:
                self.logger.log("skipped_step", step, reason=what)
                if not self.quiet:
                    print(f"warning: {what} at step {step}; step skipped", file=sys.stderr)
            self.step += 1  # move past the bad batch so the run can continue
            self.tokens += self.tokens_per_step
            return None
        # The weights are still those of the last finite step: save them as last/.
        self._save(periodic=False, best=False, last=True)
        if self.is_main:
            self.logger.log("stopped", self.step, reason=f"{what} at step {step}")
        hint = ("lower train.lr, raise train.warmup_steps, keep train.grad_clip on, or use precision fp32/bf16 "
                "instead of fp16; `--set train.nan_policy=skip` skips such steps instead")
        skipped = (f" after {self.skipped_in_a_row} skipped steps in a row" if self.config.nan_policy == "skip"
                   else "")
        raise SlmError(f"the training {what} at step {step}{skipped}; stopped, with the last good "
                       f"weights (step {self.step}) saved in {self.run_dir / 'checkpoints' / 'last'}. To fix: "
                       f"{hint}; then continue with --resume {self.run_dir}")

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_split(self, split: str) -> float:
        """Mean loss (nats per token) on the fixed sample of `split`: the first eval_batches windows."""
        config, setup = self.config, self.setup
        batch_size = config.eval_batch_size or config.batch_size
        shard = self.dist.enabled and config.parallelism != "fsdp"  # FSDP forwards are collective
        totals = torch.zeros(2, device=setup.device,  # MPS has no float64
                             dtype=torch.float32 if setup.device.type == "mps" else torch.float64)
        self.model.eval()
        try:
            for index, (x, y) in enumerate(self.data.eval_batches(split, batch_size, self.seq_len, config.eval_batches)):
                if shard and index % self.dist.world_size != self.dist.rank:
                    continue
                x, y = x.to(setup.device), y.to(setup.device)
                with setup.autocast():
                    loss = language_model_loss(self.compiled, x, y, reduction="sum")
                totals[0] += loss.to(totals.dtype)
                totals[1] += (y != -1).sum()
        finally:
            self.model.train()
        if shard:
            dist_utils.all_reduce_sum(totals, self.dist)
        if totals[1].item() == 0:
            raise SlmError(f"the {split} split has no complete evaluation window of {self.seq_len + 1} tokens; "
                           f"lower train.seq_len")
        return (totals[0] / totals[1]).item()

    def _bits_per_byte(self, loss: float, split: str) -> float | None:
        bytes_per_token = self.bytes_per_token.get(split)
        return None if not bytes_per_token else loss / math.log(2) / bytes_per_token

    def _evaluate_and_checkpoint(self, periodic: bool, final: bool = False) -> dict:
        val_loss = self.evaluate_split("val")
        train_loss = self.evaluate_split("train")
        record = {"step": self.step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50)),
                  "val_bpb": self._bits_per_byte(val_loss, "val"), "train_loss": train_loss,
                  "train_ppl": math.exp(min(train_loss, 50)), "train_bpb": self._bits_per_byte(train_loss, "train"),
                  "tokens": self.tokens}
        self.evals.append(record)
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss = val_loss
        if self.is_main:
            self.logger.log("eval", **{k: v for k, v in record.items()}, best=improved)
            if not self.quiet:
                bpb = f", bpb {record['val_bpb']:.3f}" if record["val_bpb"] is not None else ""
                self._print(f"step {self.step}: val loss {val_loss:.4f} (ppl {record['val_ppl']:.2f}{bpb}), "
                            f"train loss {train_loss:.4f}" + (" *best*" if improved else ""))
            for kind, message in honesty_warnings(self.evals, self.warned):
                self.logger.log("warning", self.step, kind=kind, message=message)
                self._print(f"warning: {message}")
        for kind, _ in honesty_warnings(self.evals, self.warned):
            self.warned.add(kind)
        self._save(periodic=periodic and bool(self.config.checkpoint_interval), best=improved,
                   last=periodic or final, val_loss=val_loss)
        return record

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        return self.dist.enabled and self.config.parallelism == "fsdp"

    def _training_state(self, optimizer_state: dict) -> dict:
        rng = ckpt.rng_state()
        if self.dist.enabled:
            gathered = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        return {"step": self.step, "tokens": self.tokens, "elapsed": self.elapsed_time(),
                "best_val_loss": float(self.best_val_loss), "optimizer": optimizer_state,
                "grad_scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "rng_per_rank": gathered, "warned": sorted(self.warned), "world_size": self.dist.world_size,
                # batches are a function of (seed, micro-batch index): this is the whole data position
                "data": {"seed": self.config.seed, "next_micro_batch": self.step * self.config.grad_accum
                         * self.dist.world_size, "skipped_in_a_row": self.skipped_in_a_row}}

    def _save(self, periodic: bool, best: bool, last: bool, val_loss: float | None = None) -> None:
        """Write one checkpoint and link it as step-N, best and/or last (only what is asked)."""
        if not (periodic or best or last):
            return
        # collectives under DDP/FSDP: every process takes part
        weights, optimizer_state = ckpt.full_state(self.model, self.optimizer, self.sharded)
        state = self._training_state(optimizer_state)
        if not self.is_main:
            return
        checkpoints = self.run_dir / "checkpoints"
        targets = ([checkpoints / f"step-{self.step}"] if periodic else []) + \
                  ([checkpoints / "last"] if last else []) + ([checkpoints / "best"] if best else [])
        extra = {"step": self.step, "tokens": self.tokens, "train": self.config.to_dict(),
                 "val_loss": val_loss, "run": str(self.run_dir.resolve())}
        tokenizer_dir = self.run_dir / "tokenizer"
        files = {}
        if tokenizer_dir.is_dir():
            files = {p.name: p for p in tokenizer_dir.iterdir() if p.is_file()}
        first = targets[0]
        ckpt.save_training_checkpoint(first, self.model_config, weights, state, extra, files)
        for target in targets[1:]:
            ckpt.link_checkpoint(first, target)
        if periodic:
            ckpt.prune_step_checkpoints(checkpoints, self.config.keep_last)

    # -- console --------------------------------------------------------------------------------
    def _progress_bar(self) -> bool:
        """True when the progress line is redrawn in place (an interactive terminal)."""
        return not self.quiet and self.is_main and sys.stderr.isatty()

    def _print(self, text: str) -> None:
        if self.quiet or not self.is_main:
            return
        if self._live_line:
            sys.stderr.write("\r\x1b[K")  # clear the progress line; the next update redraws it
            sys.stderr.flush()
        print(text, flush=True)

    def _show_progress(self, live: bool, loss, lr, rate, mfu, elapsed) -> None:
        if self.quiet:
            return
        remaining = self.config.max_steps - self.step
        session = time.time() - self._session_start
        eta = remaining * session / max(1, self.step - self._first_step)
        if self.config.time_budget:
            eta = min(eta, max(0.0, self.config.time_budget - elapsed))
        mfu_text = f" mfu {100 * mfu:.1f}%" if mfu is not None else ""
        of = "" if self.config.time_budget else f"/{self.config.max_steps}"
        text = f"step {self.step}{of} loss {loss:.4f} lr {lr:.2e} {rate:,.0f} tok/s{mfu_text} eta {eta / 60:.1f} min"
        if live:
            sys.stderr.write("\r\x1b[K" + text)
            sys.stderr.flush()
            self._live_line = True
        else:
            print(text, flush=True)
