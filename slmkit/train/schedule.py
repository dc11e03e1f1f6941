"""Learning-rate schedules: linear warmup, then cosine, linear, warmup-stable-decay or constant.

A schedule is a pure function of the step, so resuming needs no scheduler object: the step (saved
in the checkpoint) is the scheduler's whole state. With a time budget the trainer also passes the
share of the budget used (the elapsed training time is saved too), so the decay ends when time does.
"""

from __future__ import annotations

import math

from slmkit.train.config import TrainConfig


def lr_factor(config: TrainConfig, step: int, time_fraction: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based).

    Warmup rises linearly to 1 over `warmup_steps` (step 0 gets 1/warmup_steps). After it:
    cosine and linear fall from 1 to min_lr/lr at max_steps; wsd holds 1 until the last
    `decay_fraction` of the run, then falls linearly to min_lr/lr; constant stays at 1.
    time_fraction: the share of a time budget used so far; the decay follows whichever of steps
    and time is further along, so a time-budgeted run ends its decay when time runs out.
    """
    floor = config.floor_lr / config.lr
    total = config.max_steps
    warmup = config.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "wsd":
        run_fraction = max(step / total, time_fraction)
        decay_start = 1 - config.decay_fraction
        if run_fraction < decay_start or config.decay_fraction == 0:
            return 1.0
        progress = min(1.0, (run_fraction - decay_start) / config.decay_fraction)
        return 1.0 - (1.0 - floor) * progress
    progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup), time_fraction))
    if config.schedule == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def peak_lr(config: TrainConfig, group: dict) -> float:
    """The peak learning rate of an optimizer parameter group: train.muon_lr for the Muon group,
    train.lr for every AdamW group. The config is the one home of these rates: a resumed run with
    a changed train.lr applies it from the resumed step on."""
    return config.muon_lr if group.get("name") == "muon" else config.lr


def set_learning_rate(optimizer, config: TrainConfig, factor: float) -> dict[str, float]:
    """Set every param group's lr to its peak x `factor`; return the rates in use, as logged:
    {"lr": the AdamW rate} plus {"muon_lr": ...} when there is a Muon group."""
    rates = {"lr": config.lr * factor}
    for group in optimizer.param_groups:
        group["lr"] = peak_lr(config, group) * factor
        if group.get("name") == "muon":
            rates["muon_lr"] = group["lr"]
    return rates
