"""Quantized Linear layers: the stored format and the modules that run it, in pure torch.

A quantized checkpoint is an ordinary checkpoint directory whose config.json carries a
"quantization" record ({"scheme", "group_size", "layers", ...}); each layer named in "layers" is
stored as integer tensors plus float scales in place of its float weight (safetensors, no code):

- int8 (weight-only) and int8-dynamic: `qweight` int8 (out, in), symmetric per output channel,
  `scales` float32 (out,): weight = qweight * scales[:, None].
- int4 (weight-only): `qweight` uint8 (out, in / 2), two 4-bit codes per byte (low nibble = even
  column), asymmetric per group of `group_size` input columns, `scales` and `zeros` float32
  (out, in / group_size): weight = (code - 8) * scale + zero.
- `bias` float32 (out,) where the layer has one.

The modules compute with torch's own CPU kernels: int8 weight-only through
`torch._weight_int8pack_mm` and int4 through `torch._weight_int4pack_mm_for_cpu`, both with bfloat16
activations (their fast path; the output is cast back to the input's dtype); int8-dynamic quantizes
the activations per row at run time and multiplies int8 by int8 through fbgemm
(`torch.ops.quantized.linear_dynamic`, float32). docs/quantization.md says why these kernels.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from slmkit.errors import SlmError

SCHEMES = ("int8", "int4", "int8-dynamic")
INT4_GROUP_SIZES = (32, 64, 128, 256)
KERNEL_DTYPE = torch.bfloat16  # the activations' dtype in the int8 and int4 weight-only kernels


# -- quantizing a float weight into the stored tensors -------------------------------------------
@torch.no_grad()
def quantize_weight(weight: torch.Tensor, scheme: str, group_size: int | None = None) -> dict[str, torch.Tensor]:
    """The stored tensors (qweight, scales[, zeros]) of a float weight (out, in) under `scheme`."""
    weight = weight.detach().to("cpu", torch.float32)
    if scheme in ("int8", "int8-dynamic"):
        scales = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        qweight = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return {"qweight": qweight.contiguous(), "scales": scales.contiguous()}
    if scheme == "int4":
        rows, columns = weight.shape
        groups = weight.reshape(rows, columns // group_size, group_size)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        scales = ((high - low) / 15.0).clamp_min(1e-12)
        codes = torch.round((groups - low[..., None]) / scales[..., None]).clamp(0, 15).to(torch.uint8)
        codes = codes.reshape(rows, columns)
        zeros = low + 8.0 * scales  # so that (code - 8) * scale + zero = low + code * scale
        return {"qweight": (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous(),
                "scales": scales.contiguous(), "zeros": zeros.contiguous()}
    raise ValueError(f"unknown quantization scheme {scheme!r}; expected one of {SCHEMES}")


def dequantize_weight(tensors: dict[str, torch.Tensor], scheme: str, group_size: int | None = None) -> torch.Tensor:
    """The float32 weight (out, in) that stored tensors stand for (the reference the kernels compute)."""
    if scheme in ("int8", "int8-dynamic"):
        return tensors["qweight"].float() * tensors["scales"][:, None]
    codes = unpack_int4(tensors["qweight"]).float()
    rows, columns = codes.shape
    scales = tensors["scales"].repeat_interleave(group_size, dim=1)
    zeros = tensors["zeros"].repeat_interleave(group_size, dim=1)
    return ((codes - 8.0) * scales + zeros).reshape(rows, columns)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (out, in / 2) with two codes a byte (low nibble first) -> int32 codes (out, in) in 0..15."""
    low, high = (packed & 0x0F).to(torch.int32), (packed >> 4).to(torch.int32)
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)


def unsupported_layer(name: str, layer: nn.Linear, scheme: str, group_size: int | None) -> str | None:
    """Why `layer` cannot be quantized under `scheme` (a one-line message with the fix), or None."""
    if scheme == "int4" and layer.in_features % group_size:
        fits = [g for g in INT4_GROUP_SIZES if layer.in_features % g == 0]
        fix = f"use --group-size {fits[-1]}" if fits else "use --to int8"
        return (f"{name} has {layer.in_features} input features, not a multiple of the int4 group size "
                f"{group_size}; {fix}")
    return None


