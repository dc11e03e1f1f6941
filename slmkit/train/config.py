"""TrainConfig: every knob of a training run, beside the ModelConfig.

Comes from the `[train]` section of a preset or config file and `--set train.field=value`
overrides; `validate()` refuses values that cannot work, naming the field and the value. The
resolved config is saved in the run directory's config.json.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from slmkit.errors import SlmError
from slmkit.utils import dataclass_from_dict

SCHEDULES = ("cosine", "linear", "wsd", "constant")
OPTIMIZERS = ("adamw", "muon")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
NAN_POLICIES = ("stop", "skip")
PARALLELISMS = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    """How to train. Units: sizes in sequences or tokens, rates per optimizer step, times in seconds."""

    # -- batch --------------------------------------------------------------------------------
    batch_size: int = 16  # sequences per micro-batch on each process
    seq_len: int | None = None  # tokens per sequence (None: the model's context_length)
    grad_accum: int = 1  # micro-batches per optimizer step on each process
    tokens_per_step: int | None = None  # if set, grad_accum is derived: tokens / (batch x seq x processes)
    # -- length (the first limit reached ends the run) -------------------------------------------
    max_steps: int = 1000
    max_tokens: int | None = None  # caps max_steps at max_tokens / tokens_per_step
    time_budget: float | None = None  # seconds of training; the schedule then runs on elapsed time
    # -- optimizer ----------------------------------------------------------------------------
    optimizer: str = "adamw"  # "adamw", or "muon" (Muon for 2-D hidden matrices, AdamW for the rest)
    lr: float = 1e-3  # peak AdamW learning rate
    min_lr: float | None = None  # floor of the decay (None: lr / 10)
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine", "linear", "wsd" (warmup-stable-decay) or "constant"
    decay_fraction: float = 0.2  # wsd: the share of the run spent decaying
    weight_decay: float = 0.1  # on 2-D matrices only (never norms, biases, embeddings)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    muon_lr: float = 0.02  # peak learning rate of the Muon groups
    muon_momentum: float = 0.95
    grad_clip: float | None = 1.0  # max global gradient norm (None or 0: no clipping)
    dropout: float | None = None  # overrides model.dropout when set
    # exponential moving average of the weights (e.g. 0.999), evaluated beside them and saved as
    # checkpoints/ema/; None: off. Costs one float32 copy of the weights (train/ema.py)
    ema_decay: float | None = None
    # -- evaluation, checkpoints, logging -----------------------------------------------------
    eval_interval: int = 200  # steps between evaluations (0: only at the end)
    eval_batches: int = 20  # batches of the fixed validation (and train) sample per evaluation
    eval_batch_size: int | None = None  # None: batch_size
    checkpoint_interval: int = 1000  # steps between step-N checkpoints (0: only best and last)
    keep_last: int = 3  # step-N checkpoints kept (0: keep all)
    log_interval: int = 10  # steps between metrics.jsonl train lines and progress updates
    tensorboard: bool = True  # when the tensorboard package is installed
    wandb: bool = True  # when wandb is installed; offline unless WANDB_MODE says otherwise
    samples: int = 3  # samples generated into samples.md at the end (0: none)
    sample_tokens: int = 200
    # -- reproducibility, guards --------------------------------------------------------------
    seed: int = 1337
    nan_policy: str = "stop"  # a NaN/inf loss: "stop" (keep the last good checkpoint) or "skip" the step
    max_skipped_steps: int = 10  # skip policy: stop after this many consecutive skipped steps
    # -- hardware -----------------------------------------------------------------------------
    device: str = "auto"  # "auto" (CUDA > MPS > CPU), "cpu", "cuda", "cuda:1", "mps"
    precision: str = "auto"  # "auto" (bf16 where supported, fp16 on older GPUs, else fp32), or one of those
    compile: bool = False  # torch.compile the model (falls back to eager with a warning)
    activation_checkpointing: bool = False
    parallelism: str = "ddp"  # under torchrun: "ddp", or "fsdp" (FSDP2, for models that do not fit)
    peak_tflops: float | None = None  # the device's peak for MFU (None: known GPUs only)
    # CPU intra-op threads: "auto" (follow other processes' load on CPU; OMP_NUM_THREADS wins) or a
    # fixed number (needed for bitwise-identical resumes)
    threads: int | str = "auto"

    def validate(self) -> TrainConfig:
        """Raise SlmError naming the first field whose value cannot work; return self otherwise."""
        def whole(name: str, minimum: int, optional: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise SlmError(f"train.{name} = {value!r}: must be a whole number >= {minimum}")

        def number(name: str, minimum: float, optional: bool = False, strict: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or value < minimum or (strict and value == minimum):
                relation = ">" if strict else ">="
                raise SlmError(f"train.{name} = {value!r}: must be a number {relation} {minimum}")

        for name in ("batch_size", "grad_accum", "max_steps", "eval_batches"):
            whole(name, 1)
        for name in ("warmup_steps", "eval_interval", "checkpoint_interval", "keep_last", "log_interval",
                     "samples", "sample_tokens", "seed", "max_skipped_steps"):
            whole(name, 0)
        whole("seq_len", 1, optional=True)
        whole("tokens_per_step", 1, optional=True)
        whole("max_tokens", 1, optional=True)
        whole("eval_batch_size", 1, optional=True)
        number("lr", 0, strict=True)
        number("muon_lr", 0, strict=True)
        number("min_lr", 0, optional=True)
        number("time_budget", 0, optional=True, strict=True)
        number("weight_decay", 0)
        number("eps", 0, strict=True)
        number("grad_clip", 0, optional=True)
        number("peak_tflops", 0, optional=True, strict=True)
        for name in ("beta1", "beta2", "muon_momentum"):
            number(name, 0)
            if getattr(self, name) >= 1:
                raise SlmError(f"train.{name} = {getattr(self, name)!r}: must be in [0, 1)")
        if not 0 <= self.decay_fraction <= 1:
            raise SlmError(f"train.decay_fraction = {self.decay_fraction!r}: must be in [0, 1]")
        if self.dropout is not None and not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise SlmError(f"train.dropout = {self.dropout!r}: must be in [0, 1)")
        if self.ema_decay is not None and not (isinstance(self.ema_decay, (int, float))
                                               and not isinstance(self.ema_decay, bool) and 0 < self.ema_decay < 1):
            raise SlmError(f"train.ema_decay = {self.ema_decay!r}: must be in (0, 1), e.g. 0.999 (or none for no EMA)")
        if self.ema_decay is not None and self.parallelism == "fsdp":
            raise SlmError(f"train.ema_decay = {self.ema_decay!r} is not supported with train.parallelism = \"fsdp\" "
                           f"(the weights are sharded); use train.parallelism = \"ddp\" or set train.ema_decay = none")
        if self.min_lr is not None and self.min_lr > self.lr:
            raise SlmError(f"train.min_lr = {self.min_lr} is above train.lr = {self.lr}; lower it")
        for name, allowed in (("schedule", SCHEDULES), ("optimizer", OPTIMIZERS), ("precision", PRECISIONS),
                              ("nan_policy", NAN_POLICIES), ("parallelism", PARALLELISMS)):
            if getattr(self, name) not in allowed:
                raise SlmError(f"train.{name} = {getattr(self, name)!r}: must be one of {', '.join(allowed)}")
        for name in ("compile", "activation_checkpointing", "tensorboard", "wandb"):
            if not isinstance(getattr(self, name), bool):
                raise SlmError(f"train.{name} = {getattr(self, name)!r}: must be true or false")
        if self.threads != "auto" and (not isinstance(self.threads, int) or isinstance(self.threads, bool)
                                       or self.threads < 1):
            raise SlmError(f"train.threads = {self.threads!r}: must be \"auto\" or a whole number >= 1")
        if not isinstance(self.device, str) or self.device.split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
            raise SlmError(f"train.device = {self.device!r}: must be auto, cpu, cuda, cuda:N or mps")
        return self

    @property
    def floor_lr(self) -> float:
        """The lowest learning rate the schedule decays to."""
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, where: str = "train config") -> TrainConfig:
        """Build a config from a mapping, refusing unknown keys (with the nearest known name)."""
        return dataclass_from_dict(cls, values, where)

    def replace(self, **changes) -> TrainConfig:
        values = self.to_dict()
        values.update(changes)
        return TrainConfig.from_dict(values).validate()
