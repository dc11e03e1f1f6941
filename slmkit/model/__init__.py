"""One configurable decoder-only transformer (GPT-2, Llama/SmolLM2 and Gemma 3 by its switches).

`ModelConfig` is plain Python; the names that need PyTorch load on first use (PEP 562 `__getattr__`),
so that reading a config (`slm presets`, `slm info`, `slmkit.model.config`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from slmkit.model.config import ModelConfig

if TYPE_CHECKING:
    from slmkit.model.checkpoint import load_model, save_model
    from slmkit.model.kv_cache import KVCache
    from slmkit.model.transformer import Transformer

__all__ = ["KVCache", "ModelConfig", "Transformer", "load_model", "save_model"]

# The names that need torch, by the module that defines each.
LAZY_NAMES = {"KVCache": "slmkit.model.kv_cache", "Transformer": "slmkit.model.transformer",
              "load_model": "slmkit.model.checkpoint", "save_model": "slmkit.model.checkpoint"}


def __getattr__(name: str):
    if name not in LAZY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(LAZY_NAMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *LAZY_NAMES})
