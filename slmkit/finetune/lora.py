"""LoRA adapters on an slmkit Transformer, through PEFT: add, summarise, save, load, merge.

    from slmkit.finetune.lora import LoraOptions, add_lora, save_adapter, merge_adapter
    model = load_model("runs/nano/checkpoints/best")
    add_lora(model, LoraOptions(rank=8, targets=("attention",)))   # base frozen, adapters train
    print(format_lora_summary(lora_summary(model)))
    ... train ...
    save_adapter(model, "adapters/nano-chat", base_dir="runs/nano/checkpoints/best", options=options)
    merge_adapter("adapters/nano-chat", "merged/nano-chat")           # a plain slmkit checkpoint

PEFT's `inject_adapter_in_model` wraps the chosen nn.Linear layers in place, so the model stays our
Transformer (its forward, KV cache, generation and loss code keep working). The adapter directory holds
PEFT's own files (adapter_config.json, adapter_model.safetensors with PEFT's key names, loadable by
`peft.PeftModel.from_pretrained` on an slmkit Transformer) plus slmkit_adapter.json naming the base
checkpoint and the sha256 of its weights, so an adapter is never applied to another model.
PEFT is an optional dependency: it is imported inside the functions that need it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from slmkit.errors import SlmError
from slmkit.model.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_model,
    load_weights,
    model_state,
    read_checkpoint_config,
    save_model,
    sha256_file,
)
from slmkit.model.config import ModelConfig
from slmkit.model.transformer import Transformer
from slmkit.rundir import resolve_checkpoint_dir
from slmkit.tokenizer.base import MANIFEST
from slmkit.utils import (
    atomic_dir,
    check_replaceable,
    dataclass_from_dict,
    megabytes,
    option,
    output_errors,
    write_json_atomic,
    write_marker,
)

ADAPTER_FORMAT = "slmkit-adapter"
ADAPTER_VERSION = 1
ADAPTER_META = "slmkit_adapter.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT's file names, so PEFT tooling reads the directory
ADAPTER_CONFIG = "adapter_config.json"
ADDED_ROWS = "added_tokens.safetensors"  # embedding (and untied head) rows of tokens the fine-tune added
ADAPTER_MARKER = ".slmkit-adapter"
MERGE_MARKER = ".slmkit-merge-lora"
ADAPTER_NAME = "default"  # PEFT's name for a model's one adapter
PEFT_PREFIX = "base_model.model."  # how PeftModel.save_pretrained names tensors; we write the same keys
PEFT_MISSING = "LoRA needs the peft package: pip install 'slmkit[finetune]'"

TARGET_GROUPS = {
    "attention": ("qkv", "out"),
    "mlp": ("up", "gate", "down"),
    "all": ("qkv", "out", "up", "gate", "down"),
}
TARGET_ALIASES = {"o": "out"}  # the usual name of the attention output projection
FUSED_QKV = ("q", "k", "v")
# Files of a checkpoint or adapter directory that are not the tokenizer's (everything else is).
NOT_TOKENIZER_FILES = {CONFIG_FILE, WEIGHTS_FILE, "training_state.pt", ADAPTER_META, ADAPTER_WEIGHTS, ADAPTER_CONFIG,
                       ADDED_ROWS,
                       ADAPTER_MARKER, MERGE_MARKER, "README.md"}


@dataclass
class LoraOptions:
    """LoRA adapters: rank r, scale alpha / r, dropout on the adapter's input, and the layers adapted."""

    rank: int = option(8, "rank r of each adapter (the width of its A and B matrices)", metavar="R")
    alpha: float = option(16.0, "scale: the adapter's output is multiplied by alpha / rank", metavar="ALPHA")
    dropout: float = option(0.0, "dropout on the adapter's input while training, in [0, 1)", metavar="P")
    targets: tuple[str, ...] = option(
        ("qkv", "out"),
        "linear layers to adapt, by name: qkv (the fused Q, K, V projection), out (or o), up, gate, down, "
        "lm_head (untied head only), or the groups attention (qkv, out), mlp (up, gate, down), all (both)",
        metavar="NAMES")

    def __post_init__(self) -> None:
        # "qkv,out", ["qkv,out"] or ["qkv", "out"]: from a config file or a repeated command-line flag
        words = [self.targets] if isinstance(self.targets, str) else list(self.targets)
        self.targets = tuple(word.strip() for text in words for word in str(text).split(",") if word.strip())

    def validate(self) -> LoraOptions:
        """Raise SlmError naming the first option whose value cannot work; return self otherwise."""
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise SlmError(f"lora rank = {self.rank!r}: must be a whole number of at least 1 (8 or 16 are usual)")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not self.alpha > 0:
            raise SlmError(f"lora alpha = {self.alpha!r}: must be a positive number (usually 1 to 2 x the rank)")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or \
                not 0.0 <= self.dropout < 1.0:
            raise SlmError(f"lora dropout = {self.dropout!r}: must be in [0, 1)")
        if not self.targets:
            raise SlmError("lora targets is empty: name at least one layer, e.g. qkv,out or attention")
        for word in self.targets:
            if word in FUSED_QKV:
                raise SlmError(f"lora target {word!r}: slmkit computes Q, K and V with one fused Linear, qkv; "
                               f"target qkv to adapt all three (one adapter on the fused projection)")
        return self

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["targets"] = list(self.targets)
        return values

    @classmethod
    def from_dict(cls, values: dict, where: str = "lora options") -> LoraOptions:
        return dataclass_from_dict(cls, values, where)


