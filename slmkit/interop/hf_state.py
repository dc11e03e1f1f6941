"""Weights between slmkit and Hugging Face transformers: a name-and-layout mapping of tensors.

One table (`tensor_map`) lists, for a config, every slmkit tensor and the HF tensors it is made of;
import and export both read it, so the two directions cannot drift apart. Layout differences:

- slmkit fuses Q, K and V into one `attn.qkv` Linear with rows [Q | K | V]; Llama and Gemma 3 keep
  `q_proj`, `k_proj`, `v_proj` (concatenated / split along rows); GPT-2's `c_attn` is already fused.
- GPT-NeoX's fused `query_key_value` interleaves per head: rows [q_0 k_0 v_0 | q_1 k_1 v_1 | ...]
  (its forward views the output as (heads, 3 * head_dim) and chunks it), so its rows are regrouped.
- GPT-2's `Conv1D` stores weights as (in, out), the transpose of `nn.Linear`.
- Rotary is rotate-half in all of them (GPT-NeoX included), and Gemma's norms store w of (1 + w) in
  both, so those copy as-is.
- A GPT-2- or GPT-NeoX-shaped slmkit model without biases exports zero biases (identical logits);
  importing them back into that config checks that they are zero, and `without_zero_biases` finds
  that config again from the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slmkit.errors import SlmError
from slmkit.interop.hf_config import hf_family
from slmkit.model.config import ModelConfig


@dataclass(frozen=True)
class Piece:
    """One slmkit tensor and the HF tensors it is made of (concatenated along dim 0 of the slmkit layout).

    slm_name None: an HF-only tensor the slmkit config does not have (a zero GPT-2 or GPT-NeoX bias).
    conv1d: the HF tensors are stored transposed (GPT-2 Conv1D weights).
    per_head_qkv: the number of heads when the HF tensor interleaves Q, K and V per head (GPT-NeoX), else 0.
    """

    slm_name: str | None
    hf_names: tuple[str, ...]
    hf_shapes: tuple[tuple[int, ...], ...]
    conv1d: bool = False
    per_head_qkv: int = 0


def tensor_map(config: ModelConfig, family: str | None = None) -> list[Piece]:
    """Every tensor of `config` (the tied head left out) with its HF name(s) and shape(s)."""
    family = family or hf_family(config)
    if family == "gpt2":
        return _gpt2_map(config)
    if family == "gpt_neox":
        return _neox_map(config)
    return _llama_gemma_map(config, family)


def _gpt2_map(c: ModelConfig) -> list[Piece]:
    d, qkv, mlp = c.d_model, c.q_dim + 2 * c.kv_dim, c.d_mlp
    pieces = [Piece("embed.weight", ("transformer.wte.weight",), ((c.vocab_size, d),)),
              Piece("pos_embed.weight", ("transformer.wpe.weight",), ((c.context_length, d),))]

    def add(slm: str, hf: str, shape: tuple, present: bool, conv1d: bool = False) -> None:
        pieces.append(Piece(slm if present else None, (hf,), (shape,), conv1d))

    for i in range(c.n_layers):
        h, b = f"transformer.h.{i}", f"blocks.{i}"
        for slm_norm, hf_norm in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            add(f"{b}.{slm_norm}.weight", f"{h}.{hf_norm}.weight", (d,), True)
            add(f"{b}.{slm_norm}.bias", f"{h}.{hf_norm}.bias", (d,), c.norm_bias)
        add(f"{b}.attn.qkv.weight", f"{h}.attn.c_attn.weight", (d, qkv), True, conv1d=True)
        add(f"{b}.attn.qkv.bias", f"{h}.attn.c_attn.bias", (qkv,), c.attention_bias)
        add(f"{b}.attn.out.weight", f"{h}.attn.c_proj.weight", (c.q_dim, d), True, conv1d=True)
        add(f"{b}.attn.out.bias", f"{h}.attn.c_proj.bias", (d,), c.attention_bias)
        add(f"{b}.mlp.up.weight", f"{h}.mlp.c_fc.weight", (d, mlp), True, conv1d=True)
        add(f"{b}.mlp.up.bias", f"{h}.mlp.c_fc.bias", (mlp,), c.mlp_bias)
        add(f"{b}.mlp.down.weight", f"{h}.mlp.c_proj.weight", (mlp, d), True, conv1d=True)
        add(f"{b}.mlp.down.bias", f"{h}.mlp.c_proj.bias", (d,), c.mlp_bias)
    add("final_norm.weight", "transformer.ln_f.weight", (d,), True)
    add("final_norm.bias", "transformer.ln_f.bias", (d,), c.norm_bias)
    if not c.tie_embeddings:
        add("lm_head.weight", "lm_head.weight", (c.vocab_size, d), True)
    return pieces


def _neox_map(c: ModelConfig) -> list[Piece]:
    d, mlp = c.d_model, c.d_mlp
    pieces = [Piece("embed.weight", ("gpt_neox.embed_in.weight",), ((c.vocab_size, d),))]

    def add(slm: str, hf: str, shape: tuple, present: bool, per_head_qkv: int = 0) -> None:
        pieces.append(Piece(slm if present else None, (hf,), (shape,), per_head_qkv=per_head_qkv))

    for i in range(c.n_layers):
        h, b = f"gpt_neox.layers.{i}", f"blocks.{i}"
        for slm_norm, hf_norm in (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm")):
            add(f"{b}.{slm_norm}.weight", f"{h}.{hf_norm}.weight", (d,), True)
            add(f"{b}.{slm_norm}.bias", f"{h}.{hf_norm}.bias", (d,), c.norm_bias)
        add(f"{b}.attn.qkv.weight", f"{h}.attention.query_key_value.weight", (3 * c.q_dim, d), True, c.n_heads)
        if c.attention_bias:  # a switch of GPTNeoXConfig too: no tensors when off
            add(f"{b}.attn.qkv.bias", f"{h}.attention.query_key_value.bias", (3 * c.q_dim,), True, c.n_heads)
        add(f"{b}.attn.out.weight", f"{h}.attention.dense.weight", (d, c.q_dim), True)
        if c.attention_bias:
            add(f"{b}.attn.out.bias", f"{h}.attention.dense.bias", (d,), True)
        add(f"{b}.mlp.up.weight", f"{h}.mlp.dense_h_to_4h.weight", (mlp, d), True)
        add(f"{b}.mlp.up.bias", f"{h}.mlp.dense_h_to_4h.bias", (mlp,), c.mlp_bias)
        add(f"{b}.mlp.down.weight", f"{h}.mlp.dense_4h_to_h.weight", (d, mlp), True)
        add(f"{b}.mlp.down.bias", f"{h}.mlp.dense_4h_to_h.bias", (d,), c.mlp_bias)
    add("final_norm.weight", "gpt_neox.final_layer_norm.weight", (d,), True)
    add("final_norm.bias", "gpt_neox.final_layer_norm.bias", (d,), c.norm_bias)
    if not c.tie_embeddings:
        add("lm_head.weight", HEAD_NAMES["gpt_neox"], (c.vocab_size, d), True)
    return pieces


def _from_per_head_qkv(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """GPT-NeoX rows [q_0 k_0 v_0 | q_1 k_1 v_1 | ...] -> slmkit rows [q_0 q_1 ... | k_0 ... | v_0 ...]."""
    return tensor.reshape(heads, 3, -1, *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape)


def _to_per_head_qkv(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """slmkit rows [Q | K | V] -> GPT-NeoX rows interleaved per head (the inverse of `_from_per_head_qkv`)."""
    return tensor.reshape(3, heads, -1, *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape)


def _llama_gemma_map(c: ModelConfig, family: str) -> list[Piece]:
    d, mlp = c.d_model, c.d_mlp
    pieces = [Piece("embed.weight", ("model.embed_tokens.weight",), ((c.vocab_size, d),))]
    if family == "gemma3":
        norms = (("attn_norm", "input_layernorm"), ("attn_post_norm", "post_attention_layernorm"),
                 ("mlp_norm", "pre_feedforward_layernorm"), ("mlp_post_norm", "post_feedforward_layernorm"))
    else:
        norms = (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm"))
    for i in range(c.n_layers):
        h, b = f"model.layers.{i}", f"blocks.{i}"
        qkv = [f"{h}.self_attn.{name}_proj" for name in ("q", "k", "v")]
        pieces.append(Piece(f"{b}.attn.qkv.weight", tuple(f"{n}.weight" for n in qkv),
                            ((c.q_dim, d), (c.kv_dim, d), (c.kv_dim, d))))
        if c.attention_bias:
            pieces.append(Piece(f"{b}.attn.qkv.bias", tuple(f"{n}.bias" for n in qkv),
                                ((c.q_dim,), (c.kv_dim,), (c.kv_dim,))))
        pieces.append(Piece(f"{b}.attn.out.weight", (f"{h}.self_attn.o_proj.weight",), ((d, c.q_dim),)))
        if c.attention_bias:
            pieces.append(Piece(f"{b}.attn.out.bias", (f"{h}.self_attn.o_proj.bias",), ((d,),)))
        if c.qk_norm:
            for name in ("q_norm", "k_norm"):
                pieces.append(Piece(f"{b}.attn.{name}.weight", (f"{h}.self_attn.{name}.weight",), ((c.head_dim,),)))
        for slm, hf, shape in (("gate", "gate_proj", (mlp, d)), ("up", "up_proj", (mlp, d)),
                               ("down", "down_proj", (d, mlp))):
            pieces.append(Piece(f"{b}.mlp.{slm}.weight", (f"{h}.mlp.{hf}.weight",), (shape,)))
            if c.mlp_bias:
                pieces.append(Piece(f"{b}.mlp.{slm}.bias", (f"{h}.mlp.{hf}.bias",), (shape[:1],)))
        for slm_norm, hf_norm in norms:
            pieces.append(Piece(f"{b}.{slm_norm}.weight", (f"{h}.{hf_norm}.weight",), ((d,),)))
    pieces.append(Piece("final_norm.weight", ("model.norm.weight",), ((d,),)))
    if not c.tie_embeddings:
        pieces.append(Piece("lm_head.weight", ("lm_head.weight",), ((c.vocab_size, d),)))
    return pieces


# -- HF key spellings ---------------------------------------------------------------------------
# The output head's name in the files (GPT-NeoX checkpoints on the Hub say embed_out; transformers v5
# renames it lm_head on load and reads either).
HEAD_NAMES = {"gpt2": "lm_head.weight", "llama": "lm_head.weight", "gemma3": "lm_head.weight",
              "gpt_neox": "embed_out.weight"}
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias",
                     "rotary_emb.inv_freq")  # buffers old files saved
_MULTIMODAL_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                        ("language_model.lm_head.", "lm_head."))
_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


def canonical_hf_names(hf_state: dict, family: str) -> dict:
    """HF tensors renamed to the current transformers spelling (see `tensor_map`).

    Accepts GPT-2 files without the `transformer.` prefix (the original OpenAI upload), multimodal
    Gemma 3 files (the language model's tensors; the vision tower is dropped), GPT-NeoX heads named
    `lm_head` (transformers v5's in-memory name) and old buffers.
    """
    renamed = {}
    for name, tensor in hf_state.items():
        if name.endswith(_IGNORED_SUFFIXES) or name.startswith(_VISION_PREFIXES):
            continue
        if family == "gpt2":
            if not name.startswith(("transformer.", "lm_head.")):
                name = "transformer." + name
        elif family == "gpt_neox":
            if name == "lm_head.weight":
                name = HEAD_NAMES["gpt_neox"]
        else:
            for old, new in _MULTIMODAL_PREFIXES:
                if name.startswith(old):
                    name = new + name[len(old):]
                    break
        renamed[name] = tensor
    return renamed


# -- HF -> slmkit -------------------------------------------------------------------------------
def state_from_hf(hf_state: dict, config: ModelConfig) -> dict[str, torch.Tensor]:
    """slmkit tensors (a tied head left out) from HF tensors for `config`; dtypes are kept.

    Raises SlmError naming missing, unexpected or mis-shaped tensors, and non-zero GPT-2 biases
    that `config` has no place for.
    """
    family = hf_family(config)
    hf_state = canonical_hf_names(hf_state, family)
    if config.tie_embeddings:
        hf_state.pop(HEAD_NAMES[family], None)  # HF ties it to the embedding on load, whatever is stored
    pieces = tensor_map(config, family)
    wanted = {name for piece in pieces for name in piece.hf_names}
    missing = [name for piece in pieces if piece.slm_name for name in piece.hf_names if name not in hf_state]
    unexpected = sorted(set(hf_state) - wanted)
    if missing:
        raise SlmError(f"Hugging Face weights lack {len(missing)} tensor(s) that config.json implies, e.g. "
                       f"{missing[:4]}; the weight files are incomplete or do not belong to this config")
    if unexpected:
        raise SlmError(f"Hugging Face weights hold {len(unexpected)} tensor(s) that config.json does not "
                       f"explain, e.g. {unexpected[:4]}; the weights do not belong to this config")
    state = {}
    for piece in pieces:
        parts = []
        for name, shape in zip(piece.hf_names, piece.hf_shapes):
            tensor = hf_state.get(name)
            if tensor is None:
                continue  # an optional zero bias that is absent
            if not isinstance(tensor, torch.Tensor):
                raise SlmError(f"Hugging Face weight {name} is a {type(tensor).__name__}, not a tensor")
            if tuple(tensor.shape) != shape:
                raise SlmError(f"Hugging Face weight {name} has shape {tuple(tensor.shape)}, but config.json "
                               f"implies {shape}; the weights do not belong to this config")
            if piece.per_head_qkv:
                tensor = _from_per_head_qkv(tensor, piece.per_head_qkv)
            parts.append(tensor.t() if piece.conv1d else tensor)
        if piece.slm_name is None:
            if parts and parts[0].count_nonzero():
                raise SlmError(f"Hugging Face weight {piece.hf_names[0]} is not zero, but the slmkit config "
                               f"has no such bias; import it with the config that config.json describes")
            continue
        state[piece.slm_name] = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)).contiguous()
    return state


# -- slmkit -> HF -------------------------------------------------------------------------------
def state_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """HF tensors (current transformers names and layouts) from slmkit tensors for `config`.

    A tied head is left out (transformers ties it on load); GPT-2 biases the config lacks are zeros.
    Raises SlmError when `config` fits no HF architecture or a tensor is missing or mis-shaped.
    """
    family = hf_family(config)
    hf_state = {}
    dtype = state["embed.weight"].dtype if "embed.weight" in state else torch.float32
    for piece in tensor_map(config, family):
        if piece.slm_name is None:
            hf_state[piece.hf_names[0]] = torch.zeros(piece.hf_shapes[0], dtype=dtype)
            continue
        tensor = state.get(piece.slm_name)
        if tensor is None:
            raise SlmError(f"slmkit weights lack {piece.slm_name}; the checkpoint does not match its config")
        rows = [shape[-1] if piece.conv1d else shape[0] for shape in piece.hf_shapes]
        if tensor.shape[0] != sum(rows):
            raise SlmError(f"slmkit weight {piece.slm_name} has shape {tuple(tensor.shape)}, which does not "
                           f"match its config")
        for name, shape, part in zip(piece.hf_names, piece.hf_shapes, tensor.split(rows, dim=0)):
            part = part.t() if piece.conv1d else part
            if tuple(part.shape) != shape:
                raise SlmError(f"slmkit weight {piece.slm_name} has shape {tuple(tensor.shape)}, which does "
                               f"not match its config")
            if piece.per_head_qkv:
                part = _to_per_head_qkv(part, piece.per_head_qkv)
            hf_state[name] = part.contiguous().clone()
    return hf_state


# -- LoRA adapters -------------------------------------------------------------------------------
def lora_to_hf(adapters: dict[str, tuple[torch.Tensor, torch.Tensor]],
               config: ModelConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LoRA (A, B) pairs of slmkit linear layers ("blocks.0.attn.qkv") as pairs of the HF modules the
    layer's weight becomes ("model.layers.0.self_attn.q_proj", ...), exactly: A (rank, in) is shared
    by the modules a fused layer splits into, and B (out, rank) is split along its rows as the weight
    is (GPT-NeoX rows regrouped per head), so each HF module's B @ A is its rows of the slmkit B @ A.
    PEFT keeps A and B in nn.Linear layout for GPT-2's Conv1D too, so nothing is transposed.

    Raises SlmError when `config` fits no HF architecture or a layer is not one of its linear weights."""
    family = hf_family(config)
    pieces = {piece.slm_name: piece for piece in tensor_map(config, family) if piece.slm_name}
    hf_adapters = {}
    for layer, (a, b) in adapters.items():
        piece = pieces.get(f"{layer}.weight")
        if piece is None or len(piece.hf_shapes[0]) != 2:
            raise SlmError(f"LoRA layer {layer} is not a linear layer of a {family} model")
        rows = [shape[-1] if piece.conv1d else shape[0] for shape in piece.hf_shapes]
        if b.shape[0] != sum(rows) or b.shape[1] != a.shape[0]:
            raise SlmError(f"LoRA layer {layer}: B of shape {tuple(b.shape)} and A of shape {tuple(a.shape)} do "
                           f"not fit its weight; the adapter does not belong to this model config")
        if piece.per_head_qkv:
            b = _to_per_head_qkv(b, piece.per_head_qkv)
        for name, part in zip(piece.hf_names, b.split(rows, dim=0)):
            module = "lm_head" if name == HEAD_NAMES[family] else name.removesuffix(".weight")
            hf_adapters[module] = (a.contiguous().clone(), part.contiguous().clone())
    return hf_adapters


# -- biases the HF architecture always has ------------------------------------------------------
# The bias switches whose tensors GPT-2 and GPT-NeoX store whatever the slmkit config says (GPT-NeoX's
# attention biases follow its own attention_bias switch, so they are not guessed from the weights).
_ALWAYS_STORED_BIASES = {"gpt2": ("norm_bias", "attention_bias", "mlp_bias"), "gpt_neox": ("norm_bias", "mlp_bias")}


def without_zero_biases(config: ModelConfig, hf_state: dict) -> ModelConfig:
    """`config` with each always-stored bias group (GPT-2: LayerNorm, attention, MLP; GPT-NeoX: LayerNorm,
    MLP) switched off when every tensor of that group in `hf_state` is zero.

    That is the config an slmkit model without those biases was exported from, so an export imports
    back as the same config. The logits are the same either way.
    """
    family = hf_family(config)
    hf_state = canonical_hf_names(hf_state, family)
    for switch in _ALWAYS_STORED_BIASES.get(family, ()):
        if not getattr(config, switch):
            continue
        lighter = config.replace(**{switch: False})
        kept = {piece.hf_names[0] for piece in tensor_map(config, family) if piece.slm_name is not None}
        dropped = [piece.hf_names[0] for piece in tensor_map(lighter, family)
                   if piece.slm_name is None and piece.hf_names[0] in kept]
        tensors = [hf_state.get(name) for name in dropped]
        if tensors and all(isinstance(t, torch.Tensor) and not t.count_nonzero() for t in tensors):
            config = lighter
    return config
