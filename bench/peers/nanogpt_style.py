"""A nanoGPT-style GPT-2, re-implemented after karpathy/nanoGPT's model.py for benchmarking.

This is not nanoGPT's code (none of it is vendored here); it is our own module that computes what
nanoGPT's `GPT` computes, the same way, so that `bench/bench_train.py` can measure "nanoGPT" in the
same run as slmkit and Hugging Face. What it matches:

- token + learned position embeddings, summed (dropout 0);
- pre-LayerNorm blocks (eps 1e-5, bias switchable; nanoGPT's `GPTConfig` default is bias=True);
- attention: one fused `c_attn` Linear to Q, K, V, split per head, then
  `F.scaled_dot_product_attention(is_causal=True)` (nanoGPT's "flash" path), then `c_proj`;
- MLP: `c_fc` Linear to 4 d -> GELU -> `c_proj` Linear back. nanoGPT uses `nn.GELU()` (exact erf);
  `gelu_approximate="tanh"` gives GPT-2's tanh form, which slmkit and HF GPT-2 use, so that the
  benchmark compares one function (`config_from_slmkit` sets it);
- final LayerNorm, `lm_head` without bias tied to the token embedding;
- init: normal(0, 0.02) for Linear and Embedding weights, zero biases, and every `c_proj.weight`
  re-drawn with std 0.02 / sqrt(2 n_layer);
- `forward(idx, targets)` returns (logits, loss): logits over the whole vocabulary at every position,
  then `F.cross_entropy` over them (ignore_index=-1); without targets only the last position;
- `configure_optimizers`: AdamW with weight decay on parameters of 2 or more dimensions only, and
  `fused=True` only when AdamW has a `fused` argument *and* the device is CUDA, exactly as nanoGPT
  decides, so on CPU it runs PyTorch's default (foreach) AdamW even where a fused CPU kernel exists.

nanoGPT's train.py compiles the model with `torch.compile(model)` and wraps the step in
`torch.amp.autocast(device_type, dtype)` on CUDA; on CPU its train.py uses no autocast at all, so the
bf16 CPU cases of the benchmark apply the same `torch.autocast("cpu", dtype=torch.bfloat16)` to every
side (as the bf16 nanoGPT figures of issue 4 imply).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    """nanoGPT's model settings, under nanoGPT's names."""

    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    gelu_approximate: str = "none"  # nanoGPT's nn.GELU(); "tanh" is GPT-2's (and slmkit's) form


def config_from_slmkit(config) -> GPTConfig:
    """The GPTConfig of a slmkit GPT-2 style ModelConfig (learned positions, LayerNorm, GELU MLP of
    4 d, biases everywhere, tied head); raises ValueError for anything nanoGPT's model cannot express."""
    expressible = (config.position == "learned" and config.norm == "layernorm" and config.mlp == "gelu"
                   and config.d_mlp == 4 * config.d_model and config.tie_embeddings
                   and config.norm_bias == config.attention_bias == config.mlp_bias
                   and (config.head_dim or config.d_model // config.n_heads) * config.n_heads == config.d_model
                   and (config.n_kv_heads or config.n_heads) == config.n_heads
                   and config.norm_placement == "pre" and not config.qk_norm and config.sliding_window is None
                   and not config.embedding_scale and config.query_pre_attn_scalar is None
                   and config.norm_eps == 1e-5 and config.init_std == 0.02)
    if not expressible:
        raise ValueError(f"model config {config.name!r} is not a plain GPT-2; nanoGPT's model cannot express it")
    return GPTConfig(block_size=config.context_length, vocab_size=config.vocab_size, n_layer=config.n_layers,
                     n_head=config.n_heads, n_embd=config.d_model, dropout=config.dropout,
                     bias=config.norm_bias, gelu_approximate="tanh")


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be left out (eps 1e-5)."""

    def __init__(self, dim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through SDPA, Q, K and V from one projection."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} is not a multiple of n_head {config.n_head}")
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        heads = [t.view(batch, length, self.n_head, width // self.n_head).transpose(1, 2)
                 for t in self.c_attn(x).split(self.n_embd, dim=2)]
        q, k, v = heads
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(batch, length, width)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate=config.gelu_approximate)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """The GPT-2 language model as nanoGPT builds it (module names as nanoGPT's, so its state
    dicts line up)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, in nanoGPT's direction
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """(logits, loss) for token ids (B, T): logits (B, T, vocab) and the mean cross-entropy with
        `targets` (B, T); without targets, logits of the last position only (B, 1, vocab) and None."""
        length = idx.shape[1]
        if length > self.config.block_size:
            raise ValueError(f"sequence of {length} tokens exceeds block_size {self.config.block_size}")
        positions = torch.arange(0, length, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas: tuple[float, float],
                             device_type: str) -> torch.optim.AdamW:
        """AdamW, decaying parameters of 2+ dimensions (matrices, embeddings) and not biases or norm
        weights; fused only on CUDA, as nanoGPT decides."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        use_fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type == "cuda"
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if use_fused else {}))


def state_dict_from_slmkit(state: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """A slmkit GPT-2 Transformer's state dict under this model's names (same layouts, no transposes:
    slmkit's fused qkv is [Q | K | V] like c_attn)."""
    names = {"embed.weight": "transformer.wte.weight", "pos_embed.weight": "transformer.wpe.weight",
             "final_norm.weight": "transformer.ln_f.weight", "final_norm.bias": "transformer.ln_f.bias",
             "lm_head.weight": "lm_head.weight"}
    per_layer = {"attn_norm": "ln_1", "attn.qkv": "attn.c_attn", "attn.out": "attn.c_proj",
                 "mlp_norm": "ln_2", "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}
    for layer in range(n_layers):
        for ours, theirs in per_layer.items():
            for kind in ("weight", "bias"):
                names[f"blocks.{layer}.{ours}.{kind}"] = f"transformer.h.{layer}.{theirs}.{kind}"
    unknown = sorted(set(state) - set(names))
    if unknown:
        raise ValueError(f"slmkit parameters with no nanoGPT counterpart: {unknown[:5]}")
    return {names[name]: tensor for name, tensor in state.items()}


def from_slmkit(model) -> GPT:
    """A GPT with the config and the weights of a slmkit GPT-2 style Transformer."""
    config = config_from_slmkit(model.config)
    peer = GPT(config)
    peer.load_state_dict(state_dict_from_slmkit(model.state_dict(), config.n_layer), strict=True)
    return peer