# -- adding adapters ------------------------------------------------------------------------------
def require_peft():
    """The peft module, or SlmError saying how to install it."""
    try:
        import peft
    except ImportError:
        raise SlmError(PEFT_MISSING) from None
    return peft


def linear_layer_names(model: Transformer) -> list[str]:
    """The distinct last components of the model's nn.Linear module names, in model order
    (e.g. qkv, out, up, gate, down, lm_head)."""
    names = []
    for name, module in model.named_modules():
        leaf = name.rpartition(".")[2]
        is_linear = isinstance(module, torch.nn.Linear) or isinstance(getattr(module, "base_layer", None),
                                                                      torch.nn.Linear)
        if is_linear and leaf not in names and not _inside_adapter(name):
            names.append(leaf)
    return names


def _inside_adapter(name: str) -> bool:
    return any(part in ("lora_A", "lora_B", "base_layer") for part in name.split("."))


def resolve_targets(model: Transformer, options: LoraOptions) -> list[str]:
    """The layer names (last name components) `options.targets` selects in `model`, in model order.

    Group words select the members the model has (a GELU MLP has no gate). Raises SlmError for a name
    that matches no linear layer (listing those that exist) and for lm_head when it is tied to the
    embedding."""
    options.validate()
    available = linear_layer_names(model)
    chosen = set()
    for word in options.targets:
        if word in TARGET_GROUPS:
            chosen.update(name for name in TARGET_GROUPS[word] if name in available)
            continue
        name = TARGET_ALIASES.get(word, word)
        if name not in available:
            raise SlmError(f"lora target {word!r} matches no linear layer of this model; its linear layers are "
                           f"{', '.join(available)} (or the groups {', '.join(TARGET_GROUPS)})")
        if name == "lm_head" and model.config.tie_embeddings:
            raise SlmError("lora target 'lm_head': this model's output head is tied to the token embedding, so an "
                           "adapter on it would change the embedding too when merged; leave lm_head out")
        chosen.add(name)
    return [name for name in available if name in chosen]


def add_lora(model: Transformer, options: LoraOptions) -> Transformer:
    """Add LoRA adapters to `model` in place (PEFT's inject_adapter_in_model) and freeze every base
    parameter, so that only the adapters train. A new adapter's B is zero: the outputs are unchanged
    until it trains. Returns the model (still an slmkit Transformer).

    Raises SlmError for bad options, a target that matches no layer, a model that has adapters already,
    or a missing peft package."""
    targets = resolve_targets(model, options)
    if lora_layers(model):
        raise SlmError("this model has LoRA adapters already; merge them (merge_lora) before adding new ones")
    peft = require_peft()
    config = peft.LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                             target_modules=targets, bias="none")
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(_is_adapter_tensor(name))
    return model


