"""ONNX export of the one Transformer, with or without a KV cache, and greedy decoding through onnxruntime.

`export_onnx(CKPT, OUT)` writes OUT/model.onnx (float32) with the input and output names that
onnxruntime-genai and optimum use; `export_onnx(CKPT, OUT, quantize="int8")` or `quantize="int4"` writes
the same graph with 8-bit or 4-bit weights instead (see `quantize_graph`):

    with the cache (default)
        inputs   input_ids (batch, seq) int64
                 attention_mask (batch, past_seq + seq) int64: 1 for tokens, 0 for left padding
                 past_key_values.{i}.key / .value (batch, n_kv_heads, past_seq, head_dim) float32
        outputs  logits (batch, seq, vocab) float32
                 present.{i}.key / .value (batch, n_kv_heads, past_seq + seq, head_dim) float32
    without the cache
        inputs   input_ids (batch, seq) int64
        outputs  logits (batch, seq, vocab) float32

Positions are derived from attention_mask inside the graph (a row's first token is position 0), so
there is no position_ids input. The present keys and values are the past ones with this call's
appended, on every layer; a sliding-window layer keeps its whole history in the cache too and its
window holds through the attention mask (time steps further back than the window are masked).

The graph is the model's own forward: `GraphCache` stands in for slmkit's KVCache (the same
reserve / prepare / update calls), taking past keys and values as inputs and handing back the
present ones, so embedding, rotary tables, masks, attention and norms are the code slmkit runs.

The int8 graph is onnxruntime's own dynamic quantization of the float32 one (`quantize_graph`):
weights of every MatMul with a constant weight, the (tied) head included, and the embedding table are
stored in 8 bits; activations are quantized per call; keys, values, logits and every input and output
stay as above. The int4 graph is onnxruntime's own block-wise 4-bit weight quantization
(MatMulNBitsQuantizer): every MatMul with a constant weight, the head included, becomes a MatMulNBits
and the embedding's Gather a GatherBlockQuantized (onnxruntime contrib operators), everything else float32.

Beside model.onnx: config.json (the slmkit ModelConfig and what was exported), genai_config.json
(onnxruntime-genai's layout: the decoder's input and output names, sizes, special ids), and the
checkpoint's tokenizer (slmkit's files, so `load_tokenizer(OUT)` works, and Hugging Face files where
the tokenizer has them). `OnnxModel(OUT)` runs the export with onnxruntime and decodes greedily.

onnx, onnxscript (the exporter's translator) and onnxruntime are an optional extra (`pip install
slmkit[onnx]`); this module imports them when called, and says how to install them when missing.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slmkit.errors import SlmError
from slmkit.interop.hf import HF_TOKENIZER_FILES
from slmkit.model.checkpoint import load_state, load_weights
from slmkit.model.config import ModelConfig
from slmkit.model.layers import visible_keys
from slmkit.model.transformer import Transformer
from slmkit.rundir import resolve_checkpoint_dir
from slmkit.tokenizer import MANIFEST, load_tokenizer
from slmkit.utils import (
    atomic_dir,
    check_replaceable,
    megabytes,
    output_errors,
    write_json_atomic,
    write_marker,
)

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "MAX_OPSET", "QUANTIZE_CHOICES", "INT4_BLOCK_SIZES", "DEFAULT_INT4_BLOCK_SIZE",
           "OnnxModel", "GraphCache", "export_onnx", "input_names", "output_names", "quantize_graph"]

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.json"
GENAI_CONFIG_FILE = "genai_config.json"
FORMAT = "slmkit-onnx"
VERSION = 1
EXPORT_MARKER = ".slmkit-export-onnx"  # the mark export-onnx leaves, so that --force may replace its output
# torch's ONNX exporter writes opset 18 and newer (older ones would need a down-conversion it cannot do).
MIN_OPSET, DEFAULT_OPSET, MAX_OPSET = 18, 20, 23
# The sizes of the example inputs the graph is traced with; every one is marked dynamic. Distinct values
# >= 2 so that no dimension is specialised or confused with another.
_EXAMPLE_BATCH, _EXAMPLE_SEQ, _EXAMPLE_PAST = 2, 3, 4
INSTALL_HINT = "pip install 'slmkit[onnx]' (or: pip install onnx onnxscript onnxruntime)"
QUANTIZE_CHOICES = ("int8", "int4")
# onnxruntime's dynamic int8 quantization, settings measured on the quick-start model (docs/interop.md): uint8
# weights run the U8U8 kernels, which cannot saturate on CPUs without VNNI, as fast as int8 ones here; one scale
# per output channel halves the loss cost and lifts top-1 agreement with float32 from 94.6% to 95.4%.
INT8_SETTINGS = {"weight_type": "QUInt8", "per_channel": True, "reduce_range": False}
# onnxruntime's block-wise 4-bit weights (MatMulNBitsQuantizer, round to nearest), settings measured on the
# quick-start model and slm-25m (docs/interop.md): one scale and zero point per block of 32 weights along the
# input dimension (block 32 halves block 128's loss cost; 128 decodes faster); asymmetric (zero points) lowers the
# loss cost against symmetric; accuracy_level 4 computes with int8 activations (the fast CPU kernels, about 2x
# accuracy_level 0's decode speed at the same loss); the embedding's Gather becomes a GatherBlockQuantized too.
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits takes powers of two from 16
DEFAULT_INT4_BLOCK_SIZE = 32
INT4_SETTINGS = {"bits": 4, "is_symmetric": False, "accuracy_level": 4, "op_types_to_quantize": ["MatMul", "Gather"]}
INT4_OPSET = 21  # the 4-bit embedding table is a UINT4 tensor, a type of opset 21 (IR 10) and newer
EXTERNAL_DATA_BYTES = 2 * 1024**3  # one protobuf file holds at most 2 GB; larger graphs keep weights beside it


def _require(module: str):
    """Import an optional dependency, or SlmError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SlmError(f"ONNX export and inference need the {module} package, which is not installed; "
                       f"{INSTALL_HINT}") from None


