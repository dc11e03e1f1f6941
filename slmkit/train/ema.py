"""An exponential moving average (EMA) of the weights, kept beside the trained ones (train.ema_decay).

After every optimizer step each parameter's shadow moves towards the new weights:

    ema = d_t * ema + (1 - d_t) * w,    d_t = min(decay, (1 + n) / (10 + n))

where n counts the updates made before this one. The bias-corrected warm start (d_0 = 0.1, rising
towards `decay`) keeps the first steps' random initial weights from dominating the average for the
~1 / (1 - decay) steps a plain EMA would take to forget them.

The shadow is one float32 copy of the trainable parameters, on the training device. Frozen ones (a
LoRA fine-tune's base) never change, so their average is themselves; buffers (rotary tables) are
functions of the config. Both are taken from the model as they are. Under DDP every
process holds the same weights, so every process's EMA is the same; FSDP shards the weights and is
refused (see TrainConfig.validate).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from slmkit.data.loader import bits_per_byte
from slmkit.errors import SlmError
from slmkit.model.checkpoint import model_state
from slmkit.train.evaluator import SPLITS, Evaluator, perplexity

WARM_START = 10  # d_t = min(decay, (1 + n) / (WARM_START + n))


def warm_decay(decay: float, updates: int) -> float:
    """The decay of the update that follows `updates` earlier ones: min(decay, (1 + n) / (10 + n))."""
    return min(decay, (1 + updates) / (WARM_START + updates))


class ExponentialMovingAverage:
    """A float32 shadow of `model`'s parameters, moved towards them by `update()` after each step.

    `decay` is in (0, 1): the larger, the longer the memory (about 1 / (1 - decay) steps).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise SlmError(f"EMA decay {decay!r} must be in (0, 1), e.g. 0.999")
        self.decay = float(decay)
        self.reset(model)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the shadow towards the model's current weights (one call per optimizer step)."""
        decay = warm_decay(self.decay, self.updates)
        params = dict(model.named_parameters())
        shadows = list(self.shadow.values())
        weights = [params[name].detach().to(torch.float32) for name in self.shadow]
        torch._foreach_lerp_(shadows, weights, 1.0 - decay)  # ema + (1 - d)(w - ema) = d ema + (1 - d) w
        self.updates += 1

    def reset(self, model: torch.nn.Module) -> None:
        """Start again from the model's current weights (a resumed run that had no EMA before)."""
        self.updates = 0
        self.shadow = {name: param.detach().to(torch.float32).clone() for name, param in model.named_parameters()
                       if param.requires_grad}

    # -- using the averaged weights -------------------------------------------------------------
    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Within the block, `model` (the module the EMA was made from, not a compiled or DDP wrapper)
        holds the EMA weights, cast to its dtypes; its own weights are restored bit for bit after it,
        even on an error. Costs a temporary copy of the weights."""
        params = {name: param for name, param in model.named_parameters() if name in self.shadow}
        with torch.no_grad():
            saved = {name: param.detach().clone() for name, param in params.items()}
            for name, param in params.items():
                param.copy_(self.shadow[name])
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(saved[name])

    def weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The tensors to save as the EMA checkpoint: `model_state(model)` (CPU, a tied head left
        out) with every parameter replaced by its average, cast to the parameter's dtype."""
        state = model_state(model)
        return {name: self.shadow[name].to(device="cpu", dtype=tensor.dtype).contiguous()
                if name in self.shadow else tensor for name, tensor in state.items()}

    # -- exact resume ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What an exact resume needs: the decay, the update count and the shadow (on CPU)."""
        return {"decay": self.decay, "updates": self.updates,
                "shadow": {name: tensor.detach().to("cpu").clone() for name, tensor in self.shadow.items()}}

    def load_state_dict(self, state: dict, where: str = "the checkpoint") -> None:
        """Take the update count and shadow of `state_dict()`; the decay stays this run's own."""
        shadow = state.get("shadow", {})
        if set(shadow) != set(self.shadow):
            missing = sorted(set(self.shadow) ^ set(shadow))
            raise SlmError(f"the EMA saved in {where} does not match the model ({', '.join(missing[:3])}); resume "
                           f"without train.ema_decay or from another checkpoint")
        for name, tensor in shadow.items():
            self.shadow[name].copy_(tensor)
        self.updates = int(state.get("updates", 0))


def ema_evaluation(ema: ExponentialMovingAverage, evaluator: Evaluator, model: torch.nn.Module,
                   forward: torch.nn.Module | None = None) -> dict:
    """The EMA weights' figures on the evaluator's fixed samples, keyed as an eval record's with an
    `ema_` prefix: ema_val_loss (nats per token), ema_val_ppl, ema_val_bpb (None without byte counts),
    ema_train_loss, ema_train_ppl, ema_train_bpb. The EMA is swapped into `model` for the while;
    `forward` is the module that runs it (the compiled one; default `model`)."""
    record = {}
    with ema.applied(model):
        for split in SPLITS:
            loss = evaluator.split_loss(forward if forward is not None else model, split)
            record.update({f"ema_{split}_loss": loss, f"ema_{split}_ppl": perplexity(loss),
                           f"ema_{split}_bpb": bits_per_byte(loss, evaluator.dataset.bytes_per_token(split))})
    return record
