"""The checkpointer: the run directory and everything exact resume needs, written atomically.

A checkpoint is the model checkpoint format (config.json, model.safetensors, the tokenizer) plus
`training_state.pt`, which holds what exact resume needs and nothing executable: the optimizer
state, the step and token counters, the RNG states (torch, CUDA, numpy, python), the gradient
scaler, the best validation loss and the elapsed training time. It is loaded with
`weights_only=True`, after its hash is checked against config.json.

A run's checkpoints/ holds step-N/ (periodic, the newest `keep_last` kept), best/ (lowest
validation loss) and last/ (the newest state, what `--resume` reads; `--resume RUN --from NAME`
reads another). Each is a complete copy, swapped into place atomically, so damage to one never
reaches the others. With train.ema_decay, ema/ holds the moving average of the weights (a plain
checkpoint, written with last/; its state for resume is in training_state.pt).
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import random
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from slmkit.errors import SlmError
from slmkit.finetune.lora import merge_lora
from slmkit.model.checkpoint import (
    load_state,
    load_weights,
    model_state,
    read_checkpoint_config,
    sha256_file,
    write_checkpoint,
)
from slmkit.model.config import ModelConfig
from slmkit.rundir import CHECKPOINTS, RUN_CONFIG, TOKENIZER, step_checkpoints, truncate_metrics
from slmkit.train import distributed
from slmkit.train.guards import DISK_ADVICE, write_error
from slmkit.utils import atomic_dir, write_json_atomic

STATE_FILE = "training_state.pt"
EMA_CHECKPOINT = "ema"  # checkpoints/ema/: the weights' moving average (train.ema_decay)


def rng_state() -> dict:
    """Every random stream the training loop draws from, as tensors, lists and numbers."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_training_checkpoint(directory: Path, model_config, weights: dict[str, torch.Tensor], training_state: dict,
                             extra: dict, extra_files: dict | None = None) -> Path:
    """Write weights, config, `training_state` (and `extra_files`) into `directory`, atomically.
    training_state.pt is written beside it first (its hash goes into config.json), then moved in."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory.parent, prefix=".training_state.", suffix=".pt")
    os.close(fd)
    try:
        torch.save(training_state, tmp)
        extra = {**extra, "training_state_sha256": sha256_file(Path(tmp))}
        write_checkpoint(directory, model_config, weights, extra=extra, extra_files=extra_files,
                         moved_files={STATE_FILE: tmp})
    finally:
        Path(tmp).unlink(missing_ok=True)
    return directory


def full_state(model, optimizer, sharded: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights to save, optimizer state) of `model`; with FSDP2 (`sharded`) both are gathered in
    full onto CPU, a collective every process must call (only rank 0's copy is complete)."""
    if not sharded:
        return model_state(model), optimizer.state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    if model.config.tie_embeddings:
        weights.pop("lm_head.weight", None)
    weights = {name: tensor.contiguous() for name, tensor in weights.items()}
    optimizers = [get_optimizer_state_dict(model, opt, options=options) for opt in optimizer.optimizers]
    return weights, {"optimizers": optimizers, "full_state_dict": True}


def restore_full_state(model, optimizer, weights: dict[str, torch.Tensor], optimizer_state: dict) -> None:
    """Load full (unsharded) weights and optimizer state into an FSDP2-sharded model, on every process."""
    if not optimizer_state.get("full_state_dict"):
        raise SlmError("this checkpoint was saved without FSDP; resume it with train.parallelism=ddp")
    options = StateDictOptions(full_state_dict=True)
    weights = dict(weights)
    if model.config.tie_embeddings:
        weights["lm_head.weight"] = weights["embed.weight"]
    set_model_state_dict(model, weights, options=options)
    for opt, state in zip(optimizer.optimizers, optimizer_state["optimizers"], strict=True):
        set_optimizer_state_dict(model, opt, state, options=options)


def _restore_trainable(model, saved: dict | None, checkpoint: Path) -> None:
    """The trainable tensors of a LoRA fine-tune (saved in the training state) back into `model`."""
    trainable = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    if saved is None or set(saved) != set(trainable):
        raise SlmError(f"{checkpoint} does not hold this fine-tune's adapters (its training state has "
                       f"{len(saved or {})} trainable tensors, the run {len(trainable)}); resume from a checkpoint "
                       f"of this run")
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(saved[name])


