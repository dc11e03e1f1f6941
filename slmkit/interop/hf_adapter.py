"""An slmkit LoRA adapter as a PEFT adapter for the Hugging Face export of its base model.

`slm finetune --lora` saves adapters on slmkit's module names (`blocks.0.attn.qkv`, one fused Q, K, V
projection). `export_adapter_hf(ADAPTER, OUT)` rewrites them for the model `slm export-hf BASE` writes
(`model.layers.0.self_attn.q_proj`, `k_proj`, `v_proj`; GPT-2's `c_attn`; GPT-NeoX's per-head
`query_key_value`), so that

    base = AutoModelForCausalLM.from_pretrained("hf/base")
    model = PeftModel.from_pretrained(base, "hf/adapter")

gives the logits of the slmkit base with the adapter (the conversion is exact: see `lora_to_hf`).
The tokens a fine-tune added to the vocabulary (the chat tokens of `slm finetune`) travel as PEFT
trainable tokens (their embedding rows, and an untied head's), with the adapter's tokenizer and chat
template in HF form; the base's embeddings are resized to the new vocabulary before the adapter loads
(`AutoPeftModelForCausalLM` does that itself from the tokenizer).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from slmkit.errors import SlmError
from slmkit.finetune.lora import (
    ADAPTER_META,
    ADAPTER_WEIGHTS,
    PEFT_PREFIX,
    LoraOptions,
    check_base,
    read_adapter_meta,
    read_adapter_tensors,
    read_added_rows,
    require_peft,
)
from slmkit.interop.hf import MODEL_CARD, export_tokenizer, read_hf_config, read_hf_weights
from slmkit.interop.hf_config import ARCHITECTURES, hf_family
from slmkit.interop.hf_state import HEAD_NAMES, canonical_hf_names, lora_to_hf, state_to_hf, tensor_map
from slmkit.model.checkpoint import load_state
from slmkit.model.config import ModelConfig
from slmkit.tokenizer import MANIFEST
from slmkit.utils import atomic_dir, check_replaceable, output_errors, write_marker

ADAPTER_EXPORT_MARKER = ".slmkit-export-hf-adapter"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # name or owner/name, as the Hub spells them


def export_adapter_hf(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                      base_model: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write the slmkit LoRA adapter `adapter_dir` as a PEFT adapter directory for the Hugging Face
    export of its base (adapter_model.safetensors, adapter_config.json, a README.md with its use).

    base_model: the HF model the adapter is for, recorded as `base_model_name_or_path` (what
    `AutoPeftModelForCausalLM.from_pretrained(out_dir)` loads): the directory `slm export-hf BASE`
    wrote, or a Hub id. A local directory is checked to be that export: the adapted modules' shapes,
    and every tensor equal to the base checkpoint's when the base is still where the adapter names it.
    Added tokens go in as PEFT trainable tokens, and the adapter's tokenizer (when it has one) in HF
    form. Returns `out_dir`. Raises SlmError (and writes nothing) for a directory that is not an slmkit
    adapter, a damaged adapter, a base that fits no HF architecture, a
    `base_model` directory that is not the base's export, or an `out_dir` that may not be replaced.
    """
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    meta = read_adapter_meta(adapter_dir)
    config = ModelConfig.from_dict(meta.get("base_model", {}), where=str(adapter_dir / ADAPTER_META))
    options = LoraOptions.from_dict(meta.get("lora", {}), where=f"{adapter_dir / ADAPTER_META} (lora)")
    family = hf_family(config)  # a config no HF architecture fits is refused here, before any reading
    peft = require_peft()
    tensors = read_adapter_tensors(adapter_dir, meta)
    layers = meta.get("layers") or []
    try:
        pairs = {layer: (tensors[f"{PEFT_PREFIX}{layer}.lora_A.weight"], tensors[f"{PEFT_PREFIX}{layer}.lora_B.weight"])
                 for layer in layers}
    except KeyError as missing:
        raise SlmError(f"adapter {adapter_dir}: {ADAPTER_WEIGHTS} lacks {missing}; the adapter is damaged") from None
    if not pairs or len(tensors) != 2 * len(pairs):
        raise SlmError(f"adapter {adapter_dir}: {ADAPTER_WEIGHTS} does not hold the A and B of exactly the layers "
                       f"{ADAPTER_META} lists; the adapter is damaged")
    new_rows = _added_token_rows(adapter_dir, meta, config, family)
    added = next(iter(new_rows.values())).shape[0] if new_rows else 0
    if added and "lm_head" in new_rows and "lm_head" in layers:
        raise SlmError(f"adapter {adapter_dir} adapts the output head and adds {added} token(s) to it; PEFT cannot "
                       f"put trainable tokens on a layer that has a LoRA adapter, so merge it instead "
                       f"(slm merge-lora {adapter_dir} MERGED) and export the merged model (slm export-hf MERGED OUT)")
    # an adapter on an untied head has a B row per id, the added ones too: it fits the resized head
    hf_pairs = lora_to_hf(pairs, config.replace(vocab_size=config.vocab_size + added))
    if base_model is not None and Path(base_model).is_dir():
        _check_base_export(Path(base_model), adapter_dir, meta, config, hf_pairs)
    elif base_model is not None and not _HUB_ID.match(str(base_model)):
        raise SlmError(f"base model {base_model}: no such directory (and not a Hub id such as owner/name); give the "
                       f"directory `slm export-hf BASE DIR` wrote")
    if os.path.lexists(out_dir):
        check_replaceable(out_dir, (adapter_dir, base_model), kind="an HF adapter export",
                          marker=ADAPTER_EXPORT_MARKER)
        if not overwrite:
            raise SlmError(f"{out_dir} already exists; choose a new directory or pass --force to replace it")
    state = {}
    for module, (a, b) in hf_pairs.items():
        state[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a
        state[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b
    new_ids = list(range(config.vocab_size, config.vocab_size + added))
    for module, rows in new_rows.items():  # PEFT's trainable tokens: the rows that replace those ids' rows
        state[f"{PEFT_PREFIX}{module}.token_adapter.trainable_tokens_delta"] = rows
    peft_config = peft.LoraConfig(
        r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout, bias="none",
        target_modules=_target_modules(list(hf_pairs), config, family), task_type="CAUSAL_LM",
        # GPT-2's Conv1D stores its weight transposed (PEFT corrects the flag itself for its Linear lm_head)
        fan_in_fan_out=family == "gpt2" and any(module != "lm_head" for module in hf_pairs),
        trainable_token_indices={module.rpartition(".")[2]: new_ids for module in new_rows} or None,
        base_model_name_or_path=None if base_model is None else str(base_model), inference_mode=True)
    with output_errors(out_dir, "the adapter", flag="OUT"), atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        peft_config.save_pretrained(str(tmp))
        tokenizer = (adapter_dir / MANIFEST).is_file() and export_tokenizer(adapter_dir, tmp).description
        (tmp / MODEL_CARD).write_text(_card(adapter_dir, meta, options, family, len(hf_pairs), base_model,
                                            config.vocab_size + added if added else None, tokenizer or None))
        write_marker(tmp, ADAPTER_EXPORT_MARKER, "an HF adapter export")
    return out_dir


def _added_token_rows(adapter_dir: Path, meta: dict, config: ModelConfig, family: str) -> dict[str, torch.Tensor]:
    """{HF module: rows} of the tokens the adapter's fine-tune added (the embedding; an untied head), or {}."""
    added = meta.get("added_tokens")
    if not added:
        return {}
    rows = read_added_rows(adapter_dir, added)
    weights = {piece.slm_name: piece.hf_names[0] for piece in tensor_map(config, family) if piece.slm_name}
    expected = {"embed.weight"} | (set() if config.tie_embeddings else {"lm_head.weight"})
    count = int(added.get("vocab_size", 0)) - config.vocab_size
    if set(rows) != expected or any(tuple(t.shape) != (count, config.d_model) for t in rows.values()):
        raise SlmError(f"adapter {adapter_dir}: its added token rows ({', '.join(sorted(rows))}) do not fit "
                       f"{count} added token(s) of its base; the adapter is damaged")
    return {_module(weights[name], family): tensor.contiguous() for name, tensor in rows.items()}


def _target_modules(modules: list[str], config: ModelConfig, family: str) -> list[str]:
    """PEFT's target_modules for the adapted HF modules: their last two name components
    ("self_attn.q_proj", "attn.c_proj"; GPT-2's attn.c_proj and mlp.c_proj share a last name), or the
    full names when those would also match a module the adapter leaves alone."""
    every = _hf_linear_modules(config, family)
    suffixes = sorted({".".join(module.split(".")[-2:]) for module in modules})
    matched = {name for name in every if any(name == s or name.endswith("." + s) for s in suffixes)}
    return suffixes if matched == set(modules) else sorted(modules)


def _hf_linear_modules(config: ModelConfig, family: str) -> list[str]:
    """The HF module names of every linear layer of the model (the head as `lm_head`)."""
    embeddings = ("embed.weight", "pos_embed.weight")
    return [_module(name, family) for piece in tensor_map(config, family) if piece.slm_name not in embeddings
            for name, shape in zip(piece.hf_names, piece.hf_shapes) if name.endswith(".weight") and len(shape) == 2]


def _module(weight: str, family: str) -> str:
    """The module an HF weight belongs to in the loaded model (transformers names every head lm_head)."""
    return "lm_head" if weight == HEAD_NAMES[family] else weight.removesuffix(".weight")


def _weight(module: str, family: str) -> str:
    """The name in the weight files of an HF module's weight (the inverse of `_module`)."""
    return HEAD_NAMES[family] if module == "lm_head" else f"{module}.weight"


def _check_base_export(base_model: Path, adapter_dir: Path, meta: dict, config: ModelConfig,
                       hf_pairs: dict) -> None:
    """SlmError unless the HF directory `base_model` holds the adapter's base: the adapted modules'
    weights have the shapes the adapter needs, and (when the base checkpoint is where the adapter
    names it) every tensor equals the base's own export."""
    family = hf_family(config)
    read_hf_config(base_model)  # a directory that is no HF model says so in its own words
    weights = canonical_hf_names(read_hf_weights(base_model), family)
    export = f"slm export-hf {meta.get('base')} {base_model}"
    for module, (a, b) in hf_pairs.items():
        name = _weight(module, family)
        tensor = weights.get(name)
        needed = (config.vocab_size if module == "lm_head" else b.shape[0], a.shape[1])  # the head before resizing
        shape = None if tensor is None else tuple(tensor.shape)
        if shape not in (needed, needed[::-1]):  # GPT-2's Conv1D weights are stored (in, out)
            raise SlmError(f"{base_model} is not the Hugging Face export of adapter {adapter_dir}'s base: its "
                           f"{name} is {shape or 'missing'}, the adapter needs {needed}; export the base "
                           f"with `{export}`")
    try:
        base_dir = check_base(adapter_dir, meta, None)
    except SlmError:
        return  # the base checkpoint has moved: the shapes are all that can be checked
    _, base_state, _ = load_state(base_dir)
    for name, tensor in state_to_hf(base_state, config).items():
        found = weights.get(name)
        if found is None or found.shape != tensor.shape or not torch.equal(found.to(tensor.dtype), tensor):
            raise SlmError(f"{base_model} is not the Hugging Face export of adapter {adapter_dir}'s base {base_dir}: "
                           f"{name} differs; export the base with `{export}`")


def _card(adapter_dir: Path, meta: dict, options: LoraOptions, family: str, modules: int, base_model,
          vocab: int | None, tokenizer: str | None) -> str:
    """README.md of the exported adapter: what it is, and how transformers and PEFT load it."""
    base = str(base_model) if base_model is not None else "BASE_HF_DIR"
    lines = [
        "---", "library_name: peft", "tags:", "- slmkit", "- lora", "---", "",
        f"# LoRA adapter for a {ARCHITECTURES[family]} model (exported by slmkit)", "",
        f"Rank {options.rank}, alpha {options.alpha:g}, on {modules} modules "
        f"({', '.join(options.targets)} in slmkit's names). Converted from the slmkit adapter "
        f"`{adapter_dir}` (trained on `{meta.get('base')}`, weights sha256 "
        f"`{str(meta.get('base_weights_sha256'))[:16]}`).", "",
    ]
    if vocab:
        lines += [f"The fine-tune added tokens: the base's vocabulary grows to {vocab} ids before the adapter "
                  "loads (their embedding rows are in the adapter, as PEFT trainable tokens).", ""]
    if tokenizer:
        lines += [f"Tokenizer (here): {tokenizer}.", ""]
    lines += [
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM" + (", AutoTokenizer" if tokenizer else ""),
        "",
        f"base = AutoModelForCausalLM.from_pretrained({base!r})",
        *([f"base.resize_token_embeddings({vocab})"] if vocab else []),
        "model = PeftModel.from_pretrained(base, 'THIS_DIRECTORY')",
        *(["tokenizer = AutoTokenizer.from_pretrained('THIS_DIRECTORY')"] if tokenizer else []),
        "merged = model.merge_and_unload()  # optional: a plain model with the adapter folded in",
        "```", "",
        f"The base is the slmkit checkpoint's Hugging Face export (`slm export-hf {meta.get('base')} {base}`).",
    ]
    return "\n".join(lines) + "\n"


__all__ = ["ADAPTER_EXPORT_MARKER", "export_adapter_hf"]
