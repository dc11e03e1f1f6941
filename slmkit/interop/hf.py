"""Hugging Face model directories to slmkit checkpoints and back, without transformers installed.

`import_hf(HF_DIR, OUT)` reads config.json and the weights (model.safetensors, a sharded
model.safetensors.index.json, or pytorch_model.bin read with `torch.load(weights_only=True)`, so no
file can run code) and writes an slmkit checkpoint. `export_hf(CKPT, OUT)` writes config.json and
model.safetensors that `transformers.AutoModelForCausalLM.from_pretrained(OUT)` loads with the same
logits, the tokenizer, generation_config.json (end-of-text ids and the sampling defaults of a
generation preset) and a model card (README.md, model_card.py). The mapping itself lives in
hf_config.py (configs) and hf_state.py (tensors).

Both write into a temporary directory beside OUT and rename it into place, so a failure leaves
nothing at OUT (and an earlier OUT as it was). An existing OUT is replaced only when asked
(`overwrite`) and only when `slmkit.utils.check_replaceable` allows it: never an input or a directory
around or inside one, never a run, a dataset or a checkpoint this command did not write (each command
marks its own output: IMPORT_MARKER, EXPORT_MARKER).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from slmkit.errors import SlmError
from slmkit.generate.config import PRESETS, GenerationConfig
from slmkit.interop.hf_config import (
    ARCHITECTURES,
    SUPPORTED_MODEL_TYPES,
    config_from_hf,
    config_to_hf,
    hf_family,
)
from slmkit.interop.hf_state import state_from_hf, state_to_hf, tensor_map, without_zero_biases
from slmkit.interop.model_card import DEFAULT_LICENSE, find_run, model_card
from slmkit.model.checkpoint import load_state, write_checkpoint
from slmkit.rundir import resolve_checkpoint_dir
from slmkit.tokenizer import CHAT_TOKENS, MANIFEST, load_tokenizer
from slmkit.utils import atomic_dir, check_replaceable, megabytes, output_errors, write_marker

__all__ = ["DEFAULT_GENERATION_PRESET", "DEFAULT_LICENSE", "SUPPORTED_MODEL_TYPES", "config_from_hf", "config_to_hf",
           "export_hf", "generation_config", "hf_family", "import_hf", "read_hf_config", "read_hf_weights",
           "state_from_hf", "state_to_hf", "tensor_map"]

# Tokenizer files of an HF model directory, carried over as they are.
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                      "merges.txt", "tokenizer.model", "added_tokens.json")
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
PYTORCH_BIN_INDEX = "pytorch_model.bin.index.json"
# The marks import-hf and export-hf leave in what they write, so that --force may replace it later.
IMPORT_MARKER = ".slmkit-import-hf"
EXPORT_MARKER = ".slmkit-export-hf"
GENERATION_CONFIG = "generation_config.json"
MODEL_CARD = "README.md"
# The preset `slm generate` samples with when none is named (slmkit.cli.generate), and so the export's default.
DEFAULT_GENERATION_PRESET = "coherent"
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")  # a Hub license identifier: mit, apache-2.0, cc-by-4.0, other


# -- reading an HF directory --------------------------------------------------------------------
def read_hf_config(hf_dir: str | os.PathLike) -> dict:
    """The parsed config.json of an HF model directory; SlmError if the directory or file is unusable."""
    hf_dir = Path(hf_dir)
    if not hf_dir.exists():
        raise SlmError(f"Hugging Face model directory not found: {hf_dir}")
    if not hf_dir.is_dir():
        raise SlmError(f"{hf_dir} is not a directory; give the folder that holds config.json and the weights")
    path = hf_dir / "config.json"
    if not path.is_file():
        raise SlmError(f"{hf_dir} has no config.json; it is not a Hugging Face model directory "
                       f"(download the whole model folder, e.g. with `huggingface-cli download`)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SlmError(f"{path} is not valid JSON ({error}); download it again") from None


def read_hf_weights(hf_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of an HF model directory, from safetensors (single or sharded) or pytorch_model.bin.

    .bin files are read with `torch.load(weights_only=True)`: a file that would run code is refused.
    Raises SlmError for no weight file, or a missing, truncated or damaged one.
    """
    hf_dir = Path(hf_dir)
    if (hf_dir / SAFETENSORS).is_file():
        return _read_safetensors(hf_dir / SAFETENSORS)
    if (hf_dir / SAFETENSORS_INDEX).is_file():
        return _read_sharded(hf_dir, SAFETENSORS_INDEX, _read_safetensors)
    if (hf_dir / PYTORCH_BIN).is_file():
        return _read_bin(hf_dir / PYTORCH_BIN)
    if (hf_dir / PYTORCH_BIN_INDEX).is_file():
        return _read_sharded(hf_dir, PYTORCH_BIN_INDEX, _read_bin)
    raise SlmError(f"{hf_dir} has no weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, {PYTORCH_BIN} or "
                   f"{PYTORCH_BIN_INDEX}; download the weight files too")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise SlmError(f"cannot read {path}: {error}; the file is truncated or damaged, download it again") from None


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refused an object: never load it
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        raise SlmError(f"refusing {path}: it holds {found.group(1) if found else 'an object'}, something other "
                       f"than tensors, and loading it could run code; convert it to safetensors with a "
                       f"trusted tool") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise SlmError(f"cannot read {path}: {str(error).splitlines()[0]}; the file is truncated or damaged, "
                       f"download it again") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise SlmError(f"{path} is not a state dict of tensors; it is not a Hugging Face weight file")
    return state