def _is_adapter_tensor(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def lora_layers(model) -> dict[str, torch.nn.Module]:
    """{module name: PEFT LoRA layer} of the model's adapted layers, in model order ({} without adapters)."""
    return {name: module for name, module in model.named_modules()
            if hasattr(module, "lora_A") and hasattr(module, "base_layer") and ADAPTER_NAME in module.lora_A}


# -- what trains, and what it costs ---------------------------------------------------------------
def lora_summary(model) -> dict:
    """Counts and memory of a model's adapters: rank, alpha, layers adapted, trainable and total
    parameters (unique; adapters included), bytes of the trainable parameters and of AdamW's state
    for them (two moments, each the size of the parameters)."""
    layers = lora_layers(model)
    if not layers:
        raise SlmError("this model has no LoRA adapters: add them with add_lora first")
    first = next(iter(layers.values()))
    trainable = [p for p in model.parameters() if p.requires_grad]
    # a matrix of which only some rows train (the embedding rows of tokens a fine-tune added,
    # `trainable_rows` set by the trainer) counts those rows; Adam still keeps moments for all of it
    adapter_bytes = sum(_trained_numel(p) * p.element_size() for p in trainable)
    state_bytes = 2 * sum(p.numel() * p.element_size() for p in trainable)
    targets = []
    for name in layers:
        leaf = name.rpartition(".")[2]
        if leaf not in targets:
            targets.append(leaf)
    trainable_count = sum(_trained_numel(p) for p in trainable)
    added_rows = sum(_trained_numel(p) for p in trainable if hasattr(p, "trainable_rows"))
    total = sum(p.numel() for p in model.parameters())
    return {"rank": first.r[ADAPTER_NAME], "alpha": first.lora_alpha[ADAPTER_NAME], "layers": len(layers),
            "targets": targets, "trainable_parameters": trainable_count, "total_parameters": total,
            "trainable_fraction": trainable_count / total, "adapter_bytes": adapter_bytes,
            "added_token_parameters": added_rows, "optimizer_state_bytes": state_bytes}


def _trained_numel(parameter) -> int:
    rows = getattr(parameter, "trainable_rows", None)
    return parameter.numel() if rows is None else rows * parameter[0].numel()


def format_lora_summary(summary: dict) -> str:
    """One line, e.g. "LoRA rank 8 on 8 layers (qkv, out): 20,480 trainable of 1,044,608 parameters
    (1.96%), adapters 80 KB, optimizer state 160 KB"."""
    return (f"LoRA rank {summary['rank']} on {summary['layers']} layers ({', '.join(summary['targets'])}): "
            f"{summary['trainable_parameters']:,} trainable of {summary['total_parameters']:,} parameters "
            f"({100 * summary['trainable_fraction']:.2f}%"
            + (f", {summary['added_token_parameters']:,} of them the added tokens' embedding rows"
               if summary.get("added_token_parameters") else "")
            + f"), adapters {_size(summary['adapter_bytes'])}, "
            f"optimizer state {_size(summary['optimizer_state_bytes'])}")


def _size(n_bytes: int) -> str:
    """Bytes in binary units: "96 KB", "1.5 MB"."""
    if n_bytes < 1 << 20:
        return f"{n_bytes / 1024:,.0f} KB"
    return f"{n_bytes / (1 << 20):,.1f} MB"


# -- adapter tensors ------------------------------------------------------------------------------
def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapter tensors only, on CPU, under PEFT's file names
    ("base_model.model.blocks.0.attn.qkv.lora_A.weight")."""
    state = {}
    for name, layer in lora_layers(model).items():
        for part in ("lora_A", "lora_B"):
            tensor = getattr(layer, part)[ADAPTER_NAME].weight
            state[f"{PEFT_PREFIX}{name}.{part}.weight"] = tensor.detach().to("cpu").contiguous()
    return state


def load_adapter_state(model, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy adapter tensors (adapter_state's names) into a model with adapters, refusing missing,
    unexpected or mis-shaped tensors with SlmError naming `where`."""
    expected = {}
    for name, layer in lora_layers(model).items():
        for part in ("lora_A", "lora_B"):
            expected[f"{PEFT_PREFIX}{name}.{part}.weight"] = getattr(layer, part)[ADAPTER_NAME].weight
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SlmError(f"adapter weights in {where} do not match the adapter's layers: missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]}; the adapter directory is damaged or was edited")
    with torch.no_grad():
        for key, target in expected.items():
            if tuple(state[key].shape) != tuple(target.shape):
                raise SlmError(f"adapter weights in {where}: {key} has shape {tuple(state[key].shape)}, the "
                               f"adapter's rank and base model need {tuple(target.shape)}")
            target.copy_(state[key])


# -- saving and loading ---------------------------------------------------------------------------
def save_adapter(model, directory: str | os.PathLike, base_dir: str | os.PathLike, options: LoraOptions,
                 extra: dict | None = None, tokenizer_dir: str | os.PathLike | None = None,
                 overwrite: bool = False) -> Path:
    """Write the model's adapters (only) to `directory`, atomically: adapter_model.safetensors and
    adapter_config.json (PEFT's format) and slmkit_adapter.json (the base checkpoint's path, weights
    sha256 and model config, the LoRA options, the adapter file's sha256, and `extra`).

    base_dir: the checkpoint the model was loaded from (or a run directory: its best, else last,
    checkpoint). tokenizer_dir: a directory whose tokenizer files are copied in too (the merged model
    then takes them instead of the base's). overwrite: replace an adapter directory written before.
    Raises SlmError when the model's config is not the base's, or `directory` may not be replaced."""
    directory = Path(directory)
    layers = lora_layers(model)
    if not layers:
        raise SlmError("this model has no LoRA adapters: add them with add_lora before saving an adapter")
    base_dir = resolve_checkpoint_dir(base_dir)
    base_meta = read_checkpoint_config(base_dir)
    base_config = ModelConfig.from_dict(base_meta["model"], where=str(base_dir / CONFIG_FILE))
    # a fine-tune that added tokens (the chat tokens) has more embedding rows than its base: those rows
    # trained with the adapters and are saved beside them
    added = model.config.vocab_size - base_config.vocab_size
    if added < 0 or base_config.replace(vocab_size=model.config.vocab_size).to_dict() != model.config.to_dict():
        raise SlmError(f"the model being saved is not built like its base {base_dir}: its config differs in "
                       f"{_differing_fields(model.config, base_config)}; pass the checkpoint the model was loaded from")
    loaded_sha = getattr(model, "checkpoint_meta", {}).get("weights_sha256")
    if loaded_sha and base_meta.get("weights_sha256") and loaded_sha != base_meta["weights_sha256"]:
        raise SlmError(f"the model was loaded from weights with sha256 {loaded_sha[:12]}, but {base_dir} holds "
                       f"{base_meta['weights_sha256'][:12]}; pass the checkpoint the model was loaded from")
    _check_options_describe(model, layers, options)
    if os.path.lexists(directory):
        check_replaceable(directory, (base_dir,), kind="a LoRA adapter", marker=ADAPTER_MARKER)
        if not overwrite:
            raise SlmError(f"{directory} already exists; choose a new directory or pass overwrite=True to replace it")
    state = adapter_state(model)
    tokenizer_files = _tokenizer_files(Path(tokenizer_dir)) if tokenizer_dir is not None else {}
    if tokenizer_dir is not None and not tokenizer_files:
        raise SlmError(f"no tokenizer in {tokenizer_dir}: expected {MANIFEST} or tokenizer.json; pass a tokenizer "
                       f"directory (a run's tokenizer/ folder, a dataset or a checkpoint), or no tokenizer_dir")
    with output_errors(directory, "the adapter", flag="directory"), atomic_dir(directory) as tmp:
        save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        if added:
            save_file(_added_rows(model, base_config.vocab_size), str(tmp / ADDED_ROWS), metadata={"format": "pt"})
        _peft_config(model, base_dir).save_pretrained(str(tmp))
        meta = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "base": str(base_dir.resolve()),
                "base_weights_sha256": base_meta.get("weights_sha256"), "base_model": base_config.to_dict(),
                "lora": options.to_dict(), "layers": list(layers), "adapter_sha256": sha256_file(tmp / ADAPTER_WEIGHTS)}
        if added:
            meta["added_tokens"] = {"vocab_size": model.config.vocab_size, "file": ADDED_ROWS,
                                    "sha256": sha256_file(tmp / ADDED_ROWS)}
        clashes = sorted(set(extra or {}) & set(meta))
        if clashes:
            raise ValueError(f"save_adapter extra may not replace the adapter's own fields {clashes}")
        meta.update(extra or {})
        write_json_atomic(tmp / ADAPTER_META, meta)
        for name, source in tokenizer_files.items():
            shutil.copy2(source, tmp / name)
        write_marker(tmp, ADAPTER_MARKER, "a LoRA adapter")
    return directory


