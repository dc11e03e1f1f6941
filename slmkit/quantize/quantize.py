"""Quantize a float checkpoint into a new checkpoint directory whose block Linear layers are int8 or int4.

The output is an ordinary slmkit checkpoint (config.json + model.safetensors + the tokenizer files)
with a "quantization" record in config.json: the scheme, the group size, the quantized layers, and
the source checkpoint with its weights' sha256. `slmkit.load` / `load_model` rebuild the model with
QuantizedLinear layers (slmkit.model.quantized), so generate, chat and eval take it unchanged.

Quantized: the Linear layers inside the blocks (attention qkv and out, MLP up, gate and down).
Kept in float: embeddings, norms and, unless `quantize_head`, the output head.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from slmkit.errors import SlmError
from slmkit.model.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_state,
    read_checkpoint_config,
    write_checkpoint,
)
from slmkit.model.config import ModelConfig
from slmkit.model.quantized import INT4_GROUP_SIZES, quantize_weight, unsupported_layer
from slmkit.model.transformer import Transformer
from slmkit.rundir import resolve_checkpoint_dir
from slmkit.utils import check_replaceable, megabytes, output_errors, write_marker

QUANTIZE_MARKER = ".slmkit-quantize"  # written into the output so that --overwrite may replace it later
TRAINING_STATE = "training_state.pt"  # a trained checkpoint's resume state: not carried over
SCHEME_OF = {("int8", "weight"): "int8", ("int4", "weight"): "int4", ("int8", "dynamic"): "int8-dynamic"}


def quantize_checkpoint(source: str | os.PathLike, out: str | os.PathLike, to: str = "int8", mode: str = "weight",
                        group_size: int = 64, quantize_head: bool = False, overwrite: bool = False) -> Path:
    """Write a quantized copy of a float checkpoint to `out`; return `out`.

    source: a checkpoint directory or a run directory (its best, else last, checkpoint).
    to: "int8" (symmetric per output channel) or "int4" (asymmetric per group of `group_size` input
    columns, one of 32, 64, 128, 256). mode: "weight" (weight-only: bfloat16 activations times
    integer weights) or "dynamic" (int8 only: activations quantized to int8 per call, for the CPU).
    quantize_head: quantize the output head too (for a tied head, a quantized copy of the embedding;
    the embedding itself stays float). `out` is written atomically with the source's tokenizer; an
    existing one is replaced only with `overwrite`, and only when this function wrote it.
    Raises SlmError for an already quantized source, an unknown scheme, a layer the scheme cannot
    hold (named, with the fix), and an `out` that is, holds or lies inside the source.
    """
    source = resolve_checkpoint_dir(source)
    meta = read_checkpoint_config(source)
    if meta.get("quantization"):
        raise SlmError(f"{source} is already quantized ({meta['quantization'].get('scheme')}); quantize the float "
                       f"checkpoint it came from{_named(meta['quantization'].get('source'))}")
    scheme = _scheme(to, mode, group_size)
    out = Path(out)
    _check_out(out, source, overwrite)
    config, state, _ = load_state(source)
    layers = quantized_layer_names(config, quantize_head)
    _check_layers(config, layers, scheme, group_size)
    stored = dict(state)
    for name in layers:
        weight = state["embed.weight"] if name == "lm_head" and config.tie_embeddings else state[f"{name}.weight"]
        stored.pop(f"{name}.weight", None)
        for part, tensor in quantize_weight(weight, scheme, group_size).items():
            stored[f"{name}.{part}"] = tensor
    record = {"scheme": scheme, "bits": 4 if scheme == "int4" else 8, "mode": mode,
              "group_size": group_size if scheme == "int4" else None, "head": quantize_head, "layers": layers,
              "source": str(source.resolve()), "source_weights_sha256": meta.get("weights_sha256")}
    extra = {key: meta[key] for key in ("run", "step") if key in meta}
    extra["quantization"] = record
    size = sum(t.numel() * t.element_size() for t in stored.values())
    with output_errors(out, "the quantized checkpoint", flag="OUT", needed=megabytes(size)):
        write_checkpoint(out, config, stored, extra=extra, extra_files=_companion_files(source))
        write_marker(out, QUANTIZE_MARKER, "a quantized checkpoint")
    return out


def quantized_layer_names(config: ModelConfig, quantize_head: bool = False) -> list[str]:
    """The Linear layers `slm quantize` quantizes: every one inside the blocks, and the head if asked."""
    with torch.device("meta"):
        model = Transformer(config)
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.startswith("blocks.")]
    return names + (["lm_head"] if quantize_head else [])


def _scheme(to: str, mode: str, group_size) -> str:
    if to not in ("int8", "int4"):
        raise SlmError(f"--to {to!r} is not a quantization this slmkit writes; use --to int8 or --to int4")
    if mode not in ("weight", "dynamic"):
        raise SlmError(f"--mode {mode!r} is unknown; use --mode weight (weight-only) or --mode dynamic (int8 "
                       f"activations too)")
    if (to, mode) not in SCHEME_OF:
        raise SlmError("--mode dynamic quantizes activations to int8 and is for --to int8 only; for int4 use "
                       "--mode weight")
    if to == "int4" and group_size not in INT4_GROUP_SIZES:
        raise SlmError(f"--group-size {group_size!r} is not one torch's int4 kernel takes; use one of "
                       f"{', '.join(map(str, INT4_GROUP_SIZES))}")
    return SCHEME_OF[(to, mode)]


def _check_out(out: Path, source: Path, overwrite: bool) -> None:
    """SlmError unless `out` is a new directory outside the source, or one this command wrote (with overwrite)."""
    resolved, src = out.expanduser().resolve(), source.resolve()
    if resolved == src or src in resolved.parents or resolved in src.parents:
        relation = "is" if resolved == src else "lies inside" if src in resolved.parents else "contains"
        raise SlmError(f"will not write the quantized checkpoint to {out}: it {relation} the input {source}; "
                       f"choose an output directory outside it")
    if os.path.lexists(out):
        check_replaceable(out, [source], kind="a quantized checkpoint", marker=QUANTIZE_MARKER)
        if not overwrite:
            raise SlmError(f"{out} already exists; choose a new OUT or pass --force (overwrite=True) to replace it")


def _check_layers(config: ModelConfig, layers: list[str], scheme: str, group_size: int) -> None:
    with torch.device("meta"):
        model = Transformer(config)
    for name in layers:
        problem = unsupported_layer(name, model.get_submodule(name), scheme, group_size)
        if problem:
            raise SlmError(f"cannot quantize to {scheme}: {problem}")


def _companion_files(directory: Path) -> dict[str, Path]:
    """The files a checkpoint keeps beside its weights (the tokenizer), without the resume state."""
    skipped = {CONFIG_FILE, WEIGHTS_FILE, TRAINING_STATE}
    return {item.name: item for item in directory.iterdir()
            if item.name not in skipped and not item.name.startswith(".")}


def _named(source) -> str:
    return f" ({source})" if source else ""
