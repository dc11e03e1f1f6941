"""`slm quantize`: int8 / int4 weight quantization of a float checkpoint (docs/quantization.md)."""

from slmkit.quantize.quantize import QUANTIZE_MARKER, quantize_checkpoint, quantized_layer_names

__all__ = ["QUANTIZE_MARKER", "quantize_checkpoint", "quantized_layer_names"]