def _check_options_describe(model, layers: dict, options: LoraOptions) -> None:
    """SlmError unless `options` are those the model's adapters were added with (they are saved as the
    recipe that load_adapter follows)."""
    first = next(iter(layers.values()))
    rank, alpha = first.r[ADAPTER_NAME], first.lora_alpha[ADAPTER_NAME]
    adapted = {name.rpartition(".")[2] for name in layers}
    if (options.rank, options.alpha) != (rank, alpha) or set(resolve_targets(model, options)) != adapted:
        raise SlmError(f"the LoRA options given (rank {options.rank}, alpha {options.alpha}, targets "
                       f"{', '.join(options.targets)}) are not those the model's adapters were added with (rank "
                       f"{rank}, alpha {alpha}, on {len(layers)} layers); pass the options given to add_lora")


def _peft_config(model, base_dir: Path):
    """A copy of the LoraConfig the model's adapters were injected with, naming the base checkpoint."""
    config = getattr(model, "peft_config", {}).get(ADAPTER_NAME)
    if config is None:
        raise SlmError("the model's adapters were not added by add_lora (no PEFT config found); use add_lora")
    config = copy.copy(config)
    config.base_model_name_or_path, config.inference_mode = str(base_dir.resolve()), True
    return config


def _differing_fields(one: ModelConfig, other: ModelConfig) -> str:
    a, b = one.to_dict(), other.to_dict()
    return ", ".join(f"{key} ({a[key]!r} vs {b[key]!r})" for key in a if a[key] != b.get(key))


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory written by save_adapter (holds slmkit_adapter.json of its format)."""
    meta_path = Path(path) / ADAPTER_META
    try:
        return json.loads(meta_path.read_text(encoding="utf-8")).get("format") == ADAPTER_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_adapter_meta(adapter_dir: str | os.PathLike) -> dict:
    """The parsed slmkit_adapter.json of an adapter directory, checked for format and version."""
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / ADAPTER_META
    if not adapter_dir.is_dir():
        raise SlmError(f"adapter not found: {adapter_dir}")
    if not path.is_file():
        raise SlmError(f"{adapter_dir} is not an slmkit LoRA adapter (no {ADAPTER_META}); "
                       "adapters are written by save_adapter")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise SlmError(f"{path} is not valid JSON ({error}); the adapter is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
        raise SlmError(f"{path} is not an slmkit adapter description (format={_format_of(meta)!r})")
    if meta.get("version") != ADAPTER_VERSION:
        raise SlmError(f"{path}: adapter version {meta.get('version')} is not supported "
                       f"(this slmkit reads version {ADAPTER_VERSION})")
    return meta


def _format_of(meta) -> object:
    return meta.get("format") if isinstance(meta, dict) else None


def check_base(adapter_dir: str | os.PathLike, meta: dict, base_dir: str | os.PathLike | None) -> Path:
    """The base checkpoint directory for an adapter: `base_dir` (default: the one recorded), after
    checking that it is the model the adapter was trained on (weights sha256 and model config).
    Raises SlmError naming the adapter, the recorded base and the other model."""
    recorded = meta.get("base")
    if base_dir is None:
        if not recorded or not Path(recorded).exists():
            raise SlmError(f"the base model of adapter {adapter_dir}, {recorded}, is not there; pass the base "
                           f"checkpoint it was trained on (base_dir)")
        base_dir = recorded
    base_dir = resolve_checkpoint_dir(base_dir)
    base_meta = read_checkpoint_config(base_dir)
    wanted, found = meta.get("base_weights_sha256"), base_meta.get("weights_sha256")
    if wanted != found:
        raise SlmError(f"adapter {adapter_dir} was trained on base {recorded} (sha256 {str(wanted)[:12]}); "
                       f"{base_dir} is a different model (sha256 {str(found)[:12]}): pass the base it was trained on")
    config = ModelConfig.from_dict(base_meta["model"], where=str(base_dir / CONFIG_FILE))
    recorded_config = ModelConfig.from_dict(meta.get("base_model", {}), where=str(Path(adapter_dir) / ADAPTER_META))
    if config.to_dict() != recorded_config.to_dict():
        raise SlmError(f"adapter {adapter_dir} was trained on base {recorded}; {base_dir} has the same weights "
                       f"but another model config ({_differing_fields(recorded_config, config)}): pass the base "
                       f"it was trained on")
    return base_dir


def _added_rows(model, base_vocab: int) -> dict[str, torch.Tensor]:
    """The per-token rows of the ids a fine-tune added (embedding; an untied head), to save with an adapter."""
    rows = {"embed.weight": model.embed.weight[base_vocab:]}
    if not model.config.tie_embeddings:
        rows["lm_head.weight"] = model.lm_head.weight[base_vocab:]
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in rows.items()}


def read_added_rows(adapter_dir: Path, added: dict) -> dict[str, torch.Tensor]:
    """The embedding (and untied head) rows of the tokens an adapter's fine-tune added, from the file its
    slmkit_adapter.json names under added_tokens, checked against the recorded hash."""
    return _read_checked(adapter_dir, str(added.get("file", ADDED_ROWS)), added.get("sha256"))


def _read_checked(adapter_dir: Path, name: str, sha256: str | None) -> dict[str, torch.Tensor]:
    """The tensors of the adapter's file `name`, after checking it against the `sha256` recorded in
    slmkit_adapter.json. Raises SlmError for a missing, modified or unreadable file."""
    path = adapter_dir / name
    if not path.is_file():
        raise SlmError(f"adapter {adapter_dir} has no {name}; it is incomplete")
    if sha256 and sha256_file(path) != sha256:
        raise SlmError(f"{path} does not match the hash in {ADAPTER_META}: the file is truncated or was "
                       f"modified; restore it or train the adapter again")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise SlmError(f"cannot read {path}: {error}; the adapter is damaged") from None


def _with_added_rows(base, adapter_dir: Path, added: dict, device, dtype) -> Transformer:
    """`base` grown by the adapter's added token rows (saved by save_adapter), as a new Transformer."""
    from slmkit.finetune.chat import extend_embeddings  # the same growth a fine-tune starts from

    rows = read_added_rows(adapter_dir, added)
    path = adapter_dir / str(added.get("file", ADDED_ROWS))
    config, state = extend_embeddings(model_state(base), base.config, int(added["vocab_size"]))
    base_vocab = base.config.vocab_size
    for name, tensor in rows.items():
        if name not in state or tuple(tensor.shape) != (state[name].shape[0] - base_vocab, *state[name].shape[1:]):
            raise SlmError(f"adapter {adapter_dir}: {path.name} holds {name} of shape {tuple(tensor.shape)}, which "
                           f"does not fit the base; the adapter is damaged")
        state[name] = torch.cat([state[name][:base_vocab], tensor.to(state[name].dtype)])
    with torch.device("meta"):
        grown = Transformer(config)
    grown = grown.to_empty(device=device)
    load_weights(grown, state, str(adapter_dir))
    if dtype is not None:
        grown = grown.to(dtype)
    grown.checkpoint_dir, grown.checkpoint_meta = base.checkpoint_dir, base.checkpoint_meta
    return grown.eval()


