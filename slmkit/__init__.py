"""slmkit: train small language models (about 1M to 300M parameters) from scratch, end to end."""

from slmkit.errors import SlmError

__version__ = "0.1.0"

__all__ = ["SlmError", "__version__", "load"]


def load(path, device="cpu", dtype=None):
    """Load a model from an slmkit checkpoint directory (see `slmkit.model.checkpoint.load_model`)."""
    from slmkit.model.checkpoint import load_model

    return load_model(path, device=device, dtype=dtype)