def _read_sharded(hf_dir: Path, index_name: str, read) -> dict[str, torch.Tensor]:
    index_path = hf_dir / index_name
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise SlmError(f"{index_path} is not a valid weight index ({error!r}); download it again") from None
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        path = hf_dir / shard
        if not path.is_file():
            raise SlmError(f"{index_path} lists shard {shard}, which is missing; download it too")
        state.update(read(path))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise SlmError(f"shards listed in {index_path} lack {len(missing)} tensor(s), e.g. {missing[:3]}; "
                       f"the download is incomplete")
    return state


# -- import -------------------------------------------------------------------------------------
def import_hf(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert a local HF model directory (GPT-2, Llama/SmolLM2, Gemma 3, GPT-NeoX) into an slmkit checkpoint.

    Tensors keep their stored dtype. A GPT-2 or GPT-NeoX bias group that is zero throughout (as an
    slmkit export of a bias-free model writes it) imports as no bias (`without_zero_biases`). Tokenizer files found in `hf_dir` (tokenizer.json, vocab.json,
    merges.txt, ...) are copied into the checkpoint as they are. Returns the checkpoint directory.
    Raises SlmError (and writes nothing) for an unusable directory, an unsupported architecture or
    feature, missing, truncated or mis-shaped weights, or an existing `out_dir` without `overwrite`.
    """
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    hf_config = read_hf_config(hf_dir)
    config = config_from_hf(hf_config)
    _check_out_dir(out_dir, overwrite, inputs=(hf_dir,), kind="an slmkit checkpoint (import-hf)",
                   marker=IMPORT_MARKER)
    hf_state = read_hf_weights(hf_dir)
    config = without_zero_biases(config, hf_state)
    state = state_from_hf(hf_state, config)
    tokenizer_files = {name: hf_dir / name for name in HF_TOKENIZER_FILES if (hf_dir / name).is_file()}
    source = {"format": "huggingface", "path": str(hf_dir.resolve()), "model_type": hf_config.get("model_type"),
              "architectures": hf_config.get("architectures")}
    with output_errors(out_dir, "the checkpoint", flag="OUT", needed=megabytes(_state_bytes(state))):
        with _io_errors_as_os_errors(out_dir):
            write_checkpoint(out_dir, config, state, extra={"source": source}, extra_files=tokenizer_files)
        write_marker(out_dir, IMPORT_MARKER, "an slmkit checkpoint (import-hf)")
    return out_dir


def _check_out_dir(out_dir: Path, overwrite: bool, inputs: tuple, kind: str, marker: str) -> None:
    """SlmError unless `out_dir` is new, or `overwrite` is asked and `check_replaceable` allows it."""
    if not os.path.lexists(out_dir):
        return
    check_replaceable(out_dir, inputs, kind=kind, marker=marker)
    if not overwrite:
        raise SlmError(f"{out_dir} already exists; choose a new directory or pass --force to replace it")


@contextlib.contextmanager
def _io_errors_as_os_errors(path: Path):
    """safetensors reports a failed write (a full disk, a read-only folder) as SafetensorError naming the
    "os error N"; raise it as the OSError it is, so that `output_errors` turns it into one clear line."""
    try:
        yield
    except SafetensorError as error:
        found = re.search(r"os error (\d+)", str(error))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def _state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


# -- export -------------------------------------------------------------------------------------
def export_hf(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False, *,
              card: bool = True, license: str = DEFAULT_LICENSE, generation_preset: str = DEFAULT_GENERATION_PRESET,
              audit: bool = True, model_id: str | None = None) -> Path:
    """Write an slmkit checkpoint as an HF model directory: config.json, model.safetensors, the tokenizer,
    generation_config.json and (with `card`) a model card, README.md.

    `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads it as GPT2LMHeadModel,
    LlamaForCausalLM, Gemma3ForCausalLM or GPTNeoXForCausalLM with the same logits. `ckpt_dir` may be a
    checkpoint or a run directory (its best, else last, checkpoint). A tokenizer saved in the checkpoint
    is exported too. generation_config.json holds the end-of-text id(s) and the sampling defaults of
    `generation_preset` (see `generation_config`). The card is written from the checkpoint's run (see
    `slmkit.interop.model_card`) under `license` (a Hub license id); `audit` adds the `slm audit`
    verdict (it reads the run's dataset); `model_id` is the name its usage example loads (default:
    `out_dir` as given). Returns `out_dir`. Raises SlmError (and writes nothing) when the checkpoint
    is missing or damaged, its config fits no HF architecture exactly, the preset or license is
    unknown, or `out_dir` exists without `overwrite`.
    """
    given, out_dir = Path(ckpt_dir), Path(out_dir)
    if generation_preset not in PRESETS:
        raise SlmError(f"unknown generation preset {generation_preset!r}; choose one of {', '.join(PRESETS)}")
    if not isinstance(license, str) or not _LICENSE.match(license):
        raise SlmError(f"license {license!r} is not a Hugging Face license identifier; use one in lower case, "
                       f"e.g. mit, apache-2.0, cc-by-4.0, or other")
    ckpt_dir = resolve_checkpoint_dir(given)
    config, state, _ = load_state(ckpt_dir)
    dtype = str(state["embed.weight"].dtype).removeprefix("torch.") if "embed.weight" in state else "float32"
    hf_config = config_to_hf(config, dtype=dtype)
    hf_state = state_to_hf(state, config)
    # The run directory given counts as an input too: OUT may be neither the run, nor its parent.
    _check_out_dir(out_dir, overwrite, inputs=(given, ckpt_dir), kind="an HF export", marker=EXPORT_MARKER)
    with output_errors(out_dir, "the Hugging Face model", flag="OUT", needed=megabytes(_state_bytes(hf_state))), \
            atomic_dir(out_dir) as tmp:
        with _io_errors_as_os_errors(tmp / SAFETENSORS):
            save_file(hf_state, str(tmp / SAFETENSORS), metadata={"format": "pt"})
        tokenizer = export_tokenizer(ckpt_dir, tmp)
        for key, value in tokenizer.ids.items():
            if hf_config.get(key) is None:  # ids recorded at import win over the tokenizer's
                hf_config[key] = value
        generation = generation_config(generation_preset, hf_config, tokenizer.end_of_turn_id)
        (tmp / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        if card:
            text = model_card(ckpt_dir, run_dir=find_run(given, ckpt_dir),
                              architecture=ARCHITECTURES[hf_family(config)], parameters=_numel(state),
                              hf_parameters=_numel(hf_state), generation=generation,
                              generation_preset=generation_preset, tokenizer=tokenizer.description,
                              license=license, audit=audit, model_id=model_id or str(out_dir))
            (tmp / MODEL_CARD).write_text(text)
        write_marker(tmp, EXPORT_MARKER, "an HF export")
    return out_dir


def generation_config(preset: str, token_ids: dict, end_of_turn_id: int | None = None) -> dict:
    """generation_config.json's fields: the special token ids and the sampling defaults of `preset`.

    token_ids: bos/eos/pad ids (as in config.json; missing or None ones are left out). The eos id becomes
    [eos, end_of_turn_id] for a chat tokenizer, so that `generate` stops at the end of a turn; pad
    defaults to the first eos id (what transformers falls back to, without its warning). The preset
    (slmkit.generate.config.PRESETS) gives do_sample, temperature, top_k, top_p, repetition_penalty and
    max_new_tokens in transformers' names; a greedy preset writes do_sample false and no sampling fields.
    """
    fields = {key: token_ids[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")
              if token_ids.get(key) is not None}
    eos = fields.get("eos_token_id")
    if end_of_turn_id is not None and eos is not None:
        eos = [*(eos if isinstance(eos, list) else [eos]), end_of_turn_id]
        fields["eos_token_id"] = list(dict.fromkeys(eos))
    if "pad_token_id" not in fields and eos is not None:
        fields["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
    sampling = GenerationConfig.from_preset(preset)
    fields["do_sample"] = not sampling.greedy
    if not sampling.greedy:
        fields.update({"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p})
    fields.update({"repetition_penalty": sampling.repetition_penalty, "max_new_tokens": sampling.max_new_tokens})
    return fields


@dataclass
class _ExportedTokenizer:
    """What exporting the checkpoint's tokenizer gave: its special ids for config.json, the <|im_end|> id of
    a chat tokenizer (else None), and a one-line description for the model card (None without one)."""

    ids: dict
    end_of_turn_id: int | None
    description: str | None


def export_tokenizer(ckpt_dir: Path, out_dir: Path) -> _ExportedTokenizer:
    """The checkpoint's tokenizer in HF form: through slmkit.tokenizer when it can, else HF files copied.

    A tokenizer with the chat tokens brings its chat template (tokenizer_config.json, written by
    `Tokenizer.export_hf`) and its <|im_end|> id, which generation_config.json adds to the stop ids.
    """
    if (ckpt_dir / MANIFEST).is_file():
        tokenizer = load_tokenizer(ckpt_dir)
        if hasattr(tokenizer, "export_hf"):
            tokenizer.export_hf(out_dir)
            ids = {"bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id}
            if tokenizer.pad_id is not None:
                ids["pad_token_id"] = tokenizer.pad_id
            chat = tokenizer.has_chat_tokens()
            end_of_turn = tokenizer.special_token_id(CHAT_TOKENS[1]) if chat else None
            description = (f"{tokenizer.name} ({tokenizer.kind}), {tokenizer.vocab_size:,} tokens, end-of-text id "
                           f"{tokenizer.eot_id}" + (", with the ChatML chat tokens and template" if chat else ""))
            return _ExportedTokenizer(ids, end_of_turn, description)
    copied = []
    for name in HF_TOKENIZER_FILES:
        if (ckpt_dir / name).is_file():
            shutil.copy2(ckpt_dir / name, out_dir / name)
            copied.append(name)
    description = f"Hugging Face tokenizer files carried over from the import ({', '.join(copied)})" if copied else None
    return _ExportedTokenizer({}, None, description)


def _numel(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in state.values())