# -- the graph --------------------------------------------------------------------------------------
def input_names(config: ModelConfig, cache: bool = True) -> list[str]:
    """The graph's input names, in order."""
    if not cache:
        return ["input_ids"]
    return ["input_ids", "attention_mask"] + [f"past_key_values.{i}.{kind}" for i in range(config.n_layers)
                                              for kind in ("key", "value")]


def output_names(config: ModelConfig, cache: bool = True) -> list[str]:
    """The graph's output names, in order."""
    if not cache:
        return ["logits"]
    return ["logits"] + [f"present.{i}.{kind}" for i in range(config.n_layers) for kind in ("key", "value")]


class GraphCache:
    """A KV cache for an exported graph: past keys and values come in as tensors, present ones go out.

    It answers the calls the Transformer makes of slmkit's KVCache (reserve, prepare, update) with
    tensor operations only, so the traced graph works for any past and new length: the new steps
    follow the past ones, every layer attends over past + new keys under a `visible_keys` mask (causal,
    within its window, not padding), and `present_keys` / `present_values` collect past + new per layer.
    `past_keys` None: no past at all (the graph without a cache).
    """

    def __init__(self, windows: list[int | None], past_keys: list[torch.Tensor] | None = None,
                 past_values: list[torch.Tensor] | None = None):
        self.windows = windows
        self.past_keys, self.past_values = past_keys, past_values
        self.present_keys: list[torch.Tensor] = []
        self.present_values: list[torch.Tensor] = []
        self._key_steps: torch.Tensor | None = None

    def reserve(self, n_steps, device=None) -> torch.Tensor:
        start = 0 if self.past_keys is None else self.past_keys[0].shape[2]
        self._key_steps = torch.arange(start + n_steps, device=device)
        return self._key_steps[start:]

    def prepare(self, steps: torch.Tensor, pad_offsets: torch.Tensor | None) -> dict:
        return {window: visible_keys(steps, self._key_steps, window, pad_offsets) for window in self.windows}

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor):
        if self.past_keys is not None:
            key = torch.cat([self.past_keys[layer], key], dim=2)
            value = torch.cat([self.past_values[layer], value], dim=2)
        self.present_keys.append(key)
        self.present_values.append(value)
        return key, value


class DecoderWithCache(nn.Module):
    """(input_ids, attention_mask, past k/v per layer...) -> (logits, present k/v per layer...)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor):
        cache = GraphCache(self.model.windows, list(past[0::2]), list(past[1::2]))
        # Left padding only: a row's zeros all come first, so their count is where its tokens start.
        pad_offsets = attention_mask.shape[1] - attention_mask.sum(dim=1)
        logits = self.model(input_ids, cache=cache, pad_offsets=pad_offsets)
        present = [t for pair in zip(cache.present_keys, cache.present_values) for t in pair]
        return (logits, *present)


class DecoderWithoutCache(nn.Module):
    """input_ids -> logits, every position attending over the ones before it."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, cache=GraphCache(self.model.windows))


