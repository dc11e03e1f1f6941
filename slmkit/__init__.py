"""slmkit: train small language models (about 1M to 300M parameters) from scratch, end to end.

The public API is `slmkit.api` (prepare, train, load, generate, export_hf, ...); `slmkit.load` is a
shortcut to `slmkit.api.load`. Importing `slmkit` alone stays light: the API (and torch) load on
first use.
"""

from slmkit.errors import SlmError

__version__ = "0.1.0"

__all__ = ["SlmError", "__version__", "load"]


def load(path, device="cpu", dtype=None):
    """A model from a checkpoint or run directory (see `slmkit.api.load`)."""
    from slmkit.api import load as load_model  # lazy: `import slmkit` must not import torch

    return load_model(path, device=device, dtype=dtype)
