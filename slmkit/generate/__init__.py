"""Text generation: a KV-cache engine with sampling controls, beam search, batching and streaming.

    from slmkit.generate import generate, stream, GenerationConfig
    out = generate(model, "Once upon a time", "creative", max_new_tokens=100)
    print(out.text)
    for piece in stream(model, "Once upon a time", "coherent"):
        print(piece, end="", flush=True)
"""

from slmkit.generate.api import generate, model_tokenizer, resolve_config, stream
from slmkit.generate.config import PRESETS, GenerationConfig
from slmkit.generate.engine import Generation

__all__ = ["PRESETS", "Generation", "GenerationConfig", "generate", "model_tokenizer", "resolve_config", "stream"]
