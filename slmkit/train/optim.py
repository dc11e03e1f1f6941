"""Optimizers: AdamW with weight decay on 2-D matrices only, and Muon for hidden matrices.

Muon (Keller Jordan et al., the modded-nanogpt recipe) keeps SGD momentum per 2-D weight and
replaces each update by its nearest semi-orthogonal matrix, computed with a Newton-Schulz
iteration. It is used for the hidden matrices of the blocks; embeddings, the output head, norms and
biases stay on AdamW.

Every param group carries a `name` (decay, no_decay, head, muon); the trainer sets its lr from the
config's peak for that name times the schedule's factor (`slmkit.train.schedule.set_learning_rate`).
"""

from __future__ import annotations

import torch
from torch import nn

from slmkit.train.config import TrainConfig


def parameter_roles(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Split trainable parameters into "matrix" (2-D weights of linear layers inside the blocks),
    "head" (an untied output head), "embedding" and "other" (norm weights, biases, scalars).

    A tied head is its embedding and is listed once, as an embedding.
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "lm_head", None)
    head_id = id(head.weight) if head is not None else None
    roles: dict[str, list] = {"matrix": [], "head": [], "embedding": [], "other": []}
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if id(param) in embedding_ids:
            roles["embedding"].append((name, param))
        elif id(param) == head_id:
            roles["head"].append((name, param))
        elif param.ndim == 2:
            roles["matrix"].append((name, param))
        else:
            roles["other"].append((name, param))
    return roles


def adamw_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed 2-D matrices (hidden and an untied head), and the rest undecayed
    (embeddings, norms, biases), since decaying those hurts and buys no regularisation."""
    roles = parameter_roles(model)
    decay = [p for _, p in roles["matrix"] + roles["head"]]
    no_decay = [p for _, p in roles["embedding"] + roles["other"]]
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def zeropower_via_newtonschulz5(update: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to `update` (approximately U V^T of its SVD), by a quintic
    Newton-Schulz iteration tuned for speed over exactness (modded-nanogpt's coefficients)."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    x = update.to(torch.bfloat16 if update.is_cuda else torch.float32)
    transposed = x.size(-2) > x.size(-1)
    if transposed:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        poly = b * gram + c * gram @ gram
        x = a * x + poly @ x
    if transposed:
        x = x.mT
    return x.to(update.dtype)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, for 2-D weights.

    Per step: momentum buffer m = mu m + (1 - mu) g; Nesterov update u = (1 - mu) g + mu m;
    p -= lr * max(1, rows / cols) ** 0.5 * orthogonalise(u) (after decoupled weight decay).
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_steps=ns_steps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D parameters only, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad)
                buffer = state["momentum_buffer"]
                buffer.lerp_(grad, 1 - momentum)
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = zeropower_via_newtonschulz5(update, group["ns_steps"])
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * max(1.0, p.size(-2) / p.size(-1)) ** 0.5)
        return loss


class CombinedOptimizer:
    """Several optimizers stepped together, with one state dict (Muon + AdamW)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, opt_state in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(opt_state)


# Devices whose tensors torch.optim.AdamW(fused=True) accepts (CPU since PyTorch 2.4).
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def build_optimizer(model: nn.Module, config: TrainConfig, device_type: str = "cpu") -> CombinedOptimizer:
    """AdamW, or Muon for hidden matrices plus AdamW for the rest, as configured.

    AdamW runs PyTorch's fused kernel (one pass over each parameter) on CUDA and CPU; elsewhere
    (MPS) its multi-tensor `foreach` form. On CPU the fused step of slm-25m takes 13 ms instead of
    68 (docs/performance.md).
    """
    adam_kwargs = dict(lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)
    if device_type in FUSED_ADAMW_DEVICES:
        adam_kwargs["fused"] = True
    if config.optimizer == "adamw":
        groups = adamw_param_groups(model, config.weight_decay)
        return CombinedOptimizer([torch.optim.AdamW(groups, **adam_kwargs)])
    roles = parameter_roles(model)
    matrices = [p for _, p in roles["matrix"]]
    muon = Muon([{"params": matrices, "name": "muon"}], lr=config.muon_lr,
                momentum=config.muon_momentum, weight_decay=config.weight_decay)
    adam_groups = [
        {"params": [p for _, p in roles["head"]], "weight_decay": config.weight_decay, "name": "head"},
        {"params": [p for _, p in roles["embedding"] + roles["other"]], "weight_decay": 0.0, "name": "no_decay"},
    ]
    adam = torch.optim.AdamW([g for g in adam_groups if g["params"]], **adam_kwargs)
    return CombinedOptimizer([muon, adam])
