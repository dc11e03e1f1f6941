"""The public API: one function per stage, each a call the `slm` command makes and a user can import.

    import slmkit.api as slm
    dataset = slm.prepare(["shakespeare"], "data/shakespeare", tokenizer="bpe:4096")
    result = slm.train(dataset.dir, "runs/nano", preset="nano", overrides=["train.max_steps=500"])
    model = slm.load("runs/nano")                      # its best checkpoint
    print(slm.generate(model, "ROMEO:", "coherent").text)
    slm.export_hf("runs/nano", "hf/nano")

Layers (docs/architecture.md): the CLI calls only this module; this module resolves configs and
chains the stages (train, generate, eval, interop, report), which use model, data and tokenizer,
which use utils and errors. Nothing imports from a layer above its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from slmkit.config import load_model_config, presets_table
from slmkit.data import PrepareOptions, open_dataset, prepare, train_tokenizer_on_sources
from slmkit.errors import SlmError
from slmkit.eval.audit import AuditReport, audit
from slmkit.eval.code import run_code_suite, run_code_suite_on_checkpoints
from slmkit.eval.code import self_test as code_self_test
from slmkit.eval.compare import CompareReport, compare_models
from slmkit.eval.lm_eval import write_lm_eval_task
from slmkit.eval.perplexity import EvalOptions, EvalReport, EvalResult, evaluate_checkpoints, evaluate_models
from slmkit.eval.status import RunStatus, format_status, run_status
from slmkit.finetune.average import average_checkpoints
from slmkit.finetune.lora import merge_adapter
from slmkit.finetune.sft import FinetuneOptions
from slmkit.generate import PRESETS, GenerationConfig, generate, model_tokenizer, resolve_config, stream
from slmkit.generate.chat import ChatSession, has_chat_template
from slmkit.generate.config import OVERFLOW_POLICIES
from slmkit.interop.hf import DEFAULT_GENERATION_PRESET, DEFAULT_LICENSE, export_hf, import_hf
from slmkit.interop.hub import push
from slmkit.interop.onnx import export_onnx
from slmkit.model.checkpoint import load_model
from slmkit.model.stats import describe
from slmkit.pipeline import QuickstartOptions, TrainOptions, finetune, quickstart, train
from slmkit.quantize import quantize_checkpoint
from slmkit.recipe import RecipeOptions, RecipeResult, load_recipe, recipe_names, run_recipe
from slmkit.report import write_report
from slmkit.rundir import resolve_checkpoint_dir
from slmkit.serve import ServedModel, ServeOptions, serve, start_server
from slmkit.tokenizer import load_tokenizer
from slmkit.train import TrainResult

__all__ = [
    "quantize_checkpoint",
    "ServedModel", "ServeOptions", "serve", "start_server",
    "average_checkpoints", "FinetuneOptions", "finetune", "merge_adapter", "ChatSession", "has_chat_template",
    "AuditReport", "CompareReport", "audit", "compare_models", "write_lm_eval_task",
    "EvalOptions", "EvalReport", "EvalResult", "RunStatus", "evaluate_checkpoints", "evaluate_models", "format_status",
    "run_status", "run_code_suite", "run_code_suite_on_checkpoints", "code_self_test",
    "DTYPES", "GENERATION_PRESETS", "OVERFLOW_POLICIES", "GenerationConfig", "PrepareOptions", "QuickstartOptions", "TrainOptions",
    "TrainResult", "describe_model",
    "export_onnx",
    "DEFAULT_GENERATION_PRESET", "DEFAULT_LICENSE", "push",
    "export_hf", "generate", "import_hf", "load", "load_tokenizer", "model_tokenizer", "open_dataset", "prepare",
    "presets", "quickstart", "report", "resolve_config", "stream", "train", "train_tokenizer_on_sources",
    "RecipeOptions", "RecipeResult", "load_recipe", "recipe_names", "run_recipe",
]

GENERATION_PRESETS = tuple(PRESETS)  # the sampling presets' names: creative, coherent, deterministic, greedy
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def presets() -> str:
    """One line per model preset: name, family, parameters, context and description."""
    return presets_table()


def describe_model(preset: str | None = None, config: str | os.PathLike | None = None,
                   overrides: list[str] | tuple[str, ...] = ()) -> str:
    """Parameters by part, memory, FLOPs per token and KV-cache bytes of a model config."""
    return describe(load_model_config(preset, config, overrides))


def load(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None):
    """A model from an slmkit checkpoint directory, or a run directory (its best, else last,
    checkpoint), in eval mode; dtype is a torch dtype or its name ("bfloat16"). Raises SlmError for a
    missing, damaged or foreign directory, or an unknown dtype name."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise SlmError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    return load_model(resolve_checkpoint_dir(path), device=device, dtype=dtype)


def report(run_dir: str | os.PathLike) -> Path:
    """Write report.md and plots/ for a run directory; returns the report's path."""
    return write_report(run_dir)