def copy_checkpoint(source: Path, target: Path) -> Path:
    """Make `target` a copy of checkpoint `source`, swapped in atomically. A copy, not hard links:
    damage to one checkpoint's files (a truncated or overwritten file) never reaches another."""
    with atomic_dir(target) as tmp:
        for item in source.iterdir():
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
    return target


def load_training_state(directory: Path) -> dict:
    """The training_state.pt of a checkpoint, loaded without executing code."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise SlmError(f"{directory} has no {STATE_FILE}, so it cannot be resumed exactly; "
                       f"to start a new run from its weights use --init-from {directory}")
    expected = read_checkpoint_config(directory).get("training_state_sha256")
    if expected and sha256_file(path) != expected:
        raise SlmError(f"{path} does not match the hash in its config.json: the file is truncated or was "
                       f"modified; resume from another checkpoint (checkpoints/step-N)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refused an object: never load it
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        raise SlmError(f"refusing {path}: it holds {found.group(1) if found else 'an object'}, something other "
                       f"than tensors, and loading it could run code; resume from another checkpoint "
                       f"(--resume RUN --from step-N), or start a new run from its weights with "
                       f"--init-from {directory}") from None
    except Exception as error:  # any other failure means a damaged file
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise SlmError(f"cannot read {path}: {type(error).__name__}: {first_line}; the checkpoint is damaged, "
                       f"resume from another one (--resume RUN --from step-N)") from None


def prune_step_checkpoints(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` step-N checkpoints (0 keeps all); return those deleted."""
    if keep_last <= 0:
        return []
    doomed = [path for _, path in step_checkpoints(run_dir)[:-keep_last]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def _checkpoint_bytes(weights: dict[str, torch.Tensor], training_state: dict) -> int:
    """About how many bytes one checkpoint takes: its weights, the optimizer's tensors, and 5% more."""
    tensors = [t for t in weights.values()]
    stack = [training_state.get("optimizer", {}), training_state.get("ema", {})]
    while stack:  # the optimizer state is nested dicts and lists of tensors
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            tensors.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return int(1.05 * sum(t.numel() * t.element_size() for t in tensors)) + (1 << 20)


def architecture_differences(a: ModelConfig, b: ModelConfig) -> list[str]:
    """Fields that make two model configs different networks (name, dropout and notes aside)."""
    ignore = {"name", "dropout", "extra"}
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} vs {db[k]!r}" for k in da if k not in ignore and da[k] != db.get(k)]


@dataclass
class TrainState:
    """The counters a run carries across checkpoints. Times in seconds, losses in nats."""

    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0  # training seconds before this process started (resume)
    best_val_loss: float = math.inf
    skipped_in_a_row: int = 0  # non-finite steps skipped in a row (train.nan_policy = skip)
    warned: set[str] = field(default_factory=set)  # honesty warnings already given


