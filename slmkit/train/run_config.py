"""The run config: every input of a training run resolved and checked once, before anything is written.

`resolve_run(...)` turns what a user gives (a preset, a config file, `--set` overrides, a dataset,
an output directory, `--resume RUN` or `--init-from CKPT`) into one frozen `RunConfig`. Resuming
reads the run's config.json once and applies the overrides on top of it; `--init-from` reads the
checkpoint's model config. The derived numbers (sequence length, gradient accumulation from
train.tokens_per_step, max_steps from train.max_tokens) are computed here, so the trainer only runs.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from slmkit import __version__
from slmkit.config import load_config_sections
from slmkit.data.loader import open_dataset
from slmkit.errors import SlmError
from slmkit.model.checkpoint import read_checkpoint_config
from slmkit.model.config import ModelConfig
from slmkit.rundir import (
    CHECKPOINTS,
    RUN_FORMAT,
    STEP_DIR,
    read_run_config,
    resolve_checkpoint_dir,
    step_checkpoints,
)
from slmkit.train.checkpointer import STATE_FILE, architecture_differences
from slmkit.train.config import TrainConfig
from slmkit.train.distributed import world_size_from_environment
from slmkit.utils import check_replaceable


@dataclass(frozen=True)
class RunConfig:
    """A training run, fully resolved. Sizes in tokens; paths absolute where they are inputs."""

    model: ModelConfig
    train: TrainConfig  # grad_accum and max_steps already derived from tokens_per_step / max_tokens
    data_dir: Path
    run_dir: Path
    seq_len: int  # tokens per training sequence
    tokens_per_step: int  # all processes, all micro-batches
    world_size: int = 1
    data_identity: dict = field(default_factory=dict)  # see dataset_identity; checked on resume
    resume_from: Path | None = None  # the checkpoint an exact resume starts from
    init_from: Path | None = None  # the checkpoint whose weights started the run (kept across resumes)
    overwrite: bool = False
    lora: dict | None = None  # a fine-tune's LoRA options (slmkit.finetune.lora.LoraOptions); None: all weights train
    packing: bool = True  # a fine-tune's examples: packed several per row, or one per padded row

    @property
    def resume(self) -> bool:
        return self.resume_from is not None

    @property
    def load_init_weights(self) -> bool:
        """Whether the trainer starts from init_from's weights (a new run; a resume has its own)."""
        return self.init_from is not None and self.resume_from is None


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



def run_record(run: RunConfig, meta: dict, parameters: int, dist, setup, flops_per_token: float,
               peak_flops: float | None, peak_flops_source: str = "") -> dict:
    """The run's config.json: the resolved configs plus what was measured or chosen at start (the
    device, the precision, FLOPs per token and the peak they are measured against)."""
    return {
        "format": RUN_FORMAT, "version": 1, "slmkit_version": __version__,
        "model": run.model.to_dict(),
        "train": run.train.to_dict(),
        "data": {"path": str(run.data_dir), "vocab_size": meta.get("vocab_size"),
                 "tokenizer": meta.get("tokenizer"), "splits": meta.get("splits"), "identity": run.data_identity},
        "init_from": str(run.init_from) if run.init_from else None,
        "finetune": {"lora": run.lora, "packing": run.packing, "base_weights_sha256": _weights_sha256(run.init_from)}
                    if _is_finetune(meta) else None,
        "parameters": parameters,
        "seq_len": run.seq_len,
        "tokens_per_step": run.tokens_per_step,
        "world_size": dist.world_size,
        "parallelism": run.train.parallelism if dist.enabled else None,
        "device": setup.description,
        "precision": setup.precision,
        "compile": run.train.compile,
        "flops_per_token": flops_per_token,
        "peak_flops": peak_flops,
        "peak_flops_source": peak_flops_source,
    }


SAMPLE_BLOCKS, BLOCK_BYTES = 16, 1 << 16  # 1 MiB of each split file is hashed: cheap at any size


