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

import functools
import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from slmkit.errors import SlmError

if TYPE_CHECKING:  # the lazy names below, for type checkers and IDEs (tests/test_cli_imports.py keeps both alike)
    import torch

    from slmkit.config import load_model_config, presets_table  # noqa: F401  (helpers, reachable as before)
    from slmkit.data import PrepareOptions, open_dataset, prepare, train_tokenizer_on_sources
    from slmkit.eval.audit import AuditReport, audit
    from slmkit.eval.code import run_code_suite, run_code_suite_on_checkpoints
    from slmkit.eval.code import self_test as code_self_test
    from slmkit.eval.compare import CompareReport, compare_models
    from slmkit.eval.lm_eval import write_lm_eval_task
    from slmkit.eval.perplexity import (
        EvalOptions,
        EvalReport,
        EvalResult,
        evaluate_checkpoints,
        evaluate_models,
    )
    from slmkit.eval.status import RunStatus, format_status, run_status
    from slmkit.finetune.average import average_checkpoints
    from slmkit.finetune.lora import is_adapter_dir, merge_adapter
    from slmkit.finetune.sft import FinetuneOptions
    from slmkit.generate import GenerationConfig, generate, model_tokenizer, resolve_config, stream
    from slmkit.generate.chat import ChatSession, has_chat_template
    from slmkit.generate.config import OVERFLOW_POLICIES
    from slmkit.interop.hf import DEFAULT_GENERATION_PRESET, DEFAULT_LICENSE, export_hf, import_hf
    from slmkit.interop.hf_adapter import export_adapter_hf
    from slmkit.interop.hub import push
    from slmkit.interop.onnx import export_onnx
    from slmkit.model.checkpoint import load_model  # noqa: F401
    from slmkit.model.stats import describe  # noqa: F401
    from slmkit.pipeline import QuickstartOptions, TrainOptions, finetune, quickstart, train
    from slmkit.quantize import quantize_checkpoint
    from slmkit.recipe import RecipeOptions, RecipeResult, load_recipe, recipe_names, run_recipe
    from slmkit.report import write_report  # noqa: F401
    from slmkit.rundir import resolve_checkpoint_dir  # noqa: F401
    from slmkit.serve import ServedModel, ServeOptions, serve, start_server
    from slmkit.tokenizer import load_tokenizer
    from slmkit.train import TrainResult

__all__ = [
    "quantize_checkpoint",
    "ServedModel", "ServeOptions", "serve", "start_server",
    "average_checkpoints", "FinetuneOptions", "finetune", "merge_adapter", "is_adapter_dir", "ChatSession", "has_chat_template",
    "AuditReport", "CompareReport", "audit", "compare_models", "write_lm_eval_task",
    "EvalOptions", "EvalReport", "EvalResult", "RunStatus", "evaluate_checkpoints", "evaluate_models", "format_status",
    "run_status", "run_code_suite", "run_code_suite_on_checkpoints", "code_self_test",
    "DTYPES", "GENERATION_PRESETS", "OVERFLOW_POLICIES", "GenerationConfig", "PrepareOptions", "QuickstartOptions", "TrainOptions",
    "TrainResult", "describe_model",
    "export_onnx",
    "DEFAULT_GENERATION_PRESET", "DEFAULT_LICENSE", "push",
    "export_adapter_hf", "export_hf", "generate", "import_hf", "load", "load_tokenizer", "model_tokenizer", "open_dataset", "prepare",
    "presets", "quickstart", "report", "resolve_config", "stream", "train", "train_tokenizer_on_sources",
    "RecipeOptions", "RecipeResult", "load_recipe", "recipe_names", "run_recipe",
]