def _example_inputs(config: ModelConfig, cache: bool) -> tuple:
    ids = torch.zeros(_EXAMPLE_BATCH, _EXAMPLE_SEQ, dtype=torch.long)
    if not cache:
        return (ids,)
    mask = torch.ones(_EXAMPLE_BATCH, _EXAMPLE_PAST + _EXAMPLE_SEQ, dtype=torch.long)
    shape = (_EXAMPLE_BATCH, config.n_kv_heads, _EXAMPLE_PAST, config.head_dim)
    return (ids, mask, *[torch.zeros(shape) for _ in range(2 * config.n_layers)])


def _dynamic_shapes(config: ModelConfig, cache: bool) -> tuple:
    ids = {0: "batch", 1: "seq"}
    if not cache:
        return (ids,)
    past = tuple({0: "batch", 2: "past_seq"} for _ in range(2 * config.n_layers))
    return (ids, {0: "batch", 1: "total_seq"}, past)


@contextlib.contextmanager
def _quiet_loggers(names: list[str]):
    """The named loggers at ERROR for a while."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's progress lines, its optional-operator notices and its tracer warnings, silenced:
    they say nothing a user of `slm export-onnx` can act on."""
    with _quiet_loggers(["torch.onnx", "torch.export", "torch._export", "onnxscript"]), warnings.catch_warnings(), \
            contextlib.redirect_stdout(open(os.devnull, "w")) as sink:
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            sink.close()


def export_graph(model: Transformer, path: str | os.PathLike, cache: bool = True, opset: int = DEFAULT_OPSET) -> None:
    """Write `model` (float32, eval mode) as an ONNX graph at `path` with the names of `input_names` /
    `output_names`, batch and sequence lengths dynamic. Needs onnx and onnxscript."""
    _require("onnx")
    _require("onnxscript")
    wrapper = (DecoderWithCache if cache else DecoderWithoutCache)(model).eval()
    config = model.config
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            wrapper, _example_inputs(config, cache), dynamo=True, opset_version=opset,
            input_names=input_names(config, cache), output_names=output_names(config, cache),
            dynamic_shapes=_dynamic_shapes(config, cache), verbose=False,
        )
        program.save(str(path))  # weights inside model.onnx, or beside it (model.onnx.data) past 2 GB
    _finish_graph(path, opset)


