"""One configurable decoder-only transformer (GPT-2, Llama/SmolLM2 and Gemma 3 by its switches)."""

from slmkit.model.checkpoint import load_model, save_model
from slmkit.model.config import ModelConfig
from slmkit.model.kv_cache import KVCache
from slmkit.model.transformer import Transformer

__all__ = ["KVCache", "ModelConfig", "Transformer", "load_model", "save_model"]