def dataset_identity(dataset) -> dict:
    """What makes a dataset the one a run trained on: a hash of its tokenizer files, and per split
    the token count, dtype and a hash of 16 blocks of 64 KiB spread over the .bin file (with its
    size), which a re-prepared dataset with other ids or other text cannot keep."""
    tokenizer = hashlib.sha256()
    for path in sorted(dataset.dir.iterdir()):
        if path.is_file() and path.name not in ("train.bin", "val.bin", "meta.json") and not path.name.startswith("."):
            tokenizer.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    splits = {}
    for split in ("train", "val"):
        path = dataset.dir / f"{split}.bin"
        size = path.stat().st_size
        digest = hashlib.sha256(str(size).encode())
        with open(path, "rb") as handle:
            for index in range(SAMPLE_BLOCKS):
                handle.seek(max(0, size - BLOCK_BYTES) * index // max(1, SAMPLE_BLOCKS - 1))
                digest.update(handle.read(BLOCK_BYTES))
        splits[split] = {"tokens": int(dataset.meta["splits"][split]["tokens"]), "sha256_sampled": digest.hexdigest()}
    return {"tokenizer_sha256": tokenizer.hexdigest(), "dtype": str(dataset.meta["dtype"]), "splits": splits}


def identity_changes(before: dict, now: dict) -> list[str]:
    """What differs between two dataset identities, in words ([] when they match)."""
    changes = []
    if before.get("tokenizer_sha256") != now.get("tokenizer_sha256"):
        changes.append("its tokenizer files differ (token ids would mean other text)")
    if before.get("dtype") != now.get("dtype"):
        changes.append(f"token dtype {before.get('dtype')} then, {now.get('dtype')} now")
    for split, then in before.get("splits", {}).items():
        current = now.get("splits", {}).get(split, {})
        if then.get("tokens") != current.get("tokens"):
            changes.append(f"the {split} split held {then.get('tokens'):,} tokens then, {current.get('tokens', 0):,} now")
        elif then.get("sha256_sampled") != current.get("sha256_sampled"):
            changes.append(f"the {split} split's tokens differ (same count)")
    return changes


SFT_FORMAT = "slmkit-sft-data"  # meta.json format of a fine-tune's examples (slmkit.finetune.sft_data)


def _is_finetune(meta: dict) -> bool:
    return meta.get("format") == SFT_FORMAT


def open_training_data(directory: str | Path, seq_len: int | None = None, packing: bool = True):
    """The dataset a run trains on: a pretraining dataset (`slm prepare`), or a fine-tune's examples
    (slmkit.finetune.sft_data, rows rendered with the chat template), told apart by meta.json."""
    try:
        meta = json.loads((Path(directory) / "meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    if _is_finetune(meta):
        from slmkit.finetune.sft_data import open_sft_data  # the fine-tune's data (same layer)

        data = open_sft_data(directory, packing=packing)
        if seq_len is not None:
            data.check_window("train", seq_len)
        return data
    return open_dataset(directory, seq_len=seq_len)


def free_run_dir(out: str | Path) -> Path:
    """`out` itself when unused, else out-2, out-3, ... (never an existing run)."""
    out = Path(out)
    if not out.exists() or not any(out.iterdir()):
        return out
    index = 2
    while Path(f"{out}-{index}").exists():
        index += 1
    return Path(f"{out}-{index}")


def resolve_run(data: str | Path | None = None, out: str | Path | None = None, *, preset: str | None = None,
                config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                model_config: ModelConfig | None = None, train_config: TrainConfig | None = None,
                resume: str | Path | None = None, resume_from: str | Path | None = None,
                init_from: str | Path | None = None, overwrite: bool = False,
                world_size: int | None = None, extend_vocab: bool = False, lora: dict | None = None,
                packing: bool = True) -> RunConfig:
    """One RunConfig from a preset < config file < overrides (or ModelConfig/TrainConfig objects).

    resume: a run directory to continue exactly (its config.json is the base the overrides apply
    to; its dataset is reused unless `data` is given). resume_from: which checkpoint of that run to
    continue from: "last" (the default), "best", "step-N", or a checkpoint directory. init_from: a checkpoint or run directory
    whose weights start a new run (its model config is used). extend_vocab: a fine-tune whose
    tokenizer gained tokens (the chat tokens) over init_from's: the model's vocabulary grows to the
    dataset's. lora: LoRA options (a dict) to train adapters only; packing: a fine-tune's example
    layout. `out` defaults to runs/<model name>
    (runs/<name>-2 and so on when taken). Raises SlmError for anything that cannot work, naming
    it; nothing is written.
    """
    world_size = world_size or world_size_from_environment()
    if resume_from is not None and resume is None:
        raise SlmError(f"--from {resume_from} chooses the checkpoint a resumed run continues from: use it with "
                       f"--resume RUN (to start a new run from a checkpoint's weights, use --init-from)")
    sections = load_config_sections(preset, config, overrides)
    saved = read_run_config(resume) if resume is not None else None
    if train_config is None:
        values = {**saved["train"], **sections["train"]} if saved else sections["train"]
        train_config = TrainConfig.from_dict(values, where="train config")
    train_config = train_config.validate()
    if model_config is None and sections["model"]:
        values = {**saved["model"], **sections["model"]} if saved else sections["model"]
        model_config = ModelConfig.from_dict(values, where="model config").validate()

    # -- the model: from the run (resume), a checkpoint (init_from), or as given ----------------
    resume_dir = init_dir = None
    if saved is not None:
        run_dir = Path(resume)
        saved_model = ModelConfig.from_dict(saved["model"], where=str(run_dir / "config.json")).validate()
        model_config = _same_network(saved_model, model_config, f"cannot resume {run_dir} with a different model "
                                     f"config ({{}}); drop the model overrides, or start a new run with "
                                     f"--init-from {run_dir}")
        data = data if data is not None else saved["data"]["path"]
        init_dir = Path(saved["init_from"]) if saved.get("init_from") else None
        resume_dir = _resume_checkpoint(run_dir, resume_from)
        finetune = saved.get("finetune") or {}
        lora, packing = finetune.get("lora"), finetune.get("packing", True)
        if lora and (init_dir is None or not init_dir.is_dir()):
            raise SlmError(f"cannot resume the LoRA fine-tune {run_dir}: its base checkpoint {init_dir} is gone "
                           f"(the adapters need it); restore it there")
        if lora and finetune.get("base_weights_sha256") not in (None, _weights_sha256(init_dir)):
            raise SlmError(f"cannot resume the LoRA fine-tune {run_dir}: its base checkpoint {init_dir} holds other "
                           f"weights now (sha256 {str(_weights_sha256(init_dir))[:12]}, the run started from "
                           f"{finetune['base_weights_sha256'][:12]}); put the original base back there")
    elif init_from is not None:
        init_dir = resolve_checkpoint_dir(init_from)
        meta = read_checkpoint_config(init_dir)
        source_config = ModelConfig.from_dict(meta["model"], where=str(init_dir / "config.json")).validate()
        model_config = _same_network(source_config, model_config, f"--init-from {init_from}: its model differs "
                                     f"from the config given ({{}}); drop the model settings to use the "
                                     f"checkpoint's own")
    if data is None:
        raise SlmError("no dataset given: pass --data DIR (a directory made by `slm prepare`)")
    if model_config is None:
        raise SlmError("no model given: name a preset (--preset, see `slm presets`) or a config file (--config)")
    if train_config.dropout is not None:
        model_config = model_config.replace(dropout=float(train_config.dropout))
    model_config = model_config.validate()

    # -- data and shapes --------------------------------------------------------------------------
    seq_len = train_config.seq_len or model_config.context_length
    if seq_len > model_config.context_length:
        raise SlmError(f"train.seq_len = {seq_len} exceeds the model context {model_config.context_length}; "
                       f"lower train.seq_len or raise --set context_length={seq_len}")
    dataset = open_training_data(data, seq_len=seq_len, packing=packing)
    identity = dataset_identity(dataset)
    if saved is not None and saved["data"].get("identity"):
        changes = identity_changes(saved["data"]["identity"], identity)
        if changes:
            raise SlmError(f"the dataset {dataset.dir} is not the one {run_dir} was trained on: {'; '.join(changes)}. "
                           f"Resume with the original dataset (`slm prepare` with the same inputs and options "
                           f"rebuilds it), or start a new run from this run's weights with --init-from {run_dir}")
    data_vocab = int(dataset.meta["vocab_size"])
    if extend_vocab and saved is None and data_vocab > model_config.vocab_size:
        model_config = model_config.replace(vocab_size=data_vocab)  # the added tokens get new embedding rows
    if data_vocab != model_config.vocab_size:
        raise SlmError(f"the dataset's tokenizer has {data_vocab:,} tokens but the model's vocab_size is "
                       f"{model_config.vocab_size:,}; add --set vocab_size={data_vocab} (or prepare the "
                       f"data with a tokenizer of {model_config.vocab_size:,} tokens)")
    per_micro = train_config.batch_size * seq_len * world_size
    if train_config.tokens_per_step:
        if train_config.tokens_per_step % per_micro:
            raise SlmError(f"train.tokens_per_step = {train_config.tokens_per_step} is not a multiple of "
                           f"batch_size x seq_len x processes = {per_micro}; use a multiple, e.g. "
                           f"{max(1, round(train_config.tokens_per_step / per_micro)) * per_micro}")
        train_config = train_config.replace(grad_accum=train_config.tokens_per_step // per_micro)
    tokens_per_step = per_micro * train_config.grad_accum
    if train_config.max_tokens:
        train_config = train_config.replace(max_steps=max(1, math.ceil(train_config.max_tokens / tokens_per_step)))
    if lora and train_config.parallelism == "fsdp" and world_size > 1:
        raise SlmError("LoRA with train.parallelism = 'fsdp' is not supported; use ddp (adapters are small)")
    if train_config.optimizer == "muon" and train_config.parallelism == "fsdp" and world_size > 1:
        raise SlmError("train.optimizer = 'muon' with parallelism = 'fsdp' is not supported; use ddp or adamw")

    # -- the run directory ------------------------------------------------------------------------
    if saved is None:
        if out is None:  # runs/<model name>, or the next free runs/<name>-N
            out = free_run_dir(Path("runs") / (model_config.name or "run"))
        run_dir = Path(out)
        if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
            raise SlmError(f"run directory {run_dir} already exists; pass --overwrite to replace it, "
                           f"or --resume {run_dir} to continue it")
        if overwrite:  # --overwrite replaces a run, never an input, a dataset or a folder of runs
            check_replaceable(run_dir, inputs=(dataset.dir, init_dir), kind="a training run", marker=".slmkit-run",
                              legacy_output=_is_run(run_dir))
    return RunConfig(model=model_config, train=train_config, data_dir=dataset.dir.resolve(), run_dir=run_dir,
                     seq_len=seq_len, tokens_per_step=tokens_per_step, world_size=world_size, data_identity=identity,
                     resume_from=resume_dir, init_from=init_dir, overwrite=overwrite, lora=lora, packing=packing)


def _weights_sha256(checkpoint: Path | None) -> str | None:
    """The weights hash a checkpoint's config.json records (None without a checkpoint)."""
    return read_checkpoint_config(checkpoint).get("weights_sha256") if checkpoint is not None else None


def _is_run(path: Path) -> bool:
    """Whether `path` is a run directory (its config.json is a run config)."""
    try:
        read_run_config(path)
        return True
    except SlmError:
        return False


def _same_network(source: ModelConfig, given: ModelConfig | None, message: str) -> ModelConfig:
    """`source`, after checking that `given` (when any) is the same network; else SlmError(message
    with the differences in its {})."""
    if given is not None and (differences := architecture_differences(source, given)):
        raise SlmError(message.replace("{}", "; ".join(differences[:4]), 1))
    return source


def _resume_checkpoint(run_dir: Path, chosen: str | Path | None = None) -> Path:
    """The checkpoint a resume starts from: `chosen` ("last", "best", "step-N" or a checkpoint
    directory), else last/, else the newest step-N/."""
    checkpoints = run_dir / CHECKPOINTS
    if chosen is not None:
        name = str(chosen)
        path = checkpoints / name if (name in ("last", "best") or STEP_DIR.match(name)) else Path(name)
        if not (path / STATE_FILE).is_file():
            names = [p.name for p in checkpoints.iterdir() if (p / STATE_FILE).is_file()] if checkpoints.is_dir() else []
            available = sorted(names, key=lambda n: (bool(STEP_DIR.match(n)), int(n[5:]) if STEP_DIR.match(n) else n))
            raise SlmError(f"--from {name}: {path} is not a resumable checkpoint (no {STATE_FILE}); this run has "
                           f"{', '.join(available) or 'none'}")
        return path
    last = checkpoints / "last"
    if (last / STATE_FILE).is_file():
        return last
    steps = step_checkpoints(run_dir)
    if steps:
        return steps[-1][1]
    raise SlmError(f"{run_dir} has no checkpoint to resume from (checkpoints/last is missing); "
                   f"start it again with --overwrite")
