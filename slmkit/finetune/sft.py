"""A fine-tune resolved into an ordinary training run: other data, other trainable parameters, another
loss mask, the same trainer.

    run = resolve_finetune("runs/quickstart", FinetuneOptions(lora=True), overrides=["train.max_steps=300"])
    Trainer(run).run()

`resolve_finetune` finds the base checkpoint and its tokenizer, adds the chat tokens when the base has
none (the model's embedding grows by two rows, initialised to the mean row), renders the rows with the
chat template into an SFT data directory (reused when the same rows, tokenizer and settings were
prepared before), and returns a RunConfig whose dataset is those examples (targets only on response
tokens, packed with attention kept inside each example) and whose model starts from the base
weights, with LoRA adapters when asked.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from slmkit.config import load_config_sections
from slmkit.errors import SlmError
from slmkit.finetune.chat import has_chat_tokens, with_chat_tokens
from slmkit.finetune.lora import LoraOptions
from slmkit.finetune.sft_data import prepare_sft_data
from slmkit.model.checkpoint import read_checkpoint_config
from slmkit.model.config import ModelConfig
from slmkit.rundir import resolve_checkpoint_dir
from slmkit.tokenizer import load_tokenizer
from slmkit.train import TrainConfig
from slmkit.train.run_config import SFT_FORMAT, RunConfig, free_run_dir, resolve_run
from slmkit.utils import option

SHIPPED_INSTRUCTIONS = Path(__file__).parent / "instructions.jsonl"
OVERLONG = ("truncate", "drop")

# A fine-tune's training defaults: short, gentle, evaluated often; `--set train.FIELD=VALUE` overrides.
FINETUNE_TRAIN = dict(max_steps=300, lr=1e-3, warmup_steps=20, schedule="cosine", weight_decay=0.0,
                      batch_size=16, eval_interval=50, eval_batches=50, checkpoint_interval=0, samples=0,
                      dropout=0.0)
LORA_TRAIN = dict(lr=3e-3)  # adapters start at zero and move only a few parameters: a larger rate


@dataclass
class FinetuneOptions:
    """The inputs of `slm finetune` beside the base model (one flag per field)."""

    data: str | None = option(None, "JSONL rows: {\"prompt\", \"response\"} or {\"messages\": [...]} "
                                    "(default: the shipped instruction set)", metavar="ROWS.jsonl")
    out: str | None = option(None, "the run directory (default runs/<base>-sft, or the next free name)")
    data_dir: str | None = option(None, "where the tokenized examples go (default data/sft-<rows>-<hash>; "
                                        "reused when the same rows and settings were prepared)")
    seq_len: int | None = option(None, "tokens per packed row (default: the base model's context, at most 512)")
    val_fraction: float = option(0.1, "share of the rows held out for validation")
    overlong: str = option("truncate", "an example longer than a row: truncate it or drop it", choices=OVERLONG)
    packing: bool = option(True, "pack several examples per row (attention stays inside each); "
                                 "--no-packing pads one example per row")
    lora: bool = option(False, "train LoRA adapters only; the base weights stay frozen")
    lora_rank: int = option(8, "LoRA rank")
    lora_alpha: float = option(16.0, "LoRA alpha (the update is scaled by alpha / rank)")
    lora_dropout: float = option(0.0, "dropout on the LoRA input")
    # every linear layer by default: on the quick-start model it beat attention only (docs/finetuning.md)
    lora_targets: list[str] = option(help="a layer that gets adapters, by name: qkv, out, up, gate, down, or "
                                          "attention, mlp, all (repeatable; default: all)",
                                     default_factory=lambda: ["all"], metavar="NAME")
    overrides: list[str] = option(help="override a training field, e.g. --set train.max_steps=500 (repeatable)",
                                  flag="--set", metavar="FIELD=VALUE", default_factory=list)
    overwrite: bool = option(False, "replace an existing run directory")
    seed: int = option(0, "seed of the train/validation split of the rows")

    def lora_options(self) -> LoraOptions | None:
        if not self.lora:
            return None
        return LoraOptions(rank=self.lora_rank, alpha=self.lora_alpha, dropout=self.lora_dropout,
                           targets=tuple(self.lora_targets)).validate()


@dataclass
class FinetunePlan:
    """What `resolve_finetune` decided, for the announcement and the report."""

    run: RunConfig
    base: Path
    rows: Path
    added_chat_tokens: bool
    lora: LoraOptions | None


def resolve_finetune(base: str | os.PathLike, options: FinetuneOptions | None = None) -> FinetunePlan:
    """A fine-tune of the checkpoint (or run) `base` as a training RunConfig, with its SFT data prepared.

    Raises SlmError for a missing base or tokenizer, bad rows (file and line named), bad options or an
    output directory in the way; nothing is written before the rows are validated.
    """
    options = options or FinetuneOptions()
    if options.overlong not in OVERLONG:
        raise SlmError(f"--overlong {options.overlong!r}: must be one of {', '.join(OVERLONG)}")
    if not 0 < options.val_fraction < 1:
        raise SlmError(f"--val-fraction {options.val_fraction}: must be between 0 and 1 (e.g. 0.1)")
    lora = options.lora_options()
    base_dir = resolve_checkpoint_dir(base)
    base_meta = read_checkpoint_config(base_dir)
    base_model = ModelConfig.from_dict(base_meta["model"], where=str(base_dir / "config.json")).validate()
    try:
        tokenizer = load_tokenizer(base_dir)
    except SlmError as error:
        raise SlmError(f"the base checkpoint {base_dir} has no usable tokenizer ({error}); fine-tuning renders "
                       f"text with the base's own tokenizer") from None
    added = not has_chat_tokens(tokenizer)
    if added:
        tokenizer = with_chat_tokens(tokenizer)

    sections = load_config_sections(None, None, options.overrides)
    if sections["model"]:
        raise SlmError(f"a fine-tune keeps the base model's shape; drop the model overrides "
                       f"({', '.join(sorted(sections['model']))}) or use train.FIELD")
    values = {**FINETUNE_TRAIN, **(LORA_TRAIN if lora else {}), **sections["train"]}
    train = TrainConfig.from_dict(values, where="fine-tune train config").validate()
    seq_len = options.seq_len or train.seq_len or min(base_model.context_length, 512)
    if seq_len > base_model.context_length:
        raise SlmError(f"--seq-len {seq_len} exceeds the base model's context {base_model.context_length}")
    train = train.replace(seq_len=seq_len)

    rows = Path(options.data) if options.data else SHIPPED_INSTRUCTIONS
    if not rows.is_file():
        raise SlmError(f"fine-tuning rows not found: {rows} (a JSONL file of prompt/response pairs or chat "
                       f"messages)")
    settings = {"seq_len": seq_len, "val_fraction": options.val_fraction, "overlong": options.overlong,
                "seed": options.seed, "tokenizer_vocab": tokenizer.vocab_size, "tokenizer": tokenizer.name,
                "base_tokenizer_sha256": _tokenizer_digest(base_dir)}
    fingerprint = hashlib.sha256(rows.read_bytes() + json.dumps(settings, sort_keys=True).encode()).hexdigest()
    data_dir = Path(options.data_dir) if options.data_dir else Path("data") / f"sft-{rows.stem}-{fingerprint[:10]}"
    if not _prepared(data_dir, fingerprint):
        prepare_sft_data(rows, tokenizer, data_dir, seq_len=seq_len, val_fraction=options.val_fraction,
                         seed=options.seed, overlong=options.overlong, overwrite=data_dir.exists(),
                         fingerprint=fingerprint)
    out = options.out
    if out is None:
        out = free_run_dir(Path("runs") / f"{base_model.name or 'model'}-sft")
    run = resolve_run(data_dir, out, train_config=train, init_from=base_dir, overwrite=options.overwrite,
                      extend_vocab=True, lora=lora.to_dict() if lora else None, packing=options.packing)
    return FinetunePlan(run=run, base=base_dir, rows=rows, added_chat_tokens=added, lora=lora)


def _prepared(data_dir: Path, fingerprint: str) -> bool:
    """Whether `data_dir` already holds the SFT data of these rows and settings."""
    try:
        meta = json.loads((data_dir / "meta.json").read_text())
        return meta.get("format") == SFT_FORMAT and meta.get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def _tokenizer_digest(directory: Path) -> str:
    """A hash of a checkpoint's tokenizer files (what makes its ids mean the same text)."""
    digest = hashlib.sha256()
    for name in ("slmkit_tokenizer.json", "tokenizer.json"):
        if (directory / name).is_file():
            digest.update((directory / name).read_bytes())
    return digest.hexdigest()