def _finish_graph(path, opset: int) -> None:
    """Check the opset written, and name the outputs' dynamic axes as the inputs' are (the exporter
    writes expressions like 's0 + s1')."""
    onnx = _require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    written = [entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")]
    if written != [opset]:  # the exporter converts from its own opset and may leave the model as it was
        raise SlmError(f"torch's ONNX exporter could not write opset {opset} for this model (it wrote "
                       f"{written}); use --opset {DEFAULT_OPSET}")
    for output in proto.graph.output:
        dims = output.type.tensor_type.shape.dim
        names = ["batch", "seq"] if output.name == "logits" else ["batch", None, "total_seq"]
        for dim, name in zip(dims, names):
            if name is not None:
                dim.dim_param = name
    onnx.save(proto, str(path))


def quantize_graph(float_path: str | os.PathLike, out_path: str | os.PathLike, external_data: bool = False,
                   dtype: str = "int8", block_size: int = DEFAULT_INT4_BLOCK_SIZE) -> dict:
    """Write the float32 graph at `float_path` with `dtype` weights at `out_path` by onnxruntime's own tools,
    after its `quant_pre_process`; returns the settings, for config.json.

    int8: `quantize_dynamic` (INT8_SETTINGS): every MatMul with a constant weight becomes a MatMulInteger, the
    embedding's Gather reads an 8-bit table. int4: `MatMulNBitsQuantizer` (INT4_SETTINGS, one scale and zero
    point per `block_size` weights): every such MatMul becomes a MatMulNBits and the embedding's Gather a
    GatherBlockQuantized (com.microsoft operators); the float graph must be of opset INT4_OPSET or newer.

    The pre-processing (onnxruntime's basic graph optimisations) folds the transpose of a tied head's
    weight into a constant, so the head is quantized like every other weight; without it quantize_dynamic
    would leave the head a float MatMul that dequantizes the whole vocabulary matrix on every call (slower
    than float32 on slm-25m). A tied matrix is thus stored twice (the Gather's table and the head's
    transposed copy). Inputs, outputs and the cache stay float32. `external_data`: weights in OUT.data
    beside the graph (graphs over 2 GB). The pre-processed float graph, written beside `float_path`, is
    removed. Raises SlmError for a `dtype` not in QUANTIZE_CHOICES or an int4 graph under INT4_OPSET. Needs
    onnxruntime.
    """
    if dtype not in QUANTIZE_CHOICES:
        raise SlmError(f"quantize {dtype!r} is not supported; the choices are {', '.join(QUANTIZE_CHOICES)}")
    _require("onnxruntime")
    quantization = _require("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_path, out_path = Path(float_path), Path(out_path)
    prepared = float_path.with_name("preprocessed.onnx")
    # Symbolic shape inference is skipped: it fails on the exporter's shape arithmetic, and the
    # optimisation and ONNX shape inference are what the quantizers need.
    quant_pre_process(float_path, prepared, skip_symbolic_shape=True, save_as_external_data=external_data,
                      all_tensors_to_one_file=True, external_data_location=prepared.name + ".data")
    try:
        if dtype == "int4":
            settings = _quantize_int4(prepared, out_path, external_data, block_size)
        else:
            quantization.quantize_dynamic(
                prepared, out_path, weight_type=quantization.QuantType[INT8_SETTINGS["weight_type"]],
                per_channel=INT8_SETTINGS["per_channel"], reduce_range=INT8_SETTINGS["reduce_range"],
                use_external_data_format=external_data)
            settings = {"tool": "onnxruntime.quantization.quantize_dynamic", **INT8_SETTINGS,
                        "activations": "uint8, one scale per call (DynamicQuantizeLinear)"}
    finally:
        for path in (prepared, prepared.with_name(prepared.name + ".data")):
            path.unlink(missing_ok=True)
    return {**settings, "onnxruntime": _require("onnxruntime").__version__,
            "preprocessed": "quant_pre_process (symbolic shape inference skipped)"}


def _quantize_int4(prepared: Path, out_path: Path, external_data: bool, block_size: int) -> dict:
    """MatMulNBitsQuantizer over the pre-processed graph at `prepared`, written to `out_path`."""
    onnx = _require("onnx")
    # The quantizer's module calls logging.basicConfig(level=INFO) when imported, which would print every
    # later INFO line of the process; basicConfig does nothing while the root logger has a handler.
    root, guard = logging.getLogger(), logging.NullHandler()
    root.addHandler(guard)
    try:
        nbits = importlib.import_module("onnxruntime.quantization.matmul_nbits_quantizer")
    finally:
        root.removeHandler(guard)
    graph = onnx.load(str(prepared))
    opset = next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))
    if opset < INT4_OPSET:  # the quantizer would raise the opset number of the graph itself, unchecked
        raise SlmError(f"ONNX opset {opset} cannot hold int4 weights (4-bit tensors are opset {INT4_OPSET} and "
                       f"newer); export the float graph with opset {INT4_OPSET} or newer")
    quantizer = nbits.MatMulNBitsQuantizer(
        graph, block_size=block_size, bits=INT4_SETTINGS["bits"],
        is_symmetric=INT4_SETTINGS["is_symmetric"], accuracy_level=INT4_SETTINGS["accuracy_level"],
        op_types_to_quantize=tuple(INT4_SETTINGS["op_types_to_quantize"]))
    with _quiet_loggers([nbits.__name__]):  # a line per node at INFO
        quantizer.process()
        quantizer.model.save_model_to_file(str(out_path), use_external_data_format=external_data)
    return {"tool": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer", **INT4_SETTINGS,
            "block_size": block_size, "operators": "MatMul -> MatMulNBits, Gather -> GatherBlockQuantized",
            "activations": "float32 (int8 inside MatMulNBits at accuracy_level 4)"}