# The names this module re-exports, by the module that defines each: imported on first use (PEP 562
# `__getattr__` below), so that `slm prepare`, `slm tokenizer` and `slm --help` never load PyTorch.
LAZY_MODULES: dict[str, tuple[str, ...]] = {
    "slmkit.config": ("load_model_config", "presets_table"),
    "slmkit.data": ("PrepareOptions", "open_dataset", "prepare", "train_tokenizer_on_sources"),
    "slmkit.eval.audit": ("AuditReport", "audit"),
    "slmkit.eval.code": ("run_code_suite", "run_code_suite_on_checkpoints", "code_self_test"),
    "slmkit.eval.compare": ("CompareReport", "compare_models"),
    "slmkit.eval.lm_eval": ("write_lm_eval_task",),
    "slmkit.eval.perplexity": ("EvalOptions", "EvalReport", "EvalResult", "evaluate_checkpoints", "evaluate_models"),
    "slmkit.eval.status": ("RunStatus", "format_status", "run_status"),
    "slmkit.finetune.average": ("average_checkpoints",),
    "slmkit.finetune.lora": ("is_adapter_dir", "merge_adapter"),
    "slmkit.finetune.sft": ("FinetuneOptions",),
    "slmkit.generate": ("GenerationConfig", "generate", "model_tokenizer", "resolve_config", "stream"),
    "slmkit.generate.chat": ("ChatSession", "has_chat_template"),
    "slmkit.generate.config": ("OVERFLOW_POLICIES",),
    "slmkit.interop.hf": ("DEFAULT_GENERATION_PRESET", "DEFAULT_LICENSE", "export_hf", "import_hf"),
    "slmkit.interop.hf_adapter": ("export_adapter_hf",),
    "slmkit.interop.hub": ("push",),
    "slmkit.interop.onnx": ("export_onnx",),
    "slmkit.model.checkpoint": ("load_model",),
    "slmkit.model.stats": ("describe",),
    "slmkit.pipeline": ("QuickstartOptions", "TrainOptions", "finetune", "quickstart", "train"),
    "slmkit.quantize": ("quantize_checkpoint",),
    "slmkit.recipe": ("RecipeOptions", "RecipeResult", "load_recipe", "recipe_names", "run_recipe"),
    "slmkit.report": ("write_report",),
    "slmkit.rundir": ("resolve_checkpoint_dir",),
    "slmkit.serve": ("ServedModel", "ServeOptions", "serve", "start_server"),
    "slmkit.tokenizer": ("load_tokenizer",),
    "slmkit.train": ("TrainResult",),
}
LAZY_NAMES: dict[str, str] = {name: module for module, names in LAZY_MODULES.items() for name in names}
RENAMED = {"code_self_test": "self_test"}  # a name here: its name in its module


@functools.cache
def _dtypes() -> dict[str, torch.dtype]:
    """DTYPES: the weight dtypes a user can name."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _generation_presets() -> tuple[str, ...]:
    """GENERATION_PRESETS: the sampling presets' names (creative, coherent, deterministic, greedy)."""
    from slmkit.generate.config import PRESETS

    return tuple(PRESETS)


# Values computed on first use: DTYPES needs torch.
COMPUTED_NAMES = {"DTYPES": _dtypes, "GENERATION_PRESETS": _generation_presets}

if TYPE_CHECKING:
    GENERATION_PRESETS: tuple[str, ...]
    DTYPES: dict[str, torch.dtype]


def __getattr__(name: str):
    """A lazy name of the API, imported (or computed) on its first use and kept in the module."""
    if name in LAZY_NAMES:
        value = getattr(importlib.import_module(LAZY_NAMES[name]), RENAMED.get(name, name))
    elif name in COMPUTED_NAMES:
        value = COMPUTED_NAMES[name]()
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *LAZY_NAMES, *COMPUTED_NAMES})


def presets() -> str:
    """One line per model preset: name, family, parameters, context and description."""
    from slmkit.config import presets_table

    return presets_table()


def describe_model(preset: str | None = None, config: str | os.PathLike | None = None,
                   overrides: list[str] | tuple[str, ...] = ()) -> str:
    """Parameters by part, memory, FLOPs per token and KV-cache bytes of a model config."""
    from slmkit.config import load_model_config
    from slmkit.model.stats import describe  # noqa: F401

    return describe(load_model_config(preset, config, overrides))


def load(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None):
    """A model from an slmkit checkpoint directory, or a run directory (its best, else last,
    checkpoint), in eval mode; dtype is a torch dtype or its name ("bfloat16"). Raises SlmError for a
    missing, damaged or foreign directory, or an unknown dtype name."""
    from slmkit.model.checkpoint import load_model  # noqa: F401
    from slmkit.rundir import resolve_checkpoint_dir  # noqa: F401

    if isinstance(dtype, str):
        dtypes = _dtypes()
        if dtype not in dtypes:
            raise SlmError(f"unknown dtype {dtype!r}; use one of {', '.join(dtypes)}")
        dtype = dtypes[dtype]
    return load_model(resolve_checkpoint_dir(path), device=device, dtype=dtype)


def report(run_dir: str | os.PathLike) -> Path:
    """Write report.md and plots/ for a run directory; returns the report's path."""
    from slmkit.report import write_report  # noqa: F401

    return write_report(run_dir)
