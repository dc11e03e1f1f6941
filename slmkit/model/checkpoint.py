"""The model checkpoint format: a directory with config.json and model.safetensors.

config.json holds {"format": "slmkit-checkpoint", "version": 1, "model": <ModelConfig>, ...} plus
the sha256 of the weights file, so a truncated or tampered file is refused instead of half-loaded.
Weights are safetensors: loading never executes code. A tied output head is stored once.
Other files (tokenizer, training state) may sit beside these; this module ignores them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from slmkit.errors import SlmError
from slmkit.model.config import ModelConfig
from slmkit.model.layers import RotaryEmbedding
from slmkit.model.quantized import swap_in_quantized
from slmkit.model.transformer import Transformer
from slmkit.rundir import RUN_FORMAT, is_run_dir
from slmkit.utils import atomic_dir

FORMAT = "slmkit-checkpoint"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_state(model) -> dict[str, torch.Tensor]:
    """The model's tensors to save: contiguous, on CPU, a tied head left out."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue
        state[name] = tensor.detach().to("cpu").contiguous()
    return state


def write_checkpoint(directory: str | os.PathLike, config: ModelConfig, state: dict[str, torch.Tensor],
                     extra: dict | None = None, extra_files: dict[str, str | os.PathLike] | None = None,
                     moved_files: dict[str, str | os.PathLike] | None = None) -> Path:
    """Write config + weights (+ extra files copied in, + moved files moved in) atomically: a temp dir
    renamed into place. An existing directory is replaced only once the new one is complete.
    """
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        meta = {"format": FORMAT, "version": VERSION, "model": config.to_dict(),
                "weights_sha256": sha256_file(tmp / WEIGHTS_FILE)}
        if extra:
            meta.update(extra)
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        for name, source in (extra_files or {}).items():
            source = Path(source)
            if source.is_dir():
                shutil.copytree(source, tmp / name)
            else:
                shutil.copy2(source, tmp / name)
        for name, source in (moved_files or {}).items():  # moved, not copied: no second copy on disk
            shutil.move(source, tmp / name)
    return directory


def save_model(model, directory: str | os.PathLike, extra: dict | None = None,
               extra_files: dict | None = None) -> Path:
    """Save a Transformer as an slmkit checkpoint directory (atomic)."""
    return write_checkpoint(directory, model.config, model_state(model), extra, extra_files)


# What other slmkit commands write beside a config.json of their own (by its format), to name it.
OTHER_OUTPUTS = {"slmkit-onnx": "an ONNX export (slm export-onnx)"}


def read_checkpoint_config(directory: str | os.PathLike) -> dict:
    """The parsed config.json of a checkpoint directory, checked for format and version."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.exists():
        raise SlmError(f"checkpoint not found: {directory}")
    run_message = (f"{directory} is a run directory, not a checkpoint: load it with slmkit.load() (its best, "
                   f"else last, checkpoint) or name one of its checkpoints, e.g. {directory}/checkpoints/best")
    if not path.is_file():
        if is_run_dir(directory):
            raise SlmError(run_message)
        raise SlmError(f"{directory} is not an slmkit checkpoint (no {CONFIG_FILE}); "
                       f"for a Hugging Face model directory use `slm import-hf`")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SlmError(f"{path} is not valid JSON ({error}); the checkpoint is damaged") from None
    if meta.get("format") == RUN_FORMAT:
        raise SlmError(run_message)
    if meta.get("format") in OTHER_OUTPUTS:
        raise SlmError(f"{directory} is {OTHER_OUTPUTS[meta['format']]}, not a checkpoint; give the checkpoint "
                       f"or run it was made from")
    if meta.get("format") != FORMAT:
        raise SlmError(f"{path} is not an slmkit checkpoint config (format={meta.get('format')!r}); "
                       f"for a Hugging Face model directory use `slm import-hf`")
    if meta.get("version") != VERSION:
        raise SlmError(f"{path}: checkpoint version {meta.get('version')} is not supported "
                       f"(this slmkit reads version {VERSION})")
    return meta


def load_state(directory: str | os.PathLike, verify: bool = True,
               quantized: bool = False) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(config, tensors, meta) of a checkpoint, after checking the weights' hash.

    A quantized checkpoint (config.json's "quantization", written by `slm quantize`) holds integer
    tensors, not float weights: refused unless `quantized`, so that a command needing float weights
    (export, averaging, training from it) says so instead of failing on missing tensors.
    """
    directory = Path(directory)
    meta = read_checkpoint_config(directory)
    if meta.get("quantization") and not quantized:
        record = meta["quantization"]
        source = f" ({record['source']})" if record.get("source") else ""
        raise SlmError(f"{directory} is quantized ({record.get('scheme')}) and holds no float weights; use the "
                       f"float checkpoint it came from{source} here")
    config = ModelConfig.from_dict(meta["model"], where=str(directory / CONFIG_FILE)).validate()
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise SlmError(f"checkpoint {directory} has no {WEIGHTS_FILE}; it is incomplete")
    if verify and meta.get("weights_sha256") and sha256_file(weights) != meta["weights_sha256"]:
        raise SlmError(f"{weights} does not match the hash in {CONFIG_FILE}: the file is truncated or "
                       f"was modified; restore it or use another checkpoint")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise SlmError(f"cannot read {weights}: {error}; the checkpoint is damaged") from None
    return config, state, meta


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load a Transformer from a checkpoint directory, in eval mode.

    Raises SlmError for a missing, damaged or incompatible checkpoint. Never executes code. A run
    directory is not a checkpoint: `slmkit.load` finds a run's best (else last) checkpoint.
    """
    directory = Path(directory)
    config, state, meta = load_state(directory, quantized=True)
    with torch.device("meta"):
        model = Transformer(config)
    model = model.to_empty(device=device)
    if meta.get("quantization"):  # its Linear layers become QuantizedLinear (slmkit.model.quantized)
        if torch.device(device).type != "cpu":
            raise SlmError(f"{directory} is quantized ({meta['quantization'].get('scheme')}): its kernels run on "
                           f"the CPU; load it with device='cpu' (--device cpu), or use the float source checkpoint")
        swap_in_quantized(model, state, meta["quantization"], str(directory))
    load_weights(model, state, str(directory))
    if dtype is not None:
        model = model.to(dtype)
    model.checkpoint_dir = directory
    model.checkpoint_meta = meta
    return model.eval()


def load_weights(model, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy `state` into `model`, refusing missing, unexpected or mis-shaped tensors."""
    expected = model.state_dict()
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SlmError(f"weights in {where} do not match the model config: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise SlmError(f"weights in {where}: {name} has shape {tuple(tensor.shape)}, "
                           f"the config needs {tuple(expected[name].shape)}")
    model.load_state_dict(state, strict=False, assign=False)
    if model.config.tie_embeddings and isinstance(model.lm_head, torch.nn.Linear):  # not a quantized head
        model.lm_head.weight = model.embed.weight
    # Buffers that are not saved (rotary frequencies) must be recomputed after to_empty.
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.reset_parameters()