# -- export -------------------------------------------------------------------------------------
def export_onnx(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, *, cache: bool = True,
                opset: int | None = None, quantize: str | None = None, block_size: int | None = None,
                overwrite: bool = False) -> Path:
    """Write an slmkit checkpoint (or a run's best, else last, checkpoint) as an ONNX model directory.

    OUT/model.onnx (float32; with `cache` the KV-cache inputs and outputs, see the module docstring),
    config.json, genai_config.json and the tokenizer files. opset: the ONNX opset, MIN_OPSET to
    MAX_OPSET (default DEFAULT_OPSET; INT4_OPSET for int4). quantize: None (float32), "int8" or "int4": the
    float32 graph quantized by onnxruntime (see `quantize_graph`; int8 about a third of the size, int4 about
    a fifth, the same inputs and outputs). block_size: int4's weights per scale, one of INT4_BLOCK_SIZES
    (default DEFAULT_INT4_BLOCK_SIZE). Returns `out_dir`. Raises SlmError (and writes nothing) when the
    checkpoint is missing, damaged or quantized, the opset is out of range (or under INT4_OPSET for int4),
    `quantize` is not a choice, `block_size` is not one or is given without int4, the onnx packages are
    missing, or `out_dir` exists and may not be replaced (without `overwrite`, or an input or a directory
    around one, or something export-onnx did not write).
    """
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise SlmError(f"quantize {quantize!r} is not supported; the choices are {', '.join(QUANTIZE_CHOICES)} "
                       f"(weights in 8 or 4 bits by onnxruntime's quantizers), or none for float32")
    if block_size is not None and quantize != "int4":
        raise SlmError(f"block size {block_size!r} applies to 4-bit weights only (--quantize int4), not to "
                       f"{quantize or 'float32'}; drop --block-size or add --quantize int4")
    if quantize == "int4":
        block_size = DEFAULT_INT4_BLOCK_SIZE if block_size is None else block_size
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size not in INT4_BLOCK_SIZES:
            raise SlmError(f"block size {block_size!r} is not supported; onnxruntime's MatMulNBits takes "
                           f"{', '.join(map(str, INT4_BLOCK_SIZES))} (default {DEFAULT_INT4_BLOCK_SIZE})")
        if opset is not None and not isinstance(opset, bool) and isinstance(opset, int) and opset < INT4_OPSET:
            raise SlmError(f"ONNX opset {opset} cannot hold int4 weights (4-bit tensors are opset {INT4_OPSET} "
                           f"and newer); use --opset {INT4_OPSET} (the int4 default) or newer")
    opset = (INT4_OPSET if quantize == "int4" else DEFAULT_OPSET) if opset is None else opset
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise SlmError(f"ONNX opset {opset!r} is not supported: torch's exporter writes opsets {MIN_OPSET} to "
                       f"{MAX_OPSET}; use --opset {DEFAULT_OPSET} (the default) or another in that range")
    for module in ("onnx", "onnxscript") + (("onnxruntime",) if quantize else ()):
        _require(module)
    given, out_dir = Path(ckpt_dir), Path(out_dir)
    ckpt_dir = resolve_checkpoint_dir(given)
    config, state, _ = load_state(ckpt_dir)
    if os.path.lexists(out_dir):
        # The run directory given counts as an input too: OUT may be neither the run, nor its parent.
        check_replaceable(out_dir, (given, ckpt_dir), kind="an ONNX export", marker=EXPORT_MARKER)
        if not overwrite:
            raise SlmError(f"{out_dir} already exists; choose a new directory or pass --force to replace it")
    model = Transformer(config)
    load_weights(model, state, str(ckpt_dir))
    model = model.float().eval()
    n_bytes = 4 * sum(p.numel() for p in model.parameters())
    # Quantized: the float32 graph and its pre-processed copy are on disk together for a while.
    needed = megabytes(n_bytes * (2 if quantize else 1))
    with output_errors(out_dir, "the ONNX model", flag="OUT", needed=needed), atomic_dir(out_dir) as tmp:
        quantization = {}
        if quantize:
            float_dir = tmp / "float32"  # inside the atomic directory, so an interrupted export leaves nothing
            float_dir.mkdir()
            export_graph(model, float_dir / MODEL_FILE, cache=cache, opset=opset)
            quantization = {"quantization": quantize_graph(float_dir / MODEL_FILE, tmp / MODEL_FILE,
                                                           external_data=n_bytes >= EXTERNAL_DATA_BYTES,
                                                           dtype=quantize, block_size=block_size)}
            shutil.rmtree(float_dir)
        else:
            export_graph(model, tmp / MODEL_FILE, cache=cache, opset=opset)
        special_ids = _export_tokenizer(ckpt_dir, tmp)
        write_json_atomic(tmp / CONFIG_FILE, {
            "format": FORMAT, "version": VERSION, "model": config.to_dict(), "cache": cache, "opset": opset,
            "dtype": quantize or "float32", **quantization, "inputs": input_names(config, cache),
            "outputs": output_names(config, cache), "source": str(ckpt_dir.resolve()), **special_ids,
        })
        write_json_atomic(tmp / GENAI_CONFIG_FILE, genai_config(config, cache, special_ids))
        write_marker(tmp, EXPORT_MARKER, "an ONNX export")
    return out_dir


