"""Learning-rate schedules: linear warmup, then cosine, linear, warmup-stable-decay or constant.

A schedule is a pure function of the step, so resuming needs no scheduler object: the step (saved
in the checkpoint) is the scheduler's whole state. With a time budget the trainer passes an
"effective step" (the larger of the step and elapsed/budget x max_steps), so the decay ends when
time does.
"""

from __future__ import annotations

import math

from slmkit.train.config import TrainConfig


def lr_factor(config: TrainConfig, step: float) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based, may be fractional).

    Warmup rises linearly to 1 over `warmup_steps` (step 0 gets 1/warmup_steps). After it:
    cosine and linear fall from 1 to min_lr/lr at max_steps; wsd holds 1 until the last
    `decay_fraction` of the run, then falls linearly to min_lr/lr; constant stays at 1.
    """
    floor = config.floor_lr / config.lr
    total = config.max_steps
    warmup = config.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "wsd":
        decay_start = total * (1 - config.decay_fraction)
        if step < decay_start or config.decay_fraction == 0:
            return 1.0
        progress = min(1.0, (step - decay_start) / (total - decay_start))
        return 1.0 - (1.0 - floor) * progress
    progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    if config.schedule == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer, factor: float) -> float:
    """Set every param group's lr to its `initial_lr` x `factor`; return the first group's lr."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]