# -- the modules ---------------------------------------------------------------------------------
class QuantizedLinear(nn.Module):
    """y = x W^T + b with W held as stored integer tensors; one class, the scheme picks the kernel.

    The stored tensors are its buffers (saved and loaded like any weight); the int4 kernel's packed
    layout and the fbgemm weight are derived from them when built, not stored.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], scheme: str, group_size: int | None = None):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"unknown quantization scheme {scheme!r}; expected one of {SCHEMES}")
        self.scheme, self.group_size = scheme, group_size
        qweight = tensors["qweight"]
        self.out_features = qweight.shape[0]
        self.in_features = qweight.shape[1] * (2 if scheme == "int4" else 1)
        for name in ("qweight", "scales", "zeros", "bias"):
            if name in tensors:  # a fresh copy: tensors read from safetensors may sit unaligned, which the
                self.register_buffer(name, tensors[name].clone(memory_format=torch.contiguous_format))  # kernels fault on
            else:
                setattr(self, name, None)
        self.prepare()

    def prepare(self) -> None:
        """Build the kernel's form of the weight from the stored tensors (after they are loaded)."""
        if self.scheme == "int8":  # kept in the kernel's dtype: torch.compile wants it as a stored tensor
            self.int8_scales = self.scales.to(KERNEL_DTYPE)
        elif self.scheme == "int4":
            self.int4_packed = torch._convert_weight_to_int4pack_for_cpu(unpack_int4(self.qweight), 1)
            self.int4_scales_and_zeros = torch.stack([self.scales.t(), self.zeros.t()], dim=-1).to(KERNEL_DTYPE)
        elif self.scheme == "int8-dynamic":
            with warnings.catch_warnings():  # torch marks quantized tensor creation as deprecated
                warnings.simplefilter("ignore")
                weight = torch._make_per_channel_quantized_tensor(
                    self.qweight, self.scales.double(), torch.zeros(self.out_features, dtype=torch.long), 0)
                self.fbgemm_weight = torch.ops.quantized.linear_prepack(weight, None)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.prepare()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()  # the int4 kernel takes contiguous rows only
        if self.scheme == "int8":
            y = torch._weight_int8pack_mm(rows.to(KERNEL_DTYPE), self.qweight, self.int8_scales)
        elif self.scheme == "int4":
            y = torch._weight_int4pack_mm_for_cpu(rows.to(KERNEL_DTYPE), self.int4_packed, self.group_size,
                                                  self.int4_scales_and_zeros)
        else:  # int8 activations, quantized per call; reduce_range as torch's fbgemm default
            y = torch.ops.quantized.linear_dynamic(rows.float(), self.fbgemm_weight, True)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.scheme == "int4" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}{group}"


def swap_in_quantized(model: nn.Module, state: dict[str, torch.Tensor], quantization: dict, where: str) -> None:
    """Replace each Linear named in quantization["layers"] by a QuantizedLinear built from `state`.

    `state` keeps its tensors, so the model's weights can then be loaded from it as a whole.
    Raises SlmError when the record is malformed or a layer's tensors are missing or mis-shaped.
    """
    scheme, group_size = quantization.get("scheme"), quantization.get("group_size")
    layers = quantization.get("layers")
    if scheme not in SCHEMES or not isinstance(layers, list):
        raise SlmError(f"{where}: the quantization record {quantization!r} is not one this slmkit reads "
                       f"(scheme one of {', '.join(SCHEMES)}, a list of layers); the checkpoint is damaged")
    if scheme == "int4" and group_size not in INT4_GROUP_SIZES:
        raise SlmError(f"{where}: int4 group size {group_size!r} is not one of {INT4_GROUP_SIZES}; the checkpoint "
                       f"is damaged")
    for name in layers:
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            layer = None
        if not isinstance(layer, nn.Linear):
            raise SlmError(f"{where}: quantized layer {name!r} is not a Linear layer of this model config; the "
                           f"checkpoint is damaged")
        names = ("qweight", "scales") + (("zeros",) if scheme == "int4" else ())
        names += ("bias",) if layer.bias is not None else ()
        missing = [f"{name}.{part}" for part in names if f"{name}.{part}" not in state]
        if missing:
            raise SlmError(f"{where}: quantized layer {name} lacks {', '.join(missing)}; the checkpoint is damaged")
        tensors = {part: state[f"{name}.{part}"] for part in names}
        expected = {"qweight": (layer.out_features, layer.in_features // (2 if scheme == "int4" else 1))}
        if tuple(tensors["qweight"].shape) != expected["qweight"]:
            raise SlmError(f"{where}: {name}.qweight has shape {tuple(tensors['qweight'].shape)}, the config needs "
                           f"{expected['qweight']}; the checkpoint is damaged")
        model.set_submodule(name, QuantizedLinear(tensors, scheme, group_size))