class Checkpointer:
    """Owns the run directory: creating (or replacing) it, config.json, the tokenizer copy, and the
    checkpoints (save, copy as step-N/best/last, prune to keep_last, restore for an exact resume).

    Under DDP/FSDP every process calls `save` (gathering state is a collective); only the main
    process writes.
    """

    def __init__(self, run_dir: Path, dist: distributed.DistInfo, sharded: bool, keep_last: int,
                 device: torch.device | str = "cpu", frozen_base: bool = False):
        self.run_dir = Path(run_dir)
        # A LoRA fine-tune: checkpoints hold the merged weights (a plain checkpoint any command loads),
        # and the training state the trainable tensors (adapters, added token rows) a resume restores.
        self.frozen_base = frozen_base
        self.device = device  # where the collective that reports a failed write runs
        self.checkpoints = self.run_dir / CHECKPOINTS
        self.dist = dist
        self.sharded = sharded
        self.keep_last = keep_last

    # -- the run directory ----------------------------------------------------------------------
    def prepare_run_dir(self, run_config: dict, tokenizer, resume_step: int | None, overwrite: bool) -> None:
        """Create the run directory (replacing it under `overwrite`), or cut a resumed run's metrics
        back to its checkpoint's step; write config.json and the tokenizer. All processes wait."""
        if self.dist.is_main:
            try:
                self._prepare_run_dir(run_config, tokenizer, resume_step, overwrite)
            except OSError as error:
                raise write_error(error, f"the run directory {self.run_dir}") or error from None
        distributed.barrier(self.dist)

    def _prepare_run_dir(self, run_config: dict, tokenizer, resume_step: int | None, overwrite: bool) -> None:
        if resume_step is not None:
            truncate_metrics(self.run_dir, resume_step)
        else:
            if self.run_dir.exists() and overwrite:
                shutil.rmtree(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_dir / RUN_CONFIG, run_config)
        # Keep the dataset's tokenizer with the run (and in each checkpoint), so a checkpoint can
        # encode and decode text on its own.
        if tokenizer is not None and not (self.run_dir / TOKENIZER).exists():
            tokenizer.save(self.run_dir / TOKENIZER)

    def discard_empty_run(self) -> None:
        """Delete a new run that failed before its first checkpoint, so a plain re-run works."""
        if self.dist.is_main and not self.checkpoints.exists():
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # -- saving ---------------------------------------------------------------------------------
    def save(self, model, optimizer, scaler, state: TrainState, train_config, *, periodic: bool = False,
             best: bool = False, last: bool = False, val_loss: float | None = None, ema=None) -> None:
        """Write one checkpoint and copy it as step-N, best and/or last (only what is asked). With an
        `ema` (slmkit.train.ema), its state goes into the training state, and with `last` its weights
        are written as the checkpoint ema/ as well."""
        if not (periodic or best or last):
            return
        # collectives under DDP/FSDP: every process takes part
        weights, optimizer_state = full_state(model, optimizer, self.sharded)
        training_state = self._training_state(state, optimizer_state, scaler, train_config)
        if self.frozen_base:
            weights = model_state(merge_lora(model))
            training_state["trainable"] = {name: parameter.detach().to("cpu").clone()
                                           for name, parameter in model.named_parameters() if parameter.requires_grad}
        if ema is not None:
            training_state["ema"] = ema.state_dict()
        failure = None
        if self.dist.is_main:
            try:
                self._write(model.config, weights, training_state, state, train_config, periodic, best, last, val_loss)
                if ema is not None and last:
                    self._write_ema(model, ema, state, train_config)
            except SlmError as error:
                failure = error
        if self.dist.enabled:  # every process stops together when the main one could not write
            flag = torch.tensor([float(failure is not None)], device=self.device)
            distributed.all_reduce_sum(flag, self.dist)
            if flag.item() > 0 and failure is None:
                failure = SlmError("the main process could not write a checkpoint (its message says why)")
        if failure is not None:
            raise failure

    def _write(self, model_config, weights, training_state: dict, state: TrainState, train_config,
               periodic: bool, best: bool, last: bool, val_loss: float | None) -> None:
        targets = ([self.checkpoints / f"step-{state.step}"] if periodic else []) + \
                  ([self.checkpoints / "last"] if last else []) + ([self.checkpoints / "best"] if best else [])
        extra = {"step": state.step, "tokens": state.tokens, "train": train_config.to_dict(),
                 "val_loss": val_loss, "run": str(self.run_dir.resolve())}
        tokenizer_dir = self.run_dir / TOKENIZER
        files = {p.name: p for p in tokenizer_dir.iterdir() if p.is_file()} if tokenizer_dir.is_dir() else {}
        needed = _checkpoint_bytes(weights, training_state) * len(targets)
        free = shutil.disk_usage(self.run_dir).free
        if free < needed:
            raise SlmError(f"not enough free space for the step {state.step} checkpoint in {self.checkpoints}: it "
                           f"needs about {needed / 1e6:,.0f} MB ({len(targets)} cop{'ies' if len(targets) > 1 else 'y'}), "
                           f"{free / 1e6:,.0f} MB are free; {DISK_ADVICE[errno.ENOSPC]}; the earlier checkpoints are "
                           f"intact")
        try:
            first = targets[0]
            save_training_checkpoint(first, model_config, weights, training_state, extra, files)
            for target in targets[1:]:
                copy_checkpoint(first, target)
            if periodic:
                prune_step_checkpoints(self.run_dir, self.keep_last)
        except OSError as error:
            raise write_error(error, f"the step {state.step} checkpoint in {self.checkpoints}") or error from None

    def _write_ema(self, model, ema, state: TrainState, train_config) -> None:
        """checkpoints/ema/: the EMA weights as a plain checkpoint (with the tokenizer), beside last/."""
        extra = {"step": state.step, "tokens": state.tokens, "train": train_config.to_dict(), "val_loss": None,
                 "run": str(self.run_dir.resolve()), "ema": {"decay": ema.decay, "updates": ema.updates}}
        tokenizer_dir = self.run_dir / TOKENIZER
        files = {p.name: p for p in tokenizer_dir.iterdir() if p.is_file()} if tokenizer_dir.is_dir() else {}
        if self.frozen_base:  # a LoRA fine-tune: the averaged adapters merged into the base, as last/ holds
            with ema.applied(model):
                weights = model_state(merge_lora(model))
        else:
            weights = ema.weights(model)
        try:
            write_checkpoint(self.checkpoints / EMA_CHECKPOINT, model.config, weights, extra=extra, extra_files=files)
        except OSError as error:
            raise write_error(error, f"the step {state.step} EMA checkpoint in {self.checkpoints}") or error from None

    def _training_state(self, state: TrainState, optimizer_state: dict, scaler, train_config) -> dict:
        rng = rng_state()
        if self.dist.enabled:
            gathered = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        return {"step": state.step, "tokens": state.tokens, "elapsed": state.elapsed,
                "best_val_loss": float(state.best_val_loss), "optimizer": optimizer_state,
                "grad_scaler": scaler.state_dict() if scaler is not None else {},
                "rng_per_rank": gathered, "warned": sorted(state.warned), "world_size": self.dist.world_size,
                # batches are a function of (seed, micro-batch index): this is the whole data position
                "data": {"seed": train_config.seed, "next_micro_batch": state.step * train_config.grad_accum
                         * self.dist.world_size, "skipped_in_a_row": state.skipped_in_a_row}}

    def newest(self) -> tuple[int, Path] | None:
        """(step, directory) of the newest checkpoint of the run (last, best or step-N), or None.
        Every checkpoint was checked healthy (finite logits) before it was written."""
        found = []
        for directory in [self.checkpoints / "last", self.checkpoints / "best"] + \
                [path for _, path in step_checkpoints(self.run_dir)]:
            try:
                found.append((int(read_checkpoint_config(directory).get("step", -1)), directory))
            except SlmError:
                continue
        # the newest step; among equals last/ (what a plain --resume reads), then best/
        return max(found, key=lambda item: item[0], default=None)

    # -- resuming -------------------------------------------------------------------------------
    def restore(self, checkpoint: Path, model, optimizer, scaler, seed: int, ema=None) -> TrainState:
        """Load `checkpoint` into the model, optimizer, scaler (and `ema`), set every RNG, and return
        the counters, so that the run continues exactly as if it had not stopped. An `ema` the
        checkpoint has none for starts from the restored weights."""
        config, tensors, _ = load_state(checkpoint)
        differences = architecture_differences(config, model.config)
        if differences:
            raise SlmError(f"checkpoint {checkpoint} does not match the run's model config "
                           f"({'; '.join(differences[:4])})")
        saved = load_training_state(checkpoint)
        if self.sharded:
            restore_full_state(model, optimizer, tensors, saved["optimizer"])
        elif saved["optimizer"].get("full_state_dict"):
            raise SlmError(f"{checkpoint} was saved by an FSDP run; resume it under torchrun with "
                           f"train.parallelism=fsdp")
        elif self.frozen_base:  # the base came from init_from; the checkpoint adds the trained tensors
            _restore_trainable(model, saved.get("trainable"), checkpoint)
            optimizer.load_state_dict(saved["optimizer"])
        else:
            load_weights(model, tensors, str(checkpoint))
            optimizer.load_state_dict(saved["optimizer"])
        if scaler is not None and saved.get("grad_scaler"):
            scaler.load_state_dict(saved["grad_scaler"])
        if ema is not None:
            if saved.get("ema"):
                ema.load_state_dict(saved["ema"], str(checkpoint))
            else:
                ema.reset(model)
        state = TrainState(step=int(saved["step"]), tokens=int(saved["tokens"]),
                           elapsed=float(saved.get("elapsed", 0.0)),
                           best_val_loss=float(saved.get("best_val_loss", math.inf)),
                           warned=set(saved.get("warned", [])))
        best_meta = self.checkpoints / "best" / "config.json"
        if best_meta.is_file():  # best/ may be newer than last/
            best_loss = json.loads(best_meta.read_text()).get("val_loss")
            if best_loss is not None:
                state.best_val_loss = min(state.best_val_loss, float(best_loss))
        rng = saved.get("rng_per_rank", [])
        if len(rng) == self.dist.world_size:
            set_rng_state(rng[self.dist.rank])
        else:
            warnings.warn(f"the run was saved with {len(rng)} processes and resumes with {self.dist.world_size}; "
                          f"dropout streams restart (data order is unchanged)", stacklevel=2)
            torch.manual_seed(seed + self.dist.rank + state.step)
        return state