def read_adapter_tensors(adapter_dir: Path, meta: dict) -> dict[str, torch.Tensor]:
    """The adapter's A and B tensors (adapter_state's names), after checking the file against the hash
    recorded in `meta` (its slmkit_adapter.json). Raises SlmError for a missing, modified or unreadable file."""
    return _read_checked(adapter_dir, ADAPTER_WEIGHTS, meta.get("adapter_sha256"))


def load_adapter(adapter_dir: str | os.PathLike, base_dir: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Transformer:
    """The base model with the adapter of `adapter_dir` added and loaded, in eval mode.

    base_dir: the base checkpoint (default: the path recorded in the adapter). Raises SlmError for an
    adapter trained on another base, a damaged adapter (hash, missing or unexpected tensors) or a
    missing peft package."""
    adapter_dir = Path(adapter_dir)
    meta = read_adapter_meta(adapter_dir)
    options = LoraOptions.from_dict(meta.get("lora", {}), where=f"{adapter_dir / ADAPTER_META} (lora)")
    require_peft()  # before the base model is loaded: a missing package is the first thing to say
    base_dir = check_base(adapter_dir, meta, base_dir)
    state = read_adapter_tensors(adapter_dir, meta)
    model = load_model(base_dir, device=device, dtype=dtype)
    if meta.get("added_tokens"):
        model = _with_added_rows(model, adapter_dir, meta["added_tokens"], device, dtype)
    add_lora(model, options)
    load_adapter_state(model, state, str(adapter_dir / ADAPTER_WEIGHTS))
    model.adapter_dir = adapter_dir
    model.adapter_meta = meta
    return model.eval()


# -- merging --------------------------------------------------------------------------------------
@torch.no_grad()
def merge_lora(model) -> Transformer:
    """A plain Transformer (no adapter modules) whose weights are the base's plus each adapter's
    scaled B @ A, with the state_dict keys of a fresh Transformer of the config, on the model's device
    and in its dtype. `model` itself is left as it is."""
    layers = lora_layers(model)
    if not layers:
        raise SlmError("this model has no LoRA adapters to merge")
    deltas = {f"{name}.weight": layer.get_delta_weight(ADAPTER_NAME) for name, layer in layers.items()}
    state = {}
    for key, tensor in model.state_dict().items():
        if _is_adapter_tensor(key):
            continue
        key = key.replace(".base_layer.", ".")
        if key in deltas:
            tensor = (tensor.float() + deltas[key].float()).to(tensor.dtype)
        state[key] = tensor.detach()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    parameter = next(model.parameters())
    with torch.device("meta"):
        merged = Transformer(model.config)
    merged = merged.to_empty(device=parameter.device)
    load_weights(merged, state, "the merged LoRA model")
    return merged.to(parameter.dtype).eval()


def merge_adapter(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  base_dir: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Merge an adapter into its base and write a full slmkit checkpoint to `out_dir` (atomic), with
    the tokenizer files of the adapter directory if it has them, else of the base checkpoint.
    Raises SlmError as load_adapter does, and when `out_dir` exists (unless overwrite and it is a
    merge written before)."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    meta = read_adapter_meta(adapter_dir)
    if os.path.lexists(out_dir):
        check_replaceable(out_dir, (adapter_dir, base_dir or meta.get("base")), kind="a merged LoRA checkpoint",
                          marker=MERGE_MARKER)
        if not overwrite:
            raise SlmError(f"{out_dir} already exists; choose a new directory or pass overwrite=True to replace it")
    model = load_adapter(adapter_dir, base_dir)
    merged = merge_lora(model)
    base = Path(model.checkpoint_dir)
    tokenizer = _tokenizer_files(adapter_dir) or _tokenizer_files(base)
    source = {"adapter": str(adapter_dir.resolve()), "base": str(base.resolve()),
              "base_weights_sha256": meta.get("base_weights_sha256"), "adapter_sha256": meta.get("adapter_sha256"),
              "lora": meta.get("lora")}
    weights_bytes = sum(p.numel() * p.element_size() for p in merged.parameters())
    with output_errors(out_dir, "the merged checkpoint", flag="OUT", needed=megabytes(weights_bytes)):
        save_model(merged, out_dir, extra={"merged_lora": source}, extra_files=tokenizer)
        write_marker(out_dir, MERGE_MARKER, "a merged LoRA checkpoint")
    return out_dir


def _tokenizer_files(directory: Path) -> dict[str, Path]:
    """{name: path} of the tokenizer files in a checkpoint or adapter directory: every plain file but
    the model's, the adapter's and the training state ({} when it holds none)."""
    if not directory.is_dir():
        return {}
    files = {p.name: p for p in sorted(directory.iterdir())
             if p.is_file() and p.name not in NOT_TOKENIZER_FILES and not p.name.startswith(".")}
    if not files:
        return {}
    if not any(name in files for name in (MANIFEST, "tokenizer.json")):
        return {}  # stray files, not a tokenizer
    return files
