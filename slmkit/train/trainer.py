"""The training loop: a resolved RunConfig in, a run directory out.

The trainer orchestrates components that each own one concern, and keeps only the loop:

    checkpointer  the run directory, checkpoints, exact resume           (checkpointer.py)
    evaluator     loss, perplexity, bits per byte, honest-number warnings (evaluator.py)
    reporter      console line, metrics.jsonl, TensorBoard, W&B          (reporter.py)
    guards        non-finite losses (train.nan_policy), Ctrl-C / SIGTERM (guards.py)
    ema           a moving average of the weights, evaluated and saved beside them (ema.py)
    governor      CPU threads that follow other processes' load          (device.py, runtime.py)

Each step: set the learning rate, accumulate gradients over micro-batches, clip, step; then log,
evaluate and checkpoint when due. Compilation, activation checkpointing and DDP/FSDP are applied to
the model from outside it (parallelize.py, distributed.py).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from slmkit import runtime
from slmkit.errors import SlmError
from slmkit.finetune.chat import extend_embeddings
from slmkit.finetune.lora import LoraOptions, add_lora
from slmkit.model.checkpoint import load_state, load_weights, read_checkpoint_config
from slmkit.model.stats import model_stats
from slmkit.model.transformer import Transformer
from slmkit.rundir import RunLock, read_metrics
from slmkit.train import distributed
from slmkit.train.checkpointer import Checkpointer, TrainState
from slmkit.train.device import configure_training_threads, peak_flops, pick_device, setup_device
from slmkit.train.ema import ExponentialMovingAverage, ema_evaluation
from slmkit.train.evaluator import Evaluator
from slmkit.train.guards import NonFiniteGuard, StopSignals, is_out_of_memory, out_of_memory_error
from slmkit.train.loss import language_model_loss
from slmkit.train.optim import build_optimizer
from slmkit.train.parallelize import apply_activation_checkpointing, compile_model
from slmkit.train.reporter import Reporter
from slmkit.train.run_config import RunConfig, TrainResult, open_training_data, run_record
from slmkit.train.schedule import lr_factor, set_learning_rate


class Trainer:
    """One training run of a resolved `RunConfig` (see `resolve_run`). Build it, then `run()`.

    on_step(trainer) is called after every optimizer step (tests use it to stop a run;
    `request_stop()` is the same path as Ctrl-C).
    """

    def __init__(self, run: RunConfig, *, quiet: bool = False, on_step: Callable[[Trainer], None] | None = None):
        self.run_config, self.config, self.run_dir = run, run.train, run.run_dir
        self.on_step = on_step
        config = self.config
        self.dist = distributed.init_distributed(config.device)
        self.is_main = self.dist.is_main
        self.dataset = open_training_data(run.data_dir, packing=run.packing)
        runtime.tune_allocator()
        self.governor = configure_training_threads(config.threads, pick_device(config.device, self.dist.local_rank),
                                                   self.dist.world_size, distributed.local_processes())
        self.setup = setup_device(config.device, config.precision, self.dist.local_rank)
        torch.manual_seed(config.seed)  # the same initial weights on every process
        np.random.seed(config.seed)
        random.seed(config.seed)
        self.model = Transformer(run.model)
        if run.load_init_weights or (run.resume and run.lora):  # a LoRA resume rebuilds its frozen base
            load_base_weights(self.model, run.init_from)
        if run.lora:  # a fine-tune of adapters: the base weights freeze, only the adapters train
            add_lora(self.model, LoraOptions.from_dict(run.lora))
            train_added_rows(self.model, int(read_checkpoint_config(run.init_from)["model"]["vocab_size"]))
        if config.activation_checkpointing:
            apply_activation_checkpointing(self.model)
        self.model = self.model.to(self.setup.device).train()
        self.compiled = compile_model(self.model, config.compile)
        self.wrapped = distributed.wrap_model(self.compiled, self.dist, self.setup.device, config.parallelism)
        self.optimizer = build_optimizer(self.model, config, self.setup.device.type)
        # train.ema_decay: a float32 shadow of the weights (replaced by the saved one on resume)
        self.ema = ExponentialMovingAverage(self.model, config.ema_decay) if config.ema_decay else None
        self.scaler = torch.amp.GradScaler("cuda") if self.setup.needs_grad_scaler else None
        sharded = self.dist.enabled and config.parallelism == "fsdp"
        self.checkpointer = Checkpointer(self.run_dir, self.dist, sharded, config.keep_last, self.setup.device,
                                         frozen_base=bool(run.lora))
        self.evaluator = Evaluator(self.dataset, run.seq_len, config.eval_batch_size or config.batch_size,
                                   config.eval_batches, self.setup, self.dist, shard=not sharded)
        self.flops_per_token = model_stats(run.model, context=run.seq_len).training_flops_per_token
        self.peak, self.peak_source = peak_flops(self.setup, config.peak_tflops)
        self.reporter = Reporter(self.is_main, quiet, self.flops_per_token, self.peak, self.dist.world_size)
        self.stop = StopSignals(announce=self.is_main and not quiet)
        self.state = TrainState()
        if run.resume:
            self.state = self.checkpointer.restore(run.resume_from, self.model, self.optimizer, self.scaler,
                                                   config.seed, ema=self.ema)
            self.evaluator.resume(read_metrics(self.run_dir), self.state)
        else:
            # Last, so nothing above can shift the dropout streams (distinct per process).
            torch.manual_seed(config.seed + self.dist.rank)
        self.guard = NonFiniteGuard(config.nan_policy, config.max_skipped_steps)
        self._session_start = time.time()
        self._first_step = self.state.step

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop after the current step, saving a checkpoint (what Ctrl-C and SIGTERM do)."""
        self.stop.request(reason)

    @property
    def step(self) -> int:
        return self.state.step

    def elapsed_time(self) -> float:
        """Seconds of training so far, earlier sessions of a resumed run included."""
        return self.state.elapsed + (time.time() - self._session_start)

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train until max_steps, max_tokens or the time budget; evaluate, checkpoint and log on the way."""
        lock = RunLock(self.run_dir)
        if self.is_main:  # one process at a time in a run directory (two resumes would interleave)
            note = lock.acquire()
            if note:
                self.reporter.print(note)
        try:
            return self._run()
        finally:
            lock.release()

    def _run(self) -> TrainResult:
        run, state = self.run_config, self.state
        self.checkpointer.prepare_run_dir(self.run_record(), self.dataset_tokenizer(),
                                          state.step if run.resume else None, run.overwrite)
        self.reporter.open(self.run_dir, self.config.tensorboard, self.config.wandb, self.run_record(), state.elapsed)
        self._announce()
        result = TrainResult(self.run_dir)
        try:
            with self.stop:
                self._loop(result)
        except SlmError as error:
            self.reporter.stopped(state.step, str(error))
            if not run.resume:
                self.reporter.close()
                self.checkpointer.discard_empty_run()  # nothing worth keeping: allow a plain re-run
            raise
        finally:
            self.reporter.close()
        history = self.evaluator.history
        return dataclasses.replace(
            result, step=state.step, tokens=state.tokens, final_eval=history[-1] if history else None,
            best_val_loss=None if math.isinf(state.best_val_loss) else state.best_val_loss,
            wall_time=self.elapsed_time(), warnings=sorted(self.evaluator.warned))

    def _loop(self, result: TrainResult) -> None:
        config, state = self.config, self.state
        self._session_start, self._first_step = time.time(), state.step
        self.reporter.session_started(state.step, state.tokens)
        last_eval_step = -1
        while state.step < config.max_steps:
            elapsed = self.elapsed_time()
            factor = lr_factor(config, state.step, elapsed / config.time_budget if config.time_budget else 0.0)
            rates = set_learning_rate(self.optimizer, config, factor)
            time_up = bool(config.time_budget and elapsed >= config.time_budget)
            loss, grad_norm, stopped = self._train_step(time_up or bool(self.stop.reason))
            if stopped:
                if time_up and not self.stop.reason:
                    result.stop_reason = "time budget reached"
                else:
                    self.stop.request(self.stop.reason or "stop on another process")
                break
            if loss is None:  # a skipped non-finite step
                continue
            state.step += 1
            state.tokens += self.run_config.tokens_per_step
            if self.ema is not None:  # after every optimizer step (a skipped step made none)
                self.ema.update(self.model)
            if state.step == self._first_step + 1:
                self.reporter.first_step_done(state.step)
            if state.step % config.log_interval == 0 or state.step == 1 or state.step == config.max_steps:
                self.reporter.train_step(state.step, state.tokens, loss, rates, grad_norm, config.max_steps,
                                         config.time_budget, self.elapsed_time())
            evaluate_now = config.eval_interval and state.step % config.eval_interval == 0
            periodic = bool(config.checkpoint_interval) and state.step % config.checkpoint_interval == 0
            if evaluate_now:
                self._evaluate_and_checkpoint(periodic=periodic)
                last_eval_step = state.step
            elif periodic:
                self._save(periodic=True, last=True)
            if evaluate_now or periodic:  # throughput counts training time only
                self.reporter.pause(state.tokens)
            if self.governor is not None and (change := self.governor.check()) is not None:
                self.reporter.threads_changed(state.step, change)
            if self.on_step is not None:
                self.on_step(self)
        # -- the end: a final evaluation and checkpoint, or an interrupted one -------------------
        if self.stop.reason:
            result.interrupted, result.stop_reason = True, self.stop.reason
            self._save(last=True)
            self.reporter.log("interrupted", state.step, reason=self.stop.reason, tokens=state.tokens)
            return
        result.stop_reason = result.stop_reason or "max steps reached"
        if last_eval_step != state.step:
            self._evaluate_and_checkpoint(periodic=True, final=True)
        else:
            self._save(periodic=config.checkpoint_interval > 0, last=True)
        self.reporter.log("end", state.step, tokens=state.tokens, reason=result.stop_reason,
                          training_time=round(self.elapsed_time(), 2))

    def _train_step(self, stop_flag: bool) -> tuple[float | None, float | None, bool]:
        """One optimizer step over grad_accum micro-batches per process.

        Returns (mean loss over all processes' tokens, gradient norm, stop): loss None when the
        step was skipped for a non-finite loss; stop True when any process asked to stop (nothing
        was applied then).
        """
        config, device, dist = self.config, self.setup.device, self.dist
        accum = config.grad_accum
        loss_sum = torch.zeros((), device=device)
        if not stop_flag:
            for micro in range(accum):
                # One global stream of micro-batches, interleaved over processes, so N processes x
                # accumulation A see exactly the batches of 1 process x accumulation N*A.
                index = (self.state.step * accum + micro) * dist.world_size + dist.rank
                # (x, y), or (x, y, segment_ids) for a fine-tune's packed examples (targets -1 off the response)
                batch = self.dataset.random_batch("train", config.batch_size, self.run_config.seq_len, config.seed,
                                                  index)
                x, y, *segments = (tensor.to(device, non_blocking=True) for tensor in batch)
                try:
                    with distributed.no_sync(self.wrapped, sync=micro == accum - 1), self.setup.autocast():
                        loss = language_model_loss(self.wrapped, x, y, *segments)
                    loss_sum += loss.detach()
                    scaled = loss / accum
                    (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                except Exception as error:
                    if is_out_of_memory(error):
                        raise out_of_memory_error(config, self.run_config.seq_len, device) from None
                    if self.compiled is not self.model and self.state.step == self._first_step \
                            and not isinstance(error, SlmError):
                        self._fall_back_to_eager(error)
                        return self._train_step(stop_flag)
                    raise
        # one small all-reduce carries the loss and the stop flag of every process
        summary = torch.stack([loss_sum / accum, torch.tensor(float(stop_flag), device=device)])
        distributed.all_reduce_sum(summary, dist)
        if summary[1].item() > 0:
            self.optimizer.zero_grad(set_to_none=True)
            return None, None, True
        loss_value = summary[0].item() / dist.world_size
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            return self._non_finite(f"training loss became {loss_value}"), None, False
        if self.scaler is not None:
            for optimizer in self.optimizer.optimizers:
                self.scaler.unscale_(optimizer)
        # the norm before clipping (max_norm inf: measured, not clipped)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip or math.inf))
        if not math.isfinite(grad_norm) and self.scaler is None:  # fp16's scaler skips such steps itself
            self.optimizer.zero_grad(set_to_none=True)
            return self._non_finite(f"training gradient norm became {grad_norm}"), None, False
        self.guard.finite_step()
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
        self.wrapped = distributed.wrap_model(self.model, self.dist, self.setup.device, self.config.parallelism)

    def _non_finite(self, what: str) -> None:
        """A NaN/inf loss or gradient (`what`, e.g. "loss became nan"): skip the step or stop with the
        last good state saved (train.nan_policy). Called before the optimizer step, so the weights are good."""
        state, step = self.state, self.state.step + 1
        if self.guard.skip():
            self.reporter.skipped_step(step, what)
            state.step += 1  # move past the bad batch so the run can continue
            state.tokens += self.run_config.tokens_per_step
            return None
        saved = self._save(last=True)  # the weights of the last finite step, if they pass the health check
        self._stop(what, step, saved_step=state.step if saved else None)

    def _stop(self, what: str, step: int, saved_step: int | None = None) -> None:
        """End the run for a non-finite loss, gradient, evaluation or weights, naming what is kept."""
        self.reporter.stopped(self.state.step, f"{what} at step {step}")
        newest = self.checkpointer.newest()
        raise self.guard.stop_error(what, step, saved_step, newest, self.run_dir)

    # -- evaluation and checkpoints -------------------------------------------------------------
    def _evaluate_and_checkpoint(self, periodic: bool, final: bool = False) -> dict:
        record = self.evaluator.evaluate(self.compiled, self.state.step, self.state.tokens)
        if not (math.isfinite(record["val_loss"]) and math.isfinite(record["train_loss"])):
            self.reporter.evaluation(record, False)
            bad = "val_loss" if not math.isfinite(record["val_loss"]) else "train_loss"
            what = {"val_loss": "validation loss", "train_loss": "loss on the training sample"}[bad]
            self._stop(f"{what} became {record[bad]}", self.state.step)
        if self.ema is not None:  # the averaged weights, scored on the same samples beside the raw ones
            record.update(ema_evaluation(self.ema, self.evaluator, self.model, self.compiled))
        improved = record["val_loss"] < self.state.best_val_loss
        if improved:
            self.state.best_val_loss = record["val_loss"]
        self.reporter.evaluation(record, improved)
        for kind, message in self.evaluator.new_warnings():
            self.reporter.warning(self.state.step, kind, message)
        self._save(periodic=periodic and bool(self.config.checkpoint_interval), best=improved,
                   last=periodic or final, val_loss=record["val_loss"])
        return record

    def _save(self, periodic: bool = False, best: bool = False, last: bool = False,
              val_loss: float | None = None) -> bool:
        """Checkpoint the current weights as asked, if they pass the health check (finite logits on a
        validation window); False, and nothing written, when they do not."""
        if not (periodic or best or last):
            return True
        if not self.evaluator.logits_are_finite(self.model):
            return False
        snapshot = dataclasses.replace(self.state, elapsed=self.elapsed_time(), warned=set(self.evaluator.warned),
                                       skipped_in_a_row=self.guard.skipped_in_a_row)
        self.checkpointer.save(self.model, self.optimizer, self.scaler, snapshot, self.config,
                               periodic=periodic, best=best, last=last, val_loss=val_loss, ema=self.ema)
        return True

    # -- what the run records about itself ------------------------------------------------------
    def run_record(self) -> dict:
        """The fully resolved configuration, as saved in the run directory's config.json."""
        return run_record(self.run_config, self.dataset.meta, self.model.num_parameters(), self.dist, self.setup,
                          self.flops_per_token, self.peak, self.peak_source)

    def dataset_tokenizer(self):
        """The dataset's tokenizer, or None when it has no tokenizer files."""
        try:
            return self.dataset.tokenizer
        except (SlmError, OSError, KeyError, ValueError):
            return None

    def _announce(self) -> None:
        run, threads = self.run_config, torch.get_num_threads()
        if run.resume:
            self.reporter.log("resume", self.state.step, tokens=self.state.tokens, checkpoint=str(run.resume_from),
                              threads=threads)
        else:
            self.reporter.started(run, self.model.num_parameters(), self.setup, self.dist.world_size, threads,
                                  self.dataset.meta.get("warnings") or [])


def load_base_weights(model: Transformer, checkpoint) -> None:
    """The weights of `checkpoint` into `model`; when the model's vocabulary is larger (a fine-tune
    added the chat tokens), the new embedding rows start as the mean of the others."""
    config, weights, _ = load_state(checkpoint)
    if config.vocab_size < model.config.vocab_size:
        _, weights = extend_embeddings(weights, config, model.config.vocab_size)
    load_weights(model, weights, str(checkpoint))


def train_added_rows(model: Transformer, base_vocab: int) -> None:
    """Under LoRA, let the embedding (and untied head) rows of tokens the fine-tune added train, the
    base's rows staying frozen (their gradient is zeroed, so Adam leaves them bit for bit): new
    tokens such as <|im_end|> must become distinguishable, or the model cannot learn to stop."""
    if model.config.vocab_size <= base_vocab:
        return
    for weight in {id(w): w for w in (model.embed.weight, model.lm_head.weight)}.values():
        keep = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
        keep[base_vocab:] = 1
        weight.requires_grad_(True)
        weight.trainable_rows = model.config.vocab_size - base_vocab  # counted as such by lora_summary
        weight.register_hook(lambda grad, keep=keep: grad * keep.to(grad.device, grad.dtype))