# onnxruntime-genai's model type per family. Its decoder-only path ("llama") runs any graph with this
# export's inputs and outputs; its "gpt2" type expects GPT-2's older layout (one past tensor per layer,
# keys and values stacked), which this export does not write, so a GPT-2 export is described as "llama".
GENAI_TYPES = {"llama": "llama", "gemma3": "gemma3_text"}


def genai_config(config: ModelConfig, cache: bool, special_ids: dict) -> dict:
    """The decoder's description in onnxruntime-genai's genai_config.json layout (names, sizes, ids)."""
    inputs = {"input_ids": "input_ids"}
    outputs = {"logits": "logits"}
    if cache:
        inputs.update({"attention_mask": "attention_mask", "past_key_names": "past_key_values.%d.key",
                       "past_value_names": "past_key_values.%d.value"})
        outputs.update({"present_key_names": "present.%d.key", "present_value_names": "present.%d.value"})
    # No "sliding_window" section: it selects genai's windowed (ring) cache, whose layout is another; the
    # graph keeps a sliding layer's whole history and holds the window in its mask.
    decoder = {"filename": MODEL_FILE, "hidden_size": config.d_model, "num_hidden_layers": config.n_layers,
               "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
               "head_size": config.head_dim, "inputs": inputs, "outputs": outputs}
    eot = special_ids.get("eos_token_id")
    return {
        "model": {"type": GENAI_TYPES.get(config.family, "llama"), "context_length": config.context_length,
                  "vocab_size": config.vocab_size,
                  "bos_token_id": special_ids.get("bos_token_id", eot), "eos_token_id": eot,
                  "pad_token_id": special_ids.get("pad_token_id", eot), "decoder": decoder},
        "search": {"do_sample": False, "max_length": config.context_length, "past_present_share_buffer": False},
    }


