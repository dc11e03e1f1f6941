"""ModelConfig: every switch of the one decoder-only transformer.

GPT-2, Llama/SmolLM2 and Gemma 3 are settings of these fields, not separate models (DESIGN.md,
"The model"). `validate()` refuses combinations that cannot work, naming the field and value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from slmkit.errors import SlmError
from slmkit.utils import dataclass_from_dict

NORMS = ("layernorm", "rmsnorm")
NORM_PLACEMENTS = ("pre", "sandwich")
MLPS = ("gelu", "swiglu", "geglu")
POSITIONS = ("learned", "rope", "none")


@dataclass
class ModelConfig:
    """The architecture of a decoder-only transformer.

    Sizes are counts (tokens, features, heads); `rope_theta` values are RoPE base frequencies.
    """

    name: str = ""
    family: str = "llama"  # a label ("gpt2", "llama", "gemma3"); behaviour comes from the switches
    vocab_size: int = 32000
    context_length: int = 1024  # the longest sequence the model accepts (tokens)
    n_layers: int = 6
    d_model: int = 384
    n_heads: int = 6
    n_kv_heads: int | None = None  # None: as many as n_heads (MHA); 1: MQA; between: GQA
    head_dim: int | None = None  # None: d_model // n_heads
    mlp: str = "swiglu"  # "gelu" (two matrices, GELU tanh), "swiglu" or "geglu" (three, gated)
    d_mlp: int = 1536  # hidden width of the MLP
    norm: str = "rmsnorm"  # "layernorm" or "rmsnorm"
    norm_eps: float = 1e-5
    norm_bias: bool = False  # LayerNorm bias (GPT-2: True); RMSNorm never has one
    norm_unit_offset: bool = False  # Gemma: scale by (1 + weight), weight initialised at 0
    norm_placement: str = "pre"  # "pre" or "sandwich" (pre and post norms around each sub-layer)
    position: str = "rope"  # "learned", "rope" or "none"
    rope_theta: float = 10000.0  # base frequency on full-attention layers
    rope_theta_local: float | None = None  # base frequency on sliding-window layers (None: rope_theta)
    sliding_window: int | None = None  # tokens a sliding layer sees, itself included (None: all full)
    sliding_window_pattern: int = 0  # with a window: layer i is full iff (i + 1) % pattern == 0; 0: all sliding
    qk_norm: bool = False
    attention_bias: bool = False  # biases on the Q, K, V and output projections
    mlp_bias: bool = False
    tie_embeddings: bool = True
    embedding_scale: bool = False  # multiply token embeddings by sqrt(d_model) (Gemma)
    query_pre_attn_scalar: float | None = None  # attention scale is this ** -0.5 (None: head_dim)
    dropout: float = 0.0
    init_std: float = 0.02
    extra: dict = field(default_factory=dict)  # free-form notes carried with the config (not used by the model)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None and isinstance(self.n_heads, int) and self.n_heads > 0:
            self.head_dim = self.d_model // self.n_heads

    # -- derived quantities -------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def layer_is_sliding(self, layer: int) -> bool:
        if self.sliding_window is None:
            return False
        return self.sliding_window_pattern <= 0 or (layer + 1) % self.sliding_window_pattern != 0

    def layer_types(self) -> list[str]:
        return ["sliding" if self.layer_is_sliding(i) else "full" for i in range(self.n_layers)]

    def layer_rope_theta(self, layer: int) -> float:
        if self.layer_is_sliding(layer) and self.rope_theta_local is not None:
            return self.rope_theta_local
        return self.rope_theta

    # -- validation and (de)serialisation -----------------------------------------------------
    def validate(self) -> ModelConfig:
        """Raise SlmError naming the first field whose value cannot work; return self otherwise."""
        positive = ["vocab_size", "context_length", "n_layers", "d_model", "n_heads", "n_kv_heads",
                    "head_dim", "d_mlp"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SlmError(f"model.{name} = {value!r}: must be a positive whole number")
        for name in ("norm_bias", "norm_unit_offset", "qk_norm", "attention_bias", "mlp_bias",
                     "tie_embeddings", "embedding_scale"):
            if not isinstance(getattr(self, name), bool):
                raise SlmError(f"model.{name} = {getattr(self, name)!r}: must be true or false")
        for name in ("norm_eps", "rope_theta", "dropout", "init_std"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise SlmError(f"model.{name} = {value!r}: must be a number")
        for name, allowed in (("norm", NORMS), ("norm_placement", NORM_PLACEMENTS), ("mlp", MLPS),
                              ("position", POSITIONS)):
            value = getattr(self, name)
            if value not in allowed:
                raise SlmError(f"model.{name} = {value!r}: must be one of {', '.join(allowed)}")
        if self.d_model % self.n_heads != 0 and self.head_dim == self.d_model // self.n_heads:
            raise SlmError(
                f"model.d_model = {self.d_model} is not divisible by model.n_heads = {self.n_heads}; "
                f"change one, or set model.head_dim explicitly"
            )
        if self.n_heads % self.n_kv_heads != 0:
            raise SlmError(
                f"model.n_kv_heads = {self.n_kv_heads} does not divide model.n_heads = {self.n_heads}; "
                f"use a divisor of {self.n_heads}"
            )
        if self.position == "rope" and self.head_dim % 2 != 0:
            raise SlmError(f"model.head_dim = {self.head_dim} must be even for rotary positions")
        if self.sliding_window is not None:
            if self.sliding_window <= 0:
                raise SlmError(f"model.sliding_window = {self.sliding_window}: must be positive or None")
            if self.position != "rope":
                raise SlmError(
                    f"model.sliding_window = {self.sliding_window} needs rotary positions, but "
                    f"model.position = {self.position!r}; set position = \"rope\" or remove the window"
                )
        if self.sliding_window_pattern < 0:
            raise SlmError(f"model.sliding_window_pattern = {self.sliding_window_pattern}: must be >= 0")
        if self.norm_bias and self.norm != "layernorm":
            raise SlmError("model.norm_bias = true needs model.norm = \"layernorm\" (RMSNorm has no bias)")
        if not 0.0 <= self.dropout < 1.0:
            raise SlmError(f"model.dropout = {self.dropout}: must be in [0, 1)")
        if self.norm_eps <= 0 or self.init_std <= 0:
            raise SlmError("model.norm_eps and model.init_std must be positive")
        if self.rope_theta <= 0 or (self.rope_theta_local is not None and self.rope_theta_local <= 0):
            raise SlmError("model.rope_theta and model.rope_theta_local must be positive")
        if self.query_pre_attn_scalar is not None and self.query_pre_attn_scalar <= 0:
            raise SlmError(f"model.query_pre_attn_scalar = {self.query_pre_attn_scalar}: must be positive")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, where: str = "model config") -> ModelConfig:
        """Build a config from a mapping, refusing unknown keys (with the nearest known name)."""
        return dataclass_from_dict(cls, values, where)

    def replace(self, **changes) -> ModelConfig:
        """A copy with `changes`; a derived head_dim is derived again unless given."""
        values = self.to_dict()
        if "head_dim" not in changes and self.head_dim == self.d_model // self.n_heads:
            values["head_dim"] = None
        values.update(changes)
        return ModelConfig.from_dict(values).validate()