def _export_tokenizer(ckpt_dir: Path, out_dir: Path) -> dict:
    """The checkpoint's tokenizer into `out_dir`: slmkit's own files (so `load_tokenizer(out_dir)` gives
    the same ids) over Hugging Face files where it can be written that way; HF tokenizer files carried in
    from an import are copied as they are. Returns the special ids {"eos_token_id": ...} it defines."""
    if not (ckpt_dir / MANIFEST).is_file():
        for name in HF_TOKENIZER_FILES:
            if (ckpt_dir / name).is_file():
                shutil.copy2(ckpt_dir / name, out_dir / name)
        return {}
    tokenizer = load_tokenizer(ckpt_dir)
    with contextlib.suppress(SlmError):  # a tokenizer with no HF form still travels in slmkit's files
        tokenizer.export_hf(out_dir)
    tokenizer.save(out_dir)
    ids = {}
    if tokenizer.eot_id is not None:
        ids = {"bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id}
    if tokenizer.pad_id is not None:
        ids["pad_token_id"] = tokenizer.pad_id
    return ids


# -- inference through onnxruntime --------------------------------------------------------------
class OnnxModel:
    """An export-onnx directory run by onnxruntime (CPU): logits, and greedy decoding over the KV cache.

        model = OnnxModel("out/onnx")
        model.generate([12, 7, 99], max_new_tokens=20)    # slmkit's greedy tokens

    threads: onnxruntime's intra-op threads (None: its default, every core). Raises SlmError when the
    directory is not an export-onnx output or onnxruntime is not installed.
    """

    def __init__(self, directory: str | os.PathLike, threads: int | None = None):
        ort = _require("onnxruntime")
        self.directory = Path(directory)
        path = self.directory / CONFIG_FILE
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            meta = None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not (self.directory / MODEL_FILE).is_file():
            raise SlmError(f"{self.directory} is not an ONNX export of slmkit (no {CONFIG_FILE} of format {FORMAT} "
                           f"beside {MODEL_FILE}); write one with `slm export-onnx CKPT {self.directory}`")
        self.meta = meta
        self.config = ModelConfig.from_dict(meta["model"], where=str(path))
        self.has_cache = bool(meta["cache"])
        self.eot_id = meta.get("eos_token_id")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.directory / MODEL_FILE), options,
                                            providers=["CPUExecutionProvider"])

    def empty_past(self, batch_size: int) -> list[np.ndarray]:
        """Past keys and values of no steps: (batch, n_kv_heads, 0, head_dim) per layer, key then value."""
        shape = (batch_size, self.config.n_kv_heads, 0, self.config.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.config.n_layers)]

    def forward(self, input_ids, attention_mask=None, past: list[np.ndarray] | None = None):
        """(logits (B, T, vocab), present keys and values) for input_ids (B, T).

        With the cache: attention_mask (B, past + T), 1 for tokens and 0 for left padding (default:
        all ones); past: the previous call's present (default: none). Without: (logits, []).
        """
        input_ids = np.asarray(input_ids, dtype=np.int64)
        if not self.has_cache:
            return self.session.run(None, {"input_ids": input_ids})[0], []
        past = self.empty_past(input_ids.shape[0]) if past is None else past
        if attention_mask is None:
            attention_mask = np.ones((input_ids.shape[0], past[0].shape[2] + input_ids.shape[1]), dtype=np.int64)
        feeds = dict(zip(input_names(self.config), [input_ids, np.asarray(attention_mask, dtype=np.int64), *past]))
        logits, *present = self.session.run(None, feeds)
        return logits, present

    def generate(self, prompt: list[int] | list[list[int]], max_new_tokens: int,
                 eot_id: int | None = None) -> list[int] | list[list[int]]:
        """Greedy continuation(s) of token ids: a list of ids, or a batch of such lists (left-padded;
        each row comes out as it would alone), as slmkit's greedy `generate` gives them.

        A row stops at `eot_id` (default: the tokenizer's end-of-text id; not included) or after
        `max_new_tokens`. Without the cache every step reads the whole sequence again, and the rows
        of a batch must be of one length. Raises SlmError for an empty prompt, out-of-vocabulary
        ids, or prompt + max_new_tokens beyond the model's context.
        """
        single = bool(prompt) and not isinstance(prompt[0], (list, tuple))
        rows = [list(prompt)] if single else [list(row) for row in prompt]
        eot_id = self.eot_id if eot_id is None else eot_id
        self._check_prompts(rows, max_new_tokens)
        width = max(len(row) for row in rows)
        tokens = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            tokens[i, width - len(row):], mask[i, width - len(row):] = row, 1
        outputs: list[list[int]] = [[] for _ in rows]
        running = [True] * len(rows)
        logits, past = self.forward(tokens, mask)
        for step in range(max_new_tokens):
            chosen = logits[:, -1].argmax(axis=-1)
            for i, token in enumerate(chosen.tolist()):
                if running[i] and token == eot_id:
                    running[i] = False
                elif running[i]:
                    outputs[i].append(token)
            if not any(running) or step == max_new_tokens - 1:
                break
            if self.has_cache:
                mask = np.concatenate([mask, np.ones((len(rows), 1), dtype=np.int64)], axis=1)
                logits, past = self.forward(chosen[:, None], mask, past)
            else:
                tokens = np.concatenate([tokens, chosen[:, None]], axis=1)
                logits, _ = self.forward(tokens)
        return outputs[0] if single else outputs

    def _check_prompts(self, rows: list[list[int]], max_new_tokens: int) -> None:
        if not rows or any(not row for row in rows):
            raise SlmError("empty prompt: give at least one token id per row")
        vocab = self.config.vocab_size
        for row in rows:
            bad = [t for t in row if not 0 <= t < vocab]
            if bad:
                raise SlmError(f"token id {bad[0]} is outside the model's vocabulary of {vocab}")
        longest = max(len(row) for row in rows)
        if longest + max_new_tokens > self.config.context_length:
            raise SlmError(f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} = "
                           f"{longest + max_new_tokens} exceeds the model context of {self.config.context_length} "
                           f"tokens; shorten the prompt or lower max_new_tokens")
        if not self.has_cache and len({len(row) for row in rows}) > 1:
            raise SlmError(f"{self.directory} was exported without the KV cache, which takes no attention mask: "
                           f"give prompts of one length, or export with the cache (drop --no-cache)")
